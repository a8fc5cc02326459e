"""The errors of zswarm, in one tree (wire's and dht's own trees are in wire/errors.py and
dht/errors.py; they import nothing of zswarm, so zswarm maps them, see below).

::

    ZswarmError                              anything zswarm itself raises
    ├── ConfigError (ValueError)             a setting (server, client, CLI) it cannot run with, a bad peer address
    │   └── BindError                        cannot listen there (port taken, not this machine's address)
    ├── ModelError                           zswarm.models; its subtree is drawn in zswarm/models/errors.py
    ├── InsufficientMemoryError (RuntimeError)  not even one block fits on the device
    ├── QuantizationUnavailable (RuntimeError)  --quant asked for, but bitsandbytes/CUDA is missing
    ├── BudgetTimeout                        (server-internal) no cache room freed up within the wait
    ├── RecordError                          a server record (DHT value) of the wrong schema or version
    ├── ServerError (also wire.RemoteError)  an error reply of the RPC protocol, by its code
    │   ├── CacheFullError          cache_full         no cache room freed up within the wait
    │   ├── UnknownSessionError     unknown_session    never opened here, closed, or expired
    │   ├── ForeignSessionError     foreign_session    a step or close of a session another connection opened
    │   ├── ClientLimitError        client_limit       this client already holds as many sessions as one may
    │   ├── BadPositionError        bad_position       a step that would skip positions
    │   ├── BadInputError           bad_input          wrong shape, dtype, NaN/inf, bad meta
    │   ├── BlocksNotServedError    blocks_not_served  blocks outside what the server holds now
    │   ├── TooManyTokensError      too_many_tokens    over a per-request or per-session cap
    │   ├── UnknownAdapterError     unknown_adapter    an adapter this server does not serve
    │   └── ShuttingDownError       shutting_down      the server is leaving or moving its blocks
    ├── TransportError                       a call to a server failed below the protocol (wire's error chained)
    ├── SwarmUnreachable                     the swarm's DHT cannot be joined or read (dht's error chained)
    ├── ServerUnavailable                    (client-internal) a server failed a probe or answered nonsense
    │   └── ServerMisbehaved                 its answer was wrong, not late: distrusted for the whole connection
    │       ├── ImplausibleReplyError        a reply of the wrong shape or dtype, NaN/inf, or of absurd scale
    │       └── WrongResultsError            a spot check: its outputs differ from its replicas' (zswarm.client.verification)
    ├── RetractedResultsError                outputs a session gave out from some position on were found wrong
    ├── SpanFailed                           (client-internal) a call to one server failed; retried elsewhere
    ├── NoRouteError                         some blocks of the model are served by no (usable) server
    ├── SessionClosedError                   an inference session used after close()
    ├── SessionLengthError (ValueError)      a step past the session's max_length
    ├── InspectError                         zswarm-inspect: something the operator has to fix or know
    ├── DemoError                            zswarm-demo: something the user should read about
    ├── ApiError                             zswarm-api: a request it cannot answer; `.status` is the HTTP status
    │   ├── ApiBadRequest          400       bad parameters, a prompt past the context, a malformed body
    │   ├── ApiModelNotFound       404       a model this API does not serve
    │   └── ApiSwarmUnavailable    503       the swarm cannot serve it now (no route, cache full, servers gone)
    ├── ServerExitedError (RuntimeError)     a launched server exited before it came online
    └── ServersNotOnlineError (TimeoutError) launched servers still not ONLINE when the wait ran out

A `ServerError` is raised by a server handler (`CacheFullError("why")`; wire answers with its
`code` and message) and re-raised by the client as the same class (`cls(code, message)`),
because each class is registered with `wire.errors.register_remote_error` below.

wire's `WireError`s and dht's `DHTError`s are mapped to this tree, and chained (`raise ... from
exc`), in one place: `zswarm.client.failures.public_error`, which every call of the client's
public API goes through (`SwarmConnection`). Inside the client they travel as they are: the retry
policy reads them (`is_server_fault`). A server start-up catches `ZswarmError` and the two bases.
"""

from __future__ import annotations

from wire.errors import RemoteError, register_remote_error
from zswarm.blocks import format_blocks, format_ranges


class ZswarmError(Exception):
    """Base of every error raised by zswarm (not wire or dht)."""


# ---- configuration and start-up (zswarm.server) ---------------------------------------------------

class ConfigError(ZswarmError, ValueError):
    """A setting that a server or client cannot run with (a peer address without a port, say);
    the message says which and why."""


class BindError(ConfigError):
    """The server cannot listen where it was told to (port taken, address not of this machine)."""


class InsufficientMemoryError(ZswarmError, RuntimeError):
    """Not even one block (plus its share of the cache) fits on the device."""


class QuantizationUnavailable(ZswarmError, RuntimeError):
    """--quant was asked for but cannot run here."""


class BudgetTimeout(ZswarmError):
    """No room freed up within the wait; carries what was asked and what was free."""

    def __init__(self, asked: int, free: int, capacity: int, waited: float):
        self.asked, self.free, self.capacity, self.waited = asked, free, capacity, waited
        super().__init__(
            f"cache full: asked for {asked} tokens, {free} of {capacity} free after waiting {waited:.1f}s"
        )


# ---- the RPC protocol's error replies ---------------------------------------------------------------

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


class ForeignSessionError(ServerError):
    """The session exists but was opened by another connection: session ids are not bearer tokens."""

    code = "foreign_session"


class ClientLimitError(ServerError):
    code = "client_limit"


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


for _cls in (CacheFullError, UnknownSessionError, ForeignSessionError, ClientLimitError, BadPositionError,
             BadInputError, BlocksNotServedError, TooManyTokensError, UnknownAdapterError, ShuttingDownError):
    register_remote_error(_cls.code, _cls)
del _cls


class RecordError(ZswarmError):
    """A server record or model-index entry read from the DHT has the wrong schema or version
    (zswarm.swarm_info); the readers log it once per peer and leave the record out."""


# ---- wire and dht, mapped ---------------------------------------------------------------------------

class TransportError(ZswarmError):
    """A call to a server failed below the protocol (timeout, closed transport, bad frames);
    wire's error is the `__cause__`."""


class SwarmUnreachable(ZswarmError):
    """The swarm's DHT cannot be joined or read; dht's error (if any) is the `__cause__`."""


# ---- the client (zswarm.client) ---------------------------------------------------------------------

def describe_error(exc: BaseException | None) -> str:
    """`Type: message` of an error, for log lines and messages ("none" for no error)."""
    if exc is None:
        return "none"
    if isinstance(exc, SpanFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ServerUnavailable(ZswarmError):
    """A server cannot be used right now: it failed a probe or answered nonsense. Retried."""

    code = "server_unavailable"


class ServerMisbehaved(ServerUnavailable):
    """A server's answer was wrong, not late: the client distrusts it for the rest of its connection
    (every session of it), never only for a backoff period."""

    def __init__(self, peer_id: str, message: str, *, blocks: tuple[int, int] | None = None):
        where = f" on blocks {format_blocks(*blocks)}" if blocks else ""
        super().__init__(f"server {peer_id}{where}: {message}")
        self.peer_id, self.blocks, self.reason = peer_id, blocks, message


class ImplausibleReplyError(ServerMisbehaved):
    """A reply of the wrong shape or dtype, with NaN/inf, or of a scale no block computes
    (zswarm.client.verification.check_reply)."""


class WrongResultsError(ServerMisbehaved):
    """A spot check found the server's outputs differ from those of replicas holding the same
    blocks, beyond what honest replicas ever differ by."""


class RetractedResultsError(ZswarmError):
    """Outputs this session returned from `position` on were computed by a server found lying; the
    session is rolled back to `position` and routed around it, so stepping again from there gives
    right results. `generate` does that itself when the position is inside its own call."""

    def __init__(self, position: int, liars: list[str], detail: str = ""):
        self.position, self.liars = position, list(liars)
        super().__init__(f"outputs from position {position} on came from server(s) {', '.join(liars)} found lying"
                         + (f" ({detail})" if detail else "") + f"; the session is rolled back to {position}")


class SpanFailed(ZswarmError):
    """A call to `peer_id` failed in a way another server (or it, later) may not."""

    def __init__(self, peer_id: str, cause: BaseException):
        super().__init__(f"{peer_id}: {describe_error(cause)}")
        self.peer_id = peer_id
        self.cause = cause


class NoRouteError(ZswarmError):
    """No chain of servers covers the requested blocks: "blocks 47:49 of MODEL are served by no one".

    `missing` holds the uncovered ranges as half-open `(start, end)` pairs; the message names
    them in zswarm's one range notation (`zswarm.blocks`). `adapter`: the active adapter that no
    server of those blocks serves, or None.
    """

    def __init__(self, missing, model_id: str = "the model", detail: str = "", *, adapter: str | None = None):
        self.missing = [(int(a), int(b)) for a, b in missing]
        self.model_id = model_id
        self.adapter = adapter
        message = f"blocks {format_ranges(self.missing)} of {model_id} are served by no one"
        super().__init__(message + (f" ({detail})" if detail else ""))


class SessionClosedError(ZswarmError):
    """An inference session was used after it was closed."""


class SessionLengthError(ZswarmError, ValueError):
    """A step would make an inference session hold more tokens than its max_length."""


# ---- the command-line tools -------------------------------------------------------------------------

class InspectError(ZswarmError):
    """Something the operator has to fix or know (unreachable swarm, bad address); the CLI prints
    the message and exits nonzero."""


class DemoError(ZswarmError):
    """Something went wrong that the user should read about (the message says what to do)."""


class ApiError(ZswarmError):
    """A request zswarm-api answers with an OpenAI-shaped error: `status` is the HTTP status,
    `type`/`code`/`param` the fields of OpenAI's error object."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


class ApiBadRequest(ApiError):
    """Parameters out of range, a prompt longer than the model's context, a body that is not the schema."""


class ApiModelNotFound(ApiError):
    """The request names a model this API does not serve (it may still be in the swarm)."""

    status = 404
    code = "model_not_found"

    def __init__(self, message: str, *, param: str | None = "model"):
        super().__init__(message, code="model_not_found", param=param)


class ApiSwarmUnavailable(ApiError):
    """The swarm cannot serve the request now; the message says why (the cause is chained)."""

    status = 503
    type = "service_unavailable"


class ServerExitedError(ZswarmError, RuntimeError):
    """A launched server (zswarm.testing.launch) exited before it came online; `.server` says which,
    its log says why."""

    def __init__(self, server):
        self.server = server
        where = format_blocks(server.start, server.end) if server.start is not None else "not chosen yet"
        super().__init__(f"server {server.name} (blocks {where}) exited with status "
                         f"{server.popen.returncode} while starting; the end of its log ({server.log}):\n"
                         f"{server.tail()}")


class ServersNotOnlineError(ZswarmError, TimeoutError):
    """Launched servers still not ONLINE (or ready) when the wait ran out; `.servers` are those, the
    message has their logs."""

    def __init__(self, servers: list, timeout: float):
        self.servers = servers
        tails = "\n".join(f"--- server {s.name} ({s.log}):\n{s.tail()}" for s in servers)
        super().__init__(f"servers {', '.join(s.name for s in servers)} not online after {timeout:g} s:\n{tails}")
