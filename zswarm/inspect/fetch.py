"""Fetching for zswarm-inspect: DHT lookups and RPC pings, turned into the views of views.py.

`Inspector` owns one event loop thread, one ZeroMQ transport and (when a view needs the DHT) one
DHT node that joins the swarm through the initial peers. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Sequence

import msgpack

from dht import DHTConfig, DHTNode
from dht.errors import BootstrapError, DHTError, ExpiredEntry, InvalidEntry
from dht.node import listen_host_for, parse_address
from wire import BackgroundLoop, ZmqTransport
from wire.endpoint import split_endpoint
from zswarm.errors import InspectError, RecordError, SwarmUnreachable
from zswarm.records import MODELS_KEY, afetch_block_servers, alist_models, block_key
from zswarm.swarm_info import MAX_BLOCKS, ServerRecord
from zswarm.inspect.views import (RawEntry, RawView, RouteView, SwarmReport, assess_model, plan_route)
from zswarm.probe import measure_rtt, measure_rtts

logger = logging.getLogger(__name__)

# Seconds our DHT node waits for one DHT reply. Shorter than a server's (2 s): joining the swarm
# may ask servers that have left and wait this long for them (clients and other inspect runs
# are client-only nodes, never contacts); 1 s still covers the slowest intercontinental round
# trip several times over.
DHT_RPC_TIMEOUT = 1.0
PROBE_CHUNK = 64  # blocks fetched per round when a model's block count was never announced


def normalize_rpc_address(text: str) -> str:
    """"host:port" or "tcp://host:port", either with the "#curve=KEY" a CURVE server logs at
    start-up -> "tcp://host:port[#curve=KEY]"."""
    address = text if text.startswith("tcp://") else f"tcp://{text}"
    try:
        tcp_address, _ = split_endpoint(address)
        parse_address(tcp_address[len("tcp://"):])
    except ValueError:
        raise InspectError(f"a server address is host:port or tcp://host:port (with #curve=KEY for a CURVE "
                           f"server), got {text!r}") from None
    return address




class Inspector:
    def __init__(self, initial_peers: Sequence[str] = (), *, host: str | None = None, ping_timeout: float = 2.0,
                 info_timeout: float = 5.0, ping_servers: bool = True, dht_rpc_timeout: float = DHT_RPC_TIMEOUT):
        for peer in initial_peers:
            try:
                parse_address(peer)
            except ValueError as exc:
                raise InspectError(str(exc)) from None
        self.initial_peers = list(initial_peers)
        self.host = host or listen_host_for(self.initial_peers)
        self.ping_timeout = ping_timeout
        self.info_timeout = info_timeout
        self.ping_servers = ping_servers
        self.dht_config = DHTConfig(rpc_timeout=dht_rpc_timeout, client_only=True)
        self.loop = BackgroundLoop("zswarm-inspect")
        self.transport = self.loop.run(_make_transport(), timeout=10)
        self.node: DHTNode | None = None

    # ---- lifecycle ------------------------------------------------------------------------------
    def dht(self) -> DHTNode:
        if self.node is None:
            if not self.initial_peers:
                raise InspectError("this view reads the DHT: give --initial-peers HOST:PORT of a bootstrap node or server")
            try:
                self.node = DHTNode(host=self.host, port=0, initial_peers=self.initial_peers,
                                    config=self.dht_config).start()
            except BootstrapError as exc:
                raise SwarmUnreachable(
                    f"cannot reach the swarm: {exc}. Is a bootstrap node or server running there, and is its "
                    f"UDP port open to this machine?") from None
            except (DHTError, OSError) as exc:
                raise SwarmUnreachable(f"cannot start a DHT node to reach {', '.join(self.initial_peers)}: {exc}") from None
        return self.node

    def close(self) -> None:
        try:
            self.loop.run(self.transport.close(), timeout=5)
        except Exception as exc:  # closing must not hide the error that made us close
            logger.debug("closing the transport: %s", exc)
        self.loop.close()
        if self.node is not None:
            self.node.shutdown()
            self.node = None

    def __enter__(self) -> "Inspector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, coro, timeout: float = 120.0):
        return self.loop.run(coro, timeout=timeout)

    # ---- views ----------------------------------------------------------------------------------
    def swarm(self, only_model: str | None = None, *, ping: bool | None = None) -> SwarmReport:
        """Every model (or only `only_model`); `ping`: ping the servers (default: `ping_servers`)."""
        node = self.dht()
        return self._run(self._aswarm(node, only_model, self.ping_servers if ping is None else ping))

    async def _aswarm(self, node: DHTNode, only_model: str | None, ping: bool) -> SwarmReport:
        models = await alist_models(node)
        if only_model is not None:
            if only_model not in models:
                raise InspectError(_not_announced(only_model, models))
            models = {only_model: models[only_model]}
        fetched = {}
        for model_id, num_blocks in sorted(models.items()):
            fetched[model_id] = await self._blocks(node, model_id, num_blocks)
        peers = {r.peer_id: r.endpoint for blocks in fetched.values() for b in blocks for r in b.values()}
        pings = await self._ping_all(peers) if ping else {}
        view = SwarmReport(list(self.initial_peers), time.time())
        for model_id, blocks in fetched.items():
            view.models.append(assess_model(model_id, len(blocks), blocks, pings))
        return view

    async def _blocks(self, node: DHTNode, model_id: str, num_blocks: int | None) -> list[dict[str, ServerRecord]]:
        if num_blocks:
            return await afetch_block_servers(node, model_id, 0, num_blocks)
        # No server said how many blocks the model has: read on until a chunk holds nothing and
        # no record reaches past it.
        blocks: list[dict[str, ServerRecord]] = []
        while len(blocks) < MAX_BLOCKS:
            chunk = await afetch_block_servers(node, model_id, len(blocks), min(len(blocks) + PROBE_CHUNK, MAX_BLOCKS))
            blocks += chunk
            reach = max((r.end for b in blocks for r in b.values()), default=0)
            if not any(chunk) and reach <= len(blocks):
                break
        reach = max((r.end for b in blocks for r in b.values()), default=0)
        return blocks[:reach]

    async def _ping_all(self, peers: dict[str, str]) -> dict[str, float | None]:
        return await measure_rtts(self.transport, peers, timeout=self.ping_timeout)

    async def _ping(self, address: str) -> float | None:
        return await measure_rtt(self.transport, address, timeout=self.ping_timeout)

    def server(self, address: str, pings: int = 3) -> dict:
        """`info` and a few pings of one server; raises InspectError when it does not answer."""
        address = normalize_rpc_address(address)
        return self._run(self._aserver(address, pings))

    async def _aserver(self, address: str, pings: int) -> dict:
        try:
            reply = await self.transport.call(address, "info", {}, timeout=self.info_timeout)
        except Exception as exc:
            raise InspectError(f"{address} did not answer info within {self.info_timeout:g} s: {exc}") from None
        rtts = [await self._ping(address) for _ in range(max(1, pings))]
        answered = sorted(r for r in rtts if r is not None)
        return {"address": address, "info": _plain(reply.meta), "pings_sent": len(rtts), "pings_answered": len(answered),
                "rtt_min": answered[0] if answered else None,
                "rtt_median": answered[len(answered) // 2] if answered else None}

    def route(self, model_id: str, *, max_length: int = 0) -> RouteView:
        node = self.dht()
        return self._run(self._aroute(node, model_id, max_length))

    async def _aroute(self, node: DHTNode, model_id: str, max_length: int) -> RouteView:
        models = await alist_models(node)
        if model_id not in models:
            raise InspectError(_not_announced(model_id, models))
        blocks = await self._blocks(node, model_id, models[model_id])
        peers = {r.peer_id: r.endpoint for b in blocks for r in b.values()}
        pings = await self._ping_all(peers)
        return plan_route(model_id, len(blocks), blocks, pings, max_length=max_length)

    def raw(self, key: str) -> RawView:
        node = self.dht()
        return self._run(self._araw(node, key))

    async def _araw(self, node: DHTNode, key: str) -> RawView:
        from dht.entry import EntryVerifier, entry_hash
        from dht.server import key_digest

        dkey = key_digest(key)
        server = getattr(node, "_server", None)
        if server is None or not hasattr(server, "find_blobs"):  # dht changed: show what it verified
            entries = await node.aget(key)
            out = [RawEntry(e.peer_id, e.expiration_time, e.signed_at, "valid", *decode_value(e.value))
                   for e in entries.values()]
            return RawView(key, dkey.hex(), out, checked=False)
        # Ask the replicas for every blob they hold and check each here, so an operator also sees
        # the entries the DHT would drop (expired, bad signature), not only the ones it keeps.
        lookups = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(server.find_blobs([dkey]), node._loop))
        verifier = EntryVerifier(node.config.max_ttl, node.config.max_clock_skew, cache_size=0)
        seen: dict[bytes, RawEntry] = {}
        now = time.time()
        for _sender, blob in lookups[dkey].blobs:
            h = entry_hash(blob)
            if h in seen:
                seen[h].holders += 1
                continue
            seen[h] = check_blob(verifier, dkey, blob, now)
        entries = sorted(seen.values(), key=lambda e: (e.peer_id or "", -(e.signed_at or 0)))
        return RawView(key, dkey.hex(), entries, checked=True)


def _not_announced(model_id: str, models) -> str:
    return f"no server announces {model_id!r} (models in this swarm: {', '.join(sorted(models)) or 'none'})"


async def _make_transport() -> ZmqTransport:
    # Inspect sends only pings and `info`, nothing secret, so it also reaches plaintext servers;
    # a server whose record names a CURVE key is still dialled with it, and must hold it.
    return ZmqTransport(insecure_plaintext=True)


def check_blob(verifier, dkey: bytes, blob: bytes, now: float) -> RawEntry:
    """One stored blob -> RawEntry with its signature status (pure but for the verifier's cache)."""
    try:
        entry = verifier.decode(dkey, blob, now)
    except ExpiredEntry:
        status = "expired"
    except InvalidEntry as exc:
        status = "bad signature" if "signature" in str(exc) else f"invalid: {exc}"
    else:
        return RawEntry(entry.peer_id, entry.expiration_time, entry.signed_at, "valid", *decode_value(entry.value))
    # Not valid: still show what it claims, read without trusting it.
    try:
        from dht.identity import peer_id_from_public_key

        public_key, signed_at, expiration_time, value, _ = msgpack.unpackb(blob, raw=False, max_str_len=0,
                                                                           max_array_len=5, max_map_len=0)
        peer = peer_id_from_public_key(public_key) if isinstance(public_key, bytes) else None
        times = [t if isinstance(t, (int, float)) else None for t in (expiration_time, signed_at)]
        decoded = decode_value(value) if isinstance(value, bytes) else ({"hex": ""}, "-")
        return RawEntry(peer, times[0], times[1], status, *decoded)
    except Exception:  # junk: nothing more to say than its status
        return RawEntry(None, None, None, status, {"hex": blob[:64].hex()}, "-")


def decode_value(value: bytes) -> tuple[object, str]:
    """A DHT value as (readable data, kind): a ServerRecord, a model-index entry, other msgpack,
    or the first bytes in hex."""
    try:
        record = ServerRecord.from_bytes(value)
    except RecordError:
        pass
    else:
        data = {k: v for k, v in vars(record).items() if k != "extra" or v}
        data["state"] = record.state.name
        data["adapters"] = list(record.adapters)
        return data, "server record"
    try:
        raw = msgpack.unpackb(value, raw=False, max_map_len=256, max_array_len=256, max_ext_len=0)
    except Exception:
        return {"hex": value[:256].hex(), "bytes": len(value)}, "bytes"
    if isinstance(raw, dict) and set(raw) <= {"v", "m", "nb"} and "m" in raw:
        return {"model_id": raw.get("m"), "num_blocks": raw.get("nb"), "v": raw.get("v")}, "model index"
    return _plain(raw), "msgpack"


def _plain(x):
    if isinstance(x, bytes):
        return {"hex": x[:256].hex()}
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x


def expand_key(key: str) -> str:
    """Shorthands for the keys an operator looks at: "models" and "MODEL/block/N" (see --help)."""
    if key == "models":
        return MODELS_KEY
    if key.startswith("zswarm/"):
        return key
    model_id, sep, block = key.rpartition("/block/")
    if sep and block.isdigit():
        return block_key(model_id, int(block))
    return key
