"""The errors of zswarm, in one tree (wire's own tree is in wire/errors.py).

::

    ZswarmError                         anything zswarm itself raises
    └── ServerError (also wire.RemoteError)  an error reply of the RPC protocol, by its code
        ├── CacheFullError          cache_full         no cache room freed up within the wait
        ├── UnknownSessionError     unknown_session    never opened here, closed, or expired
        ├── BadPositionError        bad_position       a step that would skip positions
        ├── BadInputError           bad_input          wrong shape, dtype, NaN/inf, bad meta
        ├── BlocksNotServedError    blocks_not_served  blocks outside what the server holds now
        ├── TooManyTokensError      too_many_tokens    over a per-request or per-session cap
        ├── UnknownAdapterError     unknown_adapter    an adapter this server does not serve
        └── ShuttingDownError       shutting_down      the server is leaving or moving its blocks
    └── NoRouteError                    some blocks of the model are served by no (usable) server
    └── SessionClosedError              an inference session used after close()
    └── SessionLengthError (ValueError) a step past the session's max_length

A `ServerError` is raised by a server handler (`CacheFullError("why")`; wire answers with its
`code` and message) and re-raised by the client as the same class (`cls(code, message)`),
because each class is registered with `wire.errors.register_remote_error` below.
"""

from __future__ import annotations

from wire.errors import RemoteError, register_remote_error


class ZswarmError(Exception):
    """Base of every error raised by zswarm (not wire or dht)."""


class ServerError(RemoteError, ZswarmError):
    """An error reply of the server protocol; `code` is one of the protocol table's codes."""

    code = "internal"

    def __init__(self, code_or_message: str, message: str | None = None):
        if message is None:  # raised on the server: ServerErrorSubclass("why")
            code, message = type(self).code, code_or_message
        else:  # rebuilt on the client from an error reply: cls(code, message)
            code = code_or_message
        super().__init__(code, message)


class CacheFullError(ServerError):
    code = "cache_full"


class UnknownSessionError(ServerError):
    code = "unknown_session"


class BadPositionError(ServerError):
    code = "bad_position"


class BadInputError(ServerError):
    code = "bad_input"


class BlocksNotServedError(ServerError):
    code = "blocks_not_served"


class TooManyTokensError(ServerError):
    code = "too_many_tokens"


class UnknownAdapterError(ServerError):
    code = "unknown_adapter"


class ShuttingDownError(ServerError):
    code = "shutting_down"


for _cls in (CacheFullError, UnknownSessionError, BadPositionError, BadInputError, BlocksNotServedError,
             TooManyTokensError, UnknownAdapterError, ShuttingDownError):
    register_remote_error(_cls.code, _cls)
del _cls


class NoRouteError(ZswarmError):
    """No chain of servers covers the requested blocks: "blocks 47-48 of MODEL are served by no one".

    `missing` holds the uncovered ranges as half-open `(start, end)` pairs; the message names
    them inclusively, the way a person counts blocks.
    """

    def __init__(self, missing, model_id: str = "the model", detail: str = ""):
        self.missing = [(int(a), int(b)) for a, b in missing]
        self.model_id = model_id
        parts = [f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in self.missing]
        several = len(self.missing) > 1 or any(b - a > 1 for a, b in self.missing)
        noun, verb = ("blocks", "are") if several else ("block", "is")
        message = f"{noun} {', '.join(parts)} of {model_id} {verb} served by no one"
        super().__init__(message + (f" ({detail})" if detail else ""))


# ---- client errors (zswarm.client) ----------------------------------------------------------------

class SessionClosedError(ZswarmError):
    """An inference session was used after it was closed."""


class SessionLengthError(ZswarmError, ValueError):
    """A step would make an inference session hold more tokens than its max_length."""
