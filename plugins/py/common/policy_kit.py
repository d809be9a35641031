"""What the Rust SDK gives a policy, for policies written in Python: config
checking that reports every problem at once, the candidates joined with
their workers, the SDK's score order, and sticky and random points in [0, 1).

Built into each component by componentize-py (scripts/build-plugins.sh);
nothing here touches files, the network or the environment."""

from dataclasses import dataclass
import json
from typing import Dict, List, Optional

from componentize_py_types import Err
from wit_world.imports import host, types

ENGINE_NAMES = {
    types.Engine.LLMGW: "llmgw",
    types.Engine.VLLM: "vllm",
    types.Engine.SGLANG: "sglang",
    types.Engine.LLAMACPP: "llamacpp",
    types.Engine.OPENAI: "openai",
}


@dataclass
class Candidate:
    """A candidate as a policy sees it: its worker and its figures."""

    position: int
    id: str
    zone: str
    labels: Dict[str, str]
    engine: str
    in_flight: int
    # From the worker's own load report; None when it sent none fresh.
    running: Optional[int]
    waiting: Optional[int]
    overlap_blocks: int
    score: float


class Workers:
    """The pool's workers, as `set-workers` last sent them."""

    def __init__(self):
        self.workers: List[types.Worker] = []
        self.engines: List[str] = []

    def set(self, workers: List[types.Worker]) -> None:
        self.workers = workers
        self.engines = [ENGINE_NAMES[e] for e in host.worker_engines()]

    def join(self, c: types.Candidates) -> List[Candidate]:
        out = []
        for i, w in enumerate(c.worker):
            worker = self.workers[w]
            reported = types.State.REPORTED in c.state[i]
            out.append(
                Candidate(
                    position=i,
                    id=worker.id,
                    zone=worker.zone,
                    labels={l.key: l.value for l in worker.labels},
                    engine=self.engines[w] if w < len(self.engines) else "llmgw",
                    in_flight=c.in_flight[i],
                    running=c.running[i] if reported else None,
                    waiting=c.waiting[i] if reported else None,
                    overlap_blocks=c.overlap_blocks[i],
                    score=c.score[i],
                )
            )
        return out


def parse_config(text: str) -> dict:
    """The config object, or an `Err` when it is not one."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise Err(f"config: not JSON: {e}")
    if not isinstance(raw, dict):
        raise Err("config: must be a JSON object")
    return raw


def check(problems: List[str]) -> None:
    if problems:
        raise Err("; ".join(problems))


def unknown_fields(raw: dict, known: List[str]) -> List[str]:
    return [f"{key}: unknown field, expected one of {', '.join(known)}" for key in raw if key not in known]


def by_score(candidates: List[Candidate]) -> List[Candidate]:
    """Lowest score first, then fewest in flight, then as listed: the SDK's order."""
    return sorted(candidates, key=lambda c: (c.score, c.in_flight, c.position))


def route_to(request: types.Request, ordered: List[Candidate]) -> types.Decision:
    if not ordered:
        return reject(503, f"no routable worker in pool {request.pool!r}")
    return types.Decision_Route([c.position for c in ordered])


def reject(status: int, message: str) -> types.Decision:
    return types.Decision_Reject(types.Rejection(status=status, message=message))


def _unit(bits: int) -> float:
    return (bits >> 11) / float(1 << 53)


def sticky_fraction(key: str) -> float:
    """The same point in [0, 1) for the same key, every time (64-bit FNV-1a;
    the Rust SDK hashes with xxh3, so a port splits sessions differently)."""
    h = 0xCBF29CE484222325
    for byte in key.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return _unit(h)


def random_fraction() -> float:
    return _unit(host.random())
