// A hostile policy in JavaScript, for the host's tests: its config's `mode`
// picks how it misbehaves in `route`: `ok` (routes by score), `loop` (spins
// forever), `oom` (allocates until memory runs out), `trap` (throws); with
// `on_model`, only for requests of that model (so it passes the host's
// sample decisions at load time). Never ship it.

import { Workers, byScore, parseConfig, routeTo } from "../common/policy-kit.js";

let mode = "ok";
let onModel;
const workers = new Workers();

export function init(config) {
  const raw = parseConfig(config);
  mode = raw.mode ?? "ok";
  onModel = raw.on_model;
}

export function setWorkers(list) {
  workers.set(list);
}

export function route(request, candidates) {
  if (onModel !== undefined && request.model !== onModel) {
    return routeTo(request, byScore(workers.join(candidates)));
  }
  if (mode === "loop") for (;;) {}
  if (mode === "oom") {
    const hoard = [];
    for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
  }
  if (mode === "trap") throw new Error("hostile policy threw on purpose");
  return routeTo(request, byScore(workers.join(candidates)));
}
