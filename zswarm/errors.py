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
