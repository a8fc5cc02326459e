"""Inference sessions: server-generated ids, one KV cache each, cache budget and idle expiry.

A session is opened for blocks [start, end) (any sub-range of what the server hosts) with a
maximum length and a batch size; it reserves `batch_size * max_length` tokens of the cache
budget until it closes or expires. Steps of one session are serialized by its `lock`; the
manager never expires a session while a step holds that lock.

A session belongs to the connection that opened it: a step or close from another is refused
(`get(session_id, peer)`), so knowing a session id is not enough to use or end it. What one client
may hold (sessions, and its share of the cache while others wait) is in client_shares.py.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from zswarm.defaults import CLIENT_CACHE_SHARE, CLIENT_MAX_SESSIONS
from zswarm.errors import (BadInputError, CacheFullError, ClientLimitError, ForeignSessionError, ShuttingDownError,
                           TooManyTokensError, UnknownSessionError)
from zswarm.models.kv_pool import reserved_tokens
from zswarm.server.cache_budget import BudgetTimeout, CacheBudget
from zswarm.server.client_shares import client_keys, holdings, share_victims

logger = logging.getLogger(__name__)

_REMEMBER_ENDED = 4096  # ended session ids kept to say "expired" rather than "unknown"


@dataclass
class ServerSession:
    session_id: str
    start: int
    end: int
    max_length: int
    batch_size: int
    span: Any  # BlockSpan view over [start, end)
    peer: bytes = b""  # the connection that opened it: the only one that may step or close it
    client: tuple = ()  # what it counts against (client_shares.client_keys)
    shared: bool = False  # opened by a pushed step under its client's id: any connection knowing it may step
    adapter: Optional[str] = None  # the LoRA adapter every step of this session runs with
    left_pad: Optional[list[int]] = None  # leading pads per row of a left-padded batch (validated)
    cache: Any = None  # SpanCache, created on the first step (on the compute thread)
    last_used: float = 0.0
    steps: int = 0
    closed: bool = False  # a step still queued for it must not take pool pages
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def tokens_reserved(self) -> int:
        return reserved_tokens(self.batch_size, self.max_length)

    @property
    def length(self) -> int:
        """Tokens this session's cache holds."""
        return 0 if self.cache is None else int(self.cache.length)


class ServerSessions:
    def __init__(self, budget: CacheBudget, idle_timeout: float, clock: Callable[[], float] = time.monotonic, *,
                 client_cache_share: float = CLIENT_CACHE_SHARE, max_client_sessions: int = CLIENT_MAX_SESSIONS):
        self.budget = budget
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.client_cache_share = client_cache_share
        self.max_client_sessions = max_client_sessions
        self.accepting = True
        self.refusal = "the server is shutting down"
        self._sessions: dict[str, ServerSession] = {}
        self._ended: collections.OrderedDict[str, str] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        return iter(list(self._sessions.values()))

    async def open(self, *, start: int, end: int, max_length: int, batch_size: int, wait_timeout: float,
                   span: Any, peer: bytes = b"", peer_address: str = "", adapter: Optional[str] = None,
                   left_pad: Optional[list[int]] = None, session_id: Optional[str] = None) -> ServerSession:
        """`session_id`: the id a client chose (a session opened by a pushed step, whose client
        names it before the server has answered); by default a fresh random one. Such a session
        is opened by the previous server's connection, yet its client steps it directly when it
        falls back to relaying itself: its id, which only the client chose, is its credential
        (`shared`), not the connection."""
        if not self.accepting:
            raise ShuttingDownError(self.refusal)
        if session_id is not None and (session_id in self._sessions or session_id in self._ended):
            raise BadInputError(f"session id {session_id[:16]} is taken; choose another")
        tokens = reserved_tokens(batch_size, max_length)  # whole pages of the KV pool
        if tokens > self.budget.capacity:
            raise TooManyTokensError(
                f"batch_size {batch_size} x max_length {max_length} (in whole pages: {tokens} tokens) exceeds this server's "
                f"whole cache budget of {self.budget.capacity} tokens"
            )
        client = client_keys(peer, peer_address)
        count, held = holdings(self._sessions.values(), client)
        if count >= self.max_client_sessions:
            raise ClientLimitError(f"this client holds {count} open sessions here, the most one client may; "
                                   f"close one first")
        try:
            if not ((tokens > self.budget.free or self.budget.waiting) and self._make_room(client, held, tokens)):
                await self.budget.reserve(tokens, wait_timeout)
        except BudgetTimeout as exc:
            _, mine = holdings(self._sessions.values(), client)
            raise CacheFullError(
                f"cache full: {len(self._sessions)} sessions hold {self.budget.used} of {exc.capacity} tokens "
                f"({mine} of them yours); {exc.asked} asked, {exc.free} free after waiting {exc.waited:.1f}s; "
                f"try later or another server"
            ) from None
        if not self.accepting:  # began shutting down while we waited
            self.budget.release(tokens)
            raise ShuttingDownError(self.refusal)
        if session_id is not None and session_id in self._sessions:  # taken while we waited
            self.budget.release(tokens)
            raise BadInputError(f"session id {session_id[:16]} is taken; choose another")
        session = ServerSession(
            session_id=session_id or secrets.token_hex(16), start=start, end=end, max_length=max_length,
            batch_size=batch_size, span=span, peer=peer, client=client, adapter=adapter, left_pad=left_pad,
            last_used=self.clock(), shared=session_id is not None,
        )
        self._sessions[session.session_id] = session
        logger.info("session %s opened: blocks %d:%d, batch %d, max_length %d%s (%d cache tokens left)",
                    session.session_id[:8], start, end, batch_size, max_length,
                    f", adapter {adapter}" if adapter else "", self.budget.free)
        return session

    @property
    def share_tokens(self) -> int:
        """The cache tokens one client may hold while another waits for room."""
        return int(self.client_cache_share * self.budget.capacity)

    def _make_room(self, client: tuple, held: int, tokens: int) -> bool:
        """A client within its share cannot get room at once: end the newest sessions of clients
        over their share until it fits (client_shares.share_victims). The room goes to this client,
        not to whoever queues for cache (a squatter's own waiting open would take it back).
        True when `tokens` are now reserved for it."""
        if held + tokens > self.share_tokens:
            return False  # over its own share: it waits like anyone else
        victims = share_victims(list(self._sessions.values()), client, self.share_tokens, tokens, self.budget.free)
        if not victims:
            return False
        freed = 0
        for victim in victims:
            freed += victim.tokens_reserved
            self.close(victim.session_id, release=False,
                       why=f"was ended: its client held more than its share of the cache ({self.share_tokens} of "
                           f"{self.budget.capacity} tokens) while another waited")
        self.budget.hand_over(freed, tokens)
        return True

    def get(self, session_id, peer: Optional[bytes] = None) -> ServerSession:
        """The open session `session_id`; with `peer`, only if that connection opened it."""
        session = self._sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            why = self._ended.get(session_id) if isinstance(session_id, str) else None
            shown = repr(session_id)[:40]
            if why:
                raise UnknownSessionError(f"session {shown} {why}; open a new one")
            raise UnknownSessionError(f"session {shown} is unknown to this server; open a new one")
        if peer is not None and not session.shared and peer != session.peer:
            raise ForeignSessionError(f"session {session_id[:8]}... was opened by another connection; "
                                      f"only that one may step or close it")
        session.last_used = self.clock()
        return session

    def ended(self, session_id) -> bool:
        """Was this a session of ours that has since closed or expired?"""
        return isinstance(session_id, str) and session_id in self._ended

    def close(self, session_id: str, why: str = "was closed", *, release: bool = True) -> bool:
        """End a session; `release=False` keeps its tokens reserved for the caller to hand on."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        session.closed = True
        session.cache = None  # its pages go back to the pool as soon as no step holds them
        if release:
            self.budget.release(session.tokens_reserved)
        self._ended[session_id] = why
        while len(self._ended) > _REMEMBER_ENDED:
            self._ended.popitem(last=False)
        logger.info("session %s %s after %d steps (%d cache tokens left)",
                    session_id[:8], why, session.steps, self.budget.free)
        return True

    def expire_idle(self) -> list[str]:
        """Close sessions idle longer than idle_timeout (never one whose step is running)."""
        deadline = self.clock() - self.idle_timeout
        stale = [s.session_id for s in self._sessions.values() if s.last_used < deadline and not s.lock.locked()]
        for session_id in stale:
            self.close(session_id, why=f"expired after {self.idle_timeout:g}s idle")
        return stale

    def stop_accepting(self, refusal: str) -> None:
        self.accepting = False
        self.refusal = refusal

    def resume_accepting(self) -> None:
        self.accepting = True

    def close_all(self, why: str) -> int:
        ids = list(self._sessions)
        for session_id in ids:
            self.close(session_id, why=why)
        return len(ids)

    async def expiry_loop(self, period: Optional[float] = None) -> None:
        period = period if period is not None else max(0.05, min(self.idle_timeout / 4, 10.0))
        while True:
            await asyncio.sleep(period)
            self.expire_idle()
