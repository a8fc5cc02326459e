"""The swarm as zswarm-api sees it, for /v1/models and the health page: zswarm-inspect's
`Inspector` (its DHT node, its pings, its `SwarmReport`), shared by every request and reused for
`max_age_s` so that a page reloading in many browsers costs the swarm one look, not one each."""
from __future__ import annotations

import threading
import time

from zswarm.errors import ApiSwarmUnavailable, InspectError, SwarmUnreachable
from zswarm.inspect.fetch import Inspector
from zswarm.inspect.views import SwarmReport


class SwarmReports:
    def __init__(self, initial_peers, *, max_age_s: float):
        self.inspector = Inspector(list(initial_peers))
        self.max_age_s = max_age_s
        self._lock = threading.Lock()  # one look at a time; the others wait for it and share it
        self._last: tuple[float, SwarmReport] | None = None

    def latest(self) -> SwarmReport:
        """A report no older than max_age_s (blocking: call it from a worker thread)."""
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] <= self.max_age_s:
                return self._last[1]
            try:
                report = self.inspector.swarm()
            except (SwarmUnreachable, InspectError) as exc:
                raise ApiSwarmUnavailable(f"cannot read the swarm: {exc}", code="swarm_unreachable") from exc
            self._last = (time.monotonic(), report)
            return report

    def close(self) -> None:
        self.inspector.close()
