"""The swarm as zswarm-api sees it, for /v1/models and the health page: zswarm-inspect's
`Inspector` behind a `CachedReports`, with a swarm that cannot be read as the API's 503."""
from __future__ import annotations

from zswarm.errors import ApiSwarmUnavailable, InspectError, SwarmUnreachable
from zswarm.inspect.cached import CachedReports
from zswarm.inspect.fetch import Inspector
from zswarm.inspect.views import SwarmReport


class SwarmReports:
    def __init__(self, initial_peers, *, max_age_s: float):
        self.cached = CachedReports(Inspector(list(initial_peers)), max_age_s=max_age_s)

    def latest(self) -> SwarmReport:
        try:
            return self.cached.latest()
        except (SwarmUnreachable, InspectError) as exc:
            raise ApiSwarmUnavailable(f"cannot read the swarm: {exc}", code="swarm_unreachable") from exc

    def close(self) -> None:
        self.cached.close()
