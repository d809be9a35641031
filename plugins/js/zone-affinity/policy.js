// Zone affinity, in JavaScript: the Rust `zone-affinity` example ported.
// The gateway's own zone first, other zones next, and workers with
// `spill_in_flight` requests or more (ours in flight, or their own running
// count when larger) last; by score within each tier.

import { Workers, byScore, check, parseConfig, routeTo, unknownFields } from "../common/policy-kit.js";

const KNOWN = ["spill_in_flight"];
let spill = 32;
const workers = new Workers();

export function init(config) {
  const raw = parseConfig(config);
  const problems = unknownFields(raw, KNOWN);
  const value = raw.spill_in_flight ?? 32;
  if (!Number.isInteger(value) || value < 1) {
    problems.push(`spill_in_flight: must be a whole number of at least 1, got ${JSON.stringify(value)}`);
  }
  check(problems);
  spill = value;
}

export function setWorkers(list) {
  workers.set(list);
}

export function route(request, candidates) {
  const tier = (c) => {
    if (Math.max(c.inFlight, c.running ?? 0) >= spill) return 2;
    return c.zone === request.gatewayZone ? 0 : 1;
  };
  const ordered = byScore(workers.join(candidates));
  ordered.sort((a, b) => tier(a) - tier(b));
  return routeTo(request, ordered);
}
