"""Zone affinity, in Python: the Rust `zone-affinity` example ported. The
gateway's own zone first, other zones next, and workers with
`spill_in_flight` requests or more (ours in flight, or their own running
count when larger) last; by score within each tier."""

from types import SimpleNamespace
from typing import List

import wit_world
from wit_world.imports import types

from policy_kit import Workers, by_score, check, parse_config, route_to, unknown_fields

KNOWN = ["spill_in_flight"]

# componentize-py makes a `WitWorld` per call: what lasts lives in the module.
WORKERS = Workers()
CONFIG = SimpleNamespace(spill=32)


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        raw = parse_config(config)
        problems = unknown_fields(raw, KNOWN)
        spill = raw.get("spill_in_flight", 32)
        if isinstance(spill, bool) or not isinstance(spill, int) or spill < 1:
            problems.append(f"spill_in_flight: must be a whole number of at least 1, got {spill!r}")
        check(problems)
        CONFIG.spill = spill

    def set_workers(self, workers: List[types.Worker]) -> None:
        WORKERS.set(workers)

    def route(self, request: types.Request, candidates: types.Candidates) -> types.Decision:
        def tier(c):
            if max(c.in_flight, c.running or 0) >= CONFIG.spill:
                return 2
            return 0 if c.zone == request.gateway_zone else 1

        ordered = by_score(WORKERS.join(candidates))
        ordered.sort(key=tier)
        return route_to(request, ordered)
