// What the Rust SDK gives a policy, for policies written in JavaScript:
// config checking that reports every problem at once, the candidates joined
// with their workers, the SDK's score order, and sticky and random points
// in [0, 1). Bundled into each component by componentize-js
// (scripts/build-plugins.sh); nothing here reaches files or the network.

import { random, workerEngines } from "llmgw:policy/host@0.2.0";

/** The pool's workers, as `set-workers` last sent them. */
export class Workers {
  constructor() {
    this.workers = [];
    this.engines = [];
  }

  set(workers) {
    this.workers = workers;
    this.engines = workerEngines();
  }

  /** Each candidate with its worker and its figures; `running` and
   * `waiting` are undefined without a fresh report from the worker. */
  join(c) {
    const out = [];
    for (let i = 0; i < c.worker.length; i++) {
      const worker = this.workers[c.worker[i]];
      const reported = c.state[i].reported;
      out.push({
        position: i,
        id: worker.id,
        zone: worker.zone,
        labels: Object.fromEntries(worker.labels.map((l) => [l.key, l.value])),
        engine: this.engines[c.worker[i]] ?? "llmgw",
        inFlight: c.inFlight[i],
        running: reported ? c.running[i] : undefined,
        waiting: reported ? c.waiting[i] : undefined,
        overlapBlocks: c.overlapBlocks[i],
        score: c.score[i],
      });
    }
    return out;
  }
}

/** The config object, or a thrown message when it is not one. */
export function parseConfig(text) {
  let raw;
  try {
    raw = text.trim() ? JSON.parse(text) : {};
  } catch (e) {
    throw `config: not JSON: ${e.message}`;
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw "config: must be a JSON object";
  }
  return raw;
}

export function unknownFields(raw, known) {
  return Object.keys(raw)
    .filter((key) => !known.includes(key))
    .map((key) => `${key}: unknown field, expected one of ${known.join(", ")}`);
}

/** Every problem at once, as `init`'s error. */
export function check(problems) {
  if (problems.length > 0) throw problems.join("; ");
}

/** Lowest score first, then fewest in flight, then as listed: the SDK's order. */
export function byScore(candidates) {
  return [...candidates].sort(
    (a, b) => a.score - b.score || a.inFlight - b.inFlight || a.position - b.position,
  );
}

export function routeTo(request, ordered) {
  if (ordered.length === 0) return reject(503, `no routable worker in pool "${request.pool}"`);
  return { tag: "route", val: Uint32Array.from(ordered.map((c) => c.position)) };
}

export function reject(status, message) {
  return { tag: "reject", val: { status, message } };
}

function unit(bits) {
  return Number(bits >> 11n) / 2 ** 53;
}

/** The same point in [0, 1) for the same key, every time (64-bit FNV-1a;
 * the Rust SDK hashes with xxh3, so a port splits sessions differently). */
export function stickyFraction(key) {
  let h = 0xcbf29ce484222325n;
  for (const byte of new TextEncoder().encode(key)) {
    h = ((h ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return unit(h);
}

export function randomFraction() {
  return unit(BigInt.asUintN(64, BigInt(random())));
}
