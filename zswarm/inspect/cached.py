"""One look at the swarm shared by many readers: an `Inspector`'s `SwarmReport`, reused for
`max_age_s`, so that a health page reloading in many browsers costs the swarm one look, not one
each (zswarm-api's /health and /v1/models, `zswarm-inspect serve`)."""
from __future__ import annotations

import threading
import time

from zswarm.inspect.fetch import Inspector
from zswarm.inspect.views import SwarmReport


class CachedReports:
    def __init__(self, inspector: Inspector, *, max_age_s: float):
        self.inspector = inspector
        self.max_age_s = max_age_s
        self._lock = threading.Lock()  # one look at a time; the others wait for it and share it
        self._last: tuple[float, SwarmReport] | None = None

    def latest(self) -> SwarmReport:
        """A report no older than max_age_s (blocking: call it from a worker thread). Raises
        SwarmUnreachable or InspectError as Inspector.swarm does; a failed look is not kept."""
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] <= self.max_age_s:
                return self._last[1]
            report = self.inspector.swarm()
            self._last = (time.monotonic(), report)
            return report

    def close(self) -> None:
        self.inspector.close()
