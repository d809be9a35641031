// Canary policy, in JavaScript: the Rust `canary` example ported (see
// plugins/canary/src/lib.rs for its config). A weighted split by version
// label (or engine), sticky per session, the other side as failover tail;
// tenants in `stable_tenants` always go to stable first.

import { requestCaller } from "llmgw:policy/host@0.2.0";
import {
  Workers, byScore, check, parseConfig, randomFraction, reject, routeTo, stickyFraction,
  unknownFields,
} from "../common/policy-kit.js";

const KNOWN = ["stable", "canary", "canary_percent", "label", "by", "stable_tenants"];
let policy;
const workers = new Workers();

export function init(config) {
  const raw = parseConfig(config);
  const problems = unknownFields(raw, KNOWN);
  for (const field of ["stable", "canary"]) {
    if (typeof raw[field] !== "string" || raw[field] === "") problems.push(`${field}: must name a version`);
  }
  const percent = raw.canary_percent;
  if (typeof percent !== "number" || !(percent >= 0 && percent <= 100)) {
    problems.push(`canary_percent: must be between 0 and 100, got ${JSON.stringify(percent)}`);
  }
  const label = raw.label ?? "version";
  if (typeof label !== "string" || label === "") problems.push("label: must name a worker label");
  const by = raw.by ?? "label";
  if (by !== "label" && by !== "engine") problems.push(`by: must be "label" or "engine", got ${JSON.stringify(by)}`);
  const tenants = raw.stable_tenants ?? [];
  if (!Array.isArray(tenants) || !tenants.every((t) => typeof t === "string")) {
    problems.push("stable_tenants: must be a list of tenant names");
  }
  if (problems.length === 0 && raw.stable === raw.canary) {
    problems.push(`canary: must differ from stable, both are "${raw.stable}"`);
  }
  check(problems);
  policy = { stable: raw.stable, canary: raw.canary, share: percent / 100, label, by, tenants };
}

export function setWorkers(list) {
  workers.set(list);
}

function side(c) {
  return policy.by === "engine" ? c.engine : c.labels[policy.label];
}

function picksCanary(request) {
  const tenant = requestCaller().tenant;
  if (tenant !== undefined && tenant !== null && policy.tenants.includes(tenant)) return false;
  const point = request.sessionKey !== undefined && request.sessionKey !== null
    ? stickyFraction(`${policy.canary}\n${request.sessionKey}`)
    : randomFraction();
  return point < policy.share;
}

export function route(request, candidates) {
  const chosen = picksCanary(request) ? policy.canary : policy.stable;
  const ordered = byScore(workers.join(candidates)).filter(
    (c) => side(c) === policy.stable || side(c) === policy.canary,
  );
  if (ordered.length === 0) {
    const key = policy.by === "engine" ? "engine" : policy.label;
    return reject(503, `no routable worker with ${key}=${policy.stable} or ${key}=${policy.canary} in pool "${request.pool}"`);
  }
  // Stable: score order holds within each side.
  ordered.sort((a, b) => (side(a) !== chosen) - (side(b) !== chosen));
  return routeTo(request, ordered);
}
