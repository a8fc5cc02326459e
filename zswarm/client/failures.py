"""What counts as a server's fault, and how the client gives up when retries run out."""
from __future__ import annotations

import asyncio

from wire.errors import RemoteError, WireError
from zswarm.client.config import ClientConfig
from zswarm.errors import NoRouteError

# Error codes that say the request itself was wrong: any other server would answer the same.
CLIENT_FAULT_CODES = frozenset({"bad_input", "too_many_tokens", "unknown_adapter"})


class ServerUnavailable(Exception):
    """A server cannot be used right now: it failed a probe or answered nonsense. Retried."""

    code = "server_unavailable"


class SpanFailed(Exception):
    """A call to `peer_id` failed in a way another server (or it, later) may not."""

    def __init__(self, peer_id: str, cause: BaseException):
        super().__init__(f"{peer_id}: {describe(cause)}")
        self.peer_id = peer_id
        self.cause = cause


def is_server_fault(exc: BaseException) -> bool:
    """Would another server (or this one, later) likely succeed where this one failed?"""
    if isinstance(exc, RemoteError):
        return exc.code not in CLIENT_FAULT_CODES
    return isinstance(exc, (WireError, ServerUnavailable, asyncio.TimeoutError, OSError))


def retries_exhausted(model_id: str, start: int, end: int, attempts: int,
                      cause: BaseException | None) -> NoRouteError:
    """The error raised when the retry budget is spent on blocks [start, end)."""
    if isinstance(cause, NoRouteError):  # the DHT lists no one for some blocks: name just those
        adapter = getattr(cause, "adapter", None)
        detail = f"still, after {attempts} attempts" + (f"; {adapter_detail(adapter)}" if adapter else "")
        error = NoRouteError(cause.missing, model_id, detail)
        error.adapter = adapter
        return error
    return NoRouteError([(start, end)], model_id,
                        f"the servers listed for them do not answer: gave up after {attempts} failed "
                        f"attempts; last error: {describe(cause)}")


def adapter_detail(adapter: str) -> str:
    return (f"no server there serves adapter {adapter!r}: ask for another one, or start servers "
            f"with --adapters that include it")


def backoff_delay(config: ClientConfig, attempt: int) -> float:
    return min(config.retry_backoff_s * 2 ** max(attempt - 1, 0), config.ban_max_s)


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "none"
    if isinstance(exc, SpanFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
