"""LogOnce: log a rejection the first time a peer causes it, so a hostile peer cannot flood the log."""

from __future__ import annotations

import logging


class LogOnce:
    def __init__(self, logger: logging.Logger, max_peers: int = 10_000):
        self._logger = logger
        self._seen: set = set()
        self._max = max_peers

    def __call__(self, peer, what: str, detail: str = "") -> None:
        key = tuple(peer)[:2] if isinstance(peer, (tuple, list)) else peer
        if key in self._seen:
            return
        if len(self._seen) >= self._max:
            self._seen.clear()
        self._seen.add(key)
        self._logger.warning("rejected %s from %s: %s (further rejections from this peer not logged)", what, peer, detail)
