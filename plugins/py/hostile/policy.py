"""A hostile policy in Python, for the host's tests: its config's `mode`
picks how it misbehaves in `route`: `ok` (routes by score), `loop` (spins
forever), `oom` (allocates until memory runs out), `trap` (raises),
`sleep` (waits an hour, which the host refuses as a trap); with
`on_model`, only for requests of that model (so it passes the host's sample
decisions at load time). Never ship it."""

from types import SimpleNamespace
from typing import List

import wit_world
from wit_world.imports import types

from policy_kit import Workers, by_score, parse_config, route_to

# componentize-py makes a `WitWorld` per call: what lasts lives in the module.
WORKERS = Workers()
CONFIG = SimpleNamespace(mode="ok", on_model=None)


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        raw = parse_config(config)
        CONFIG.mode, CONFIG.on_model = raw.get("mode", "ok"), raw.get("on_model")

    def set_workers(self, workers: List[types.Worker]) -> None:
        WORKERS.set(workers)

    def route(self, request: types.Request, candidates: types.Candidates) -> types.Decision:
        if CONFIG.on_model is None or request.model == CONFIG.on_model:
            if CONFIG.mode == "loop":
                while True:
                    pass
            if CONFIG.mode == "oom":
                hoard = []
                while True:
                    hoard.append(bytearray(1 << 20))
            if CONFIG.mode == "trap":
                raise RuntimeError("hostile policy raised on purpose")
            if CONFIG.mode == "sleep":
                import time
                time.sleep(3600)
        return route_to(request, by_score(WORKERS.join(candidates)))
