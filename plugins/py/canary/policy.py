"""Canary policy, in Python: the Rust `canary` example ported (see
plugins/canary/src/lib.rs for its config). A weighted split by version
label (or engine), sticky per session, the other side as failover tail;
tenants in `stable_tenants` always go to stable first."""

from types import SimpleNamespace
from typing import List

import wit_world
from wit_world.imports import host, types

from policy_kit import (Workers, by_score, check, parse_config, random_fraction, reject,
                        route_to, sticky_fraction, unknown_fields)

KNOWN = ["stable", "canary", "canary_percent", "label", "by", "stable_tenants"]

# componentize-py makes a `WitWorld` per call: what lasts lives in the module.
WORKERS = Workers()
CONFIG = SimpleNamespace()


def side(c):
    return c.engine if CONFIG.by == "engine" else c.labels.get(CONFIG.label)


def picks_canary(request: types.Request) -> bool:
    tenant = host.request_caller().tenant
    if tenant is not None and tenant in CONFIG.stable_tenants:
        return False
    if request.session_key is not None:
        point = sticky_fraction(f"{CONFIG.canary}\n{request.session_key}")
    else:
        point = random_fraction()
    return point < CONFIG.share


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        raw = parse_config(config)
        problems = unknown_fields(raw, KNOWN)
        for field in ("stable", "canary"):
            value = raw.get(field)
            if not isinstance(value, str) or not value:
                problems.append(f"{field}: must name a version")
        percent = raw.get("canary_percent")
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
            problems.append(f"canary_percent: must be between 0 and 100, got {percent!r}")
        label = raw.get("label", "version")
        if not isinstance(label, str) or not label:
            problems.append("label: must name a worker label")
        by = raw.get("by", "label")
        if by not in ("label", "engine"):
            problems.append(f"by: must be \"label\" or \"engine\", got {by!r}")
        tenants = raw.get("stable_tenants", [])
        if not isinstance(tenants, list) or not all(isinstance(t, str) for t in tenants):
            problems.append("stable_tenants: must be a list of tenant names")
        if not problems and raw["stable"] == raw["canary"]:
            problems.append(f"canary: must differ from stable, both are {raw['stable']!r}")
        check(problems)
        CONFIG.stable, CONFIG.canary = raw["stable"], raw["canary"]
        CONFIG.share = percent / 100.0
        CONFIG.label, CONFIG.by, CONFIG.stable_tenants = label, by, tenants

    def set_workers(self, workers: List[types.Worker]) -> None:
        WORKERS.set(workers)

    def route(self, request: types.Request, candidates: types.Candidates) -> types.Decision:
        chosen = CONFIG.canary if picks_canary(request) else CONFIG.stable
        ordered = [c for c in by_score(WORKERS.join(candidates))
                   if side(c) in (CONFIG.stable, CONFIG.canary)]
        if not ordered:
            key = "engine" if CONFIG.by == "engine" else CONFIG.label
            return reject(503, f"no routable worker with {key}={CONFIG.stable} or "
                               f"{key}={CONFIG.canary} in pool {request.pool!r}")
        # Stable: score order holds within each side.
        ordered.sort(key=lambda c: side(c) != chosen)
        return route_to(request, ordered)
