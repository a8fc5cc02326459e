"""Bans of failing servers, with exponential backoff.

A server that fails is banned for `base` seconds, doubled on each failure in a row (at most
`max`); a success clears its record. The ban list itself knows nothing of blocks: the sequence
manager decides that a ban never removes the last server of a block (`active` answers "is it
banned now", the caller may still use a banned server when it is the only one).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class _Ban:
    failures: int
    until: float


class BanList:
    def __init__(self, base: float, max: float, clock: Callable[[], float] = time.monotonic):
        self.base = base
        self.max = max
        self.clock = clock
        self._bans: dict[str, _Ban] = {}

    def ban(self, peer_id: str) -> float:
        """Record a failure of `peer_id`; returns how long it is banned (seconds)."""
        previous = self._bans.get(peer_id)
        failures = previous.failures + 1 if previous else 1
        duration = min(self.base * 2 ** (failures - 1), self.max)
        self._bans[peer_id] = _Ban(failures, self.clock() + duration)
        return duration

    def clear(self, peer_id: str) -> None:
        """`peer_id` answered: forget its failures."""
        self._bans.pop(peer_id, None)

    def is_banned(self, peer_id: str) -> bool:
        ban = self._bans.get(peer_id)
        return ban is not None and ban.until > self.clock()

    def failures(self, peer_id: str) -> int:
        ban = self._bans.get(peer_id)
        return ban.failures if ban else 0

    def banned_until(self, peer_id: str) -> float:
        ban = self._bans.get(peer_id)
        return ban.until if ban else 0.0

    def active(self) -> set[str]:
        now = self.clock()
        return {peer for peer, ban in self._bans.items() if ban.until > now}
