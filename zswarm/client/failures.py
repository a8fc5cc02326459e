"""What counts as a server's fault, the retry budget every failover loop of the client spends
(`RetryBudget`: inference sessions and forward/backward alike), and what a caller of the public API sees of wire's and dht's errors (`public_error`: the one place they
are mapped into zswarm's tree)."""
from __future__ import annotations

import asyncio
import contextlib

from dht.errors import AddressError, DHTError
from wire.errors import RemoteError, WireError
from zswarm.client.config import ClientConfig
from zswarm.blocks import format_blocks
from zswarm.errors import (CacheFullError, ConfigError, NoRouteError, ServerError, ServerUnavailable,  # noqa: F401
                           SpanFailed, SwarmUnreachable, TransportError, ZswarmError, describe_error)

describe = describe_error

# Error codes that say the request itself was wrong: any other server would answer the same.
CLIENT_FAULT_CODES = frozenset({"bad_input", "too_many_tokens", "unknown_adapter"})


def is_server_fault(exc: BaseException) -> bool:
    """Would another server (or this one, later) likely succeed where this one failed?"""
    if isinstance(exc, RemoteError):
        return exc.code not in CLIENT_FAULT_CODES
    return isinstance(exc, (WireError, ServerUnavailable, asyncio.TimeoutError, OSError))


def retries_exhausted(model_id: str, start: int, end: int, attempts: int,
                      cause: BaseException | None) -> ZswarmError:
    """The error raised when the retry budget is spent on blocks [start, end): NoRouteError, or
    CacheFullError when the last server answered that it is full (it is served, just busy)."""
    if isinstance(cause, CacheFullError):
        return CacheFullError(f"blocks {format_blocks(start, end)} of {model_id} are served, but the servers "
                              f"there have no cache room for this session (gave up after {attempts} attempts); "
                              f"the last said: {cause.message}")
    if isinstance(cause, NoRouteError):  # the DHT lists no one for some blocks: name just those
        adapter = cause.adapter
        detail = f"still, after {attempts} attempts" + (f"; {adapter_detail(adapter)}" if adapter else "")
        return NoRouteError(cause.missing, model_id, detail, adapter=adapter)
    return NoRouteError([(start, end)], model_id,
                        f"the servers listed for them do not answer: gave up after {attempts} failed "
                        f"attempts; last error: {describe(cause)}")


def adapter_detail(adapter: str) -> str:
    return (f"no server there serves adapter {adapter!r}: ask for another one, or start servers "
            f"with --adapters that include it")


def backoff_delay(config: ClientConfig, attempt: int) -> float:
    return min(config.retry_backoff_s * 2 ** max(attempt - 1, 0), config.ban_max_s)


class RetryBudget:
    """One operation's retries: at most `config.max_retries` failed attempts, exponential backoff
    between them, and NoRouteError (chained to the last failure) once they are spent.

    A failed attempt is a server failing a call (`fail`) or no route to be had (`no_route`); the
    first time no route is found after a new start (`new_route`) does not count, since our view
    of the swarm may just be stale: the view is refreshed at once instead.
    """

    def __init__(self, config: ClientConfig, model_id: str):
        self.config, self.model_id = config, model_id
        self.attempt = 0
        self._refreshed = False
        self._cache_full: CacheFullError | None = None

    def fail(self, cause: BaseException, start: int, end: int) -> None:
        """Count a failed attempt on blocks [start, end); raises once the budget is spent."""
        self.attempt += 1
        if isinstance(cause, CacheFullError):
            self._cache_full = cause
        if self.attempt > self.config.max_retries:
            # a full server is banned for a while, so the attempts after it find "no route": the
            # caller should hear that the blocks are served but full, not that no one serves them
            said = self._cache_full if isinstance(cause, (NoRouteError, CacheFullError)) and self._cache_full else cause
            raise retries_exhausted(self.model_id, start, end, self.attempt, said) from cause

    async def backoff(self) -> None:
        await asyncio.sleep(backoff_delay(self.config, self.attempt))

    def new_route(self) -> None:
        """Routing starts over (a new range, or after a server failed): a stale view is forgiven once more."""
        self._refreshed = False

    async def no_route(self, cause: BaseException, start: int, end: int, refresh) -> None:
        """No route now: refresh the view (`await refresh()`) at once the first time, after that
        count a failed attempt and back off first."""
        if self._refreshed:
            self.fail(cause, start, end)
            await self.backoff()
        self._refreshed = True
        await refresh()

    def __str__(self) -> str:
        return f"attempt {self.attempt} of {self.config.max_retries}"


def public_error(exc: BaseException) -> BaseException:
    """The error a caller of the public API gets for `exc`: zswarm's own (and anything that is
    not wire's or dht's) as it is; wire's and dht's mapped into zswarm's tree, chained."""
    if isinstance(exc, ZswarmError) or not isinstance(exc, (WireError, DHTError)):
        return exc
    if isinstance(exc, RemoteError):  # an error code no zswarm class is registered for
        return ServerError(exc.code, exc.message)
    if isinstance(exc, WireError):
        return TransportError(describe_error(exc))
    if isinstance(exc, AddressError):
        return ConfigError(str(exc))
    return SwarmUnreachable(f"the swarm's DHT: {describe_error(exc)}")


@contextlib.contextmanager
def public_errors():
    """Raise what `public_error` makes of an error from inside the block, chained to it."""
    try:
        yield
    except (WireError, DHTError) as exc:
        mapped = public_error(exc)
        if mapped is exc:
            raise
        raise mapped from exc
