"""Can the swarm reach this server? Asked of the swarm itself, at start-up.

A server behind NAT or a firewall that announces itself wastes every client's retries: clients
find its record, dial, and time out. So before announcing, a server asks another server of the
swarm to connect back (`check_reachable`) to the RPC endpoint and the DHT address it is about to
announce, and says in one line what was found and what to do. A server whose RPC port the swarm
cannot reach announces nothing and asks again every RECHECK_S, so that opening the port (or
fixing --public-host) needs no restart.

The helper side (`ConnectBack`) connects back only to the IP the request came from: a server
cannot be used to probe a third party. It answers one check per asking IP at a time, at most
every MIN_INTERVAL_S, and at most MAX_CONCURRENT at once; each leg is bounded by LEG_TIMEOUT_S,
so a check answers within about 2 x LEG_TIMEOUT_S.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from wire import ZmqTransport
from wire.endpoint import split_endpoint
from wire.errors import BadAddress
from zswarm.errors import BadInputError, ClientLimitError, ConfigError
from zswarm.probe import ping_rtt
from zswarm.records import afetch_block_servers
from zswarm.server.config import parse_host_port
from zswarm.swarm_info import ServerState

logger = logging.getLogger(__name__)

LEG_TIMEOUT_S = 2.0  # how long the helper waits for our RPC ping and for our DHT ping, each
MIN_INTERVAL_S = 10.0  # one check per asking IP this often
MAX_CONCURRENT = 4  # checks a helper runs at once
RECHECK_S = 60.0  # an unreachable server asks again this often
HELPERS_ASKED = 2  # servers asked, one after another, before "no answer"


@dataclass
class Reachability:
    """What a helper found; `rpc`/`dht`: True reachable, False not, None not checked."""

    helper: str  # the helper's peer id ("" when no server could be asked)
    rpc: Optional[bool]
    dht: Optional[bool]
    observed_ip: str = ""
    rpc_error: str = ""
    dht_error: str = ""
    seconds: float = 0.0

    @property
    def announce(self) -> bool:
        """Announce a direct address unless the swarm was seen failing to reach our RPC port."""
        return self.rpc is not False

    def line(self, rpc_endpoint: str, dht_address: str) -> str:
        """The one log line that says what was found and what to do."""
        rpc_host, rpc_port = parse_host_port(split_endpoint(rpc_endpoint)[0].removeprefix("tcp://"))
        dht_port = parse_host_port(dht_address)[1]
        if not self.helper:
            return "reachability not checked: no other server in the swarm to ask yet"
        who = f"checked by {self.helper[:12]} in {self.seconds:.1f} s"
        if self.rpc is None:
            return f"reachability not checked ({who}): {self.rpc_error}"
        if self.rpc and self.dht:
            return f"reachable from the swarm: TCP {rpc_host}:{rpc_port} (RPC) and UDP {dht_port} (DHT) ({who})"
        if self.rpc:
            return (f"TCP {rpc_port} (RPC) reachable, but UDP {dht_port} (DHT) not reachable from the swarm "
                    f"({self.dht_error}; {who}): clients can use this server, yet other nodes' lookups through it "
                    f"time out; open UDP {dht_port}")
        seen = f" (the swarm sees this machine as {self.observed_ip})" if self.observed_ip not in ("", rpc_host) else ""
        return (f"TCP {rpc_port} not reachable from the swarm at {rpc_host}{seen}: {self.rpc_error} ({who}). "
                f"Open TCP {rpc_port} (and UDP {dht_port}) in the firewall or forward them on the router, and set "
                f"--public-host to the address others reach this machine at. Not announcing; asking again every "
                f"{RECHECK_S:.0f} s")


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


class ConnectBack:
    """The helper side: connect back to the asker's announced endpoints (see the module doc)."""

    def __init__(self, node, clock=time.monotonic):
        self.node = node  # our DHT node: it pings the asker's
        self.clock = clock
        self._last: dict[str, float] = {}  # asking IP -> when its last check began
        self._running: set[str] = set()

    async def check(self, meta: dict, observed_ip: str) -> dict:
        rpc, dht = meta.get("rpc"), meta.get("dht")
        if not isinstance(rpc, str) or not isinstance(dht, str) or len(rpc) > 200 or len(dht) > 100:
            raise BadInputError("check_reachable takes 'rpc' (tcp://HOST:PORT[#curve=KEY]) and 'dht' (HOST:PORT)")
        try:
            tcp, _ = split_endpoint(rpc)
            if not tcp.startswith("tcp://"):
                raise BadInputError("'rpc' must be a tcp:// endpoint")
            rpc_host, _ = parse_host_port(tcp.removeprefix("tcp://"))
            dht_host, dht_port = parse_host_port(dht)
        except (BadAddress, ConfigError) as exc:
            raise BadInputError(f"check_reachable: {exc}") from None
        if not observed_ip:
            raise BadInputError("cannot tell where this request came from, so cannot connect back")
        if not (_same_ip(rpc_host, observed_ip) and _same_ip(dht_host, observed_ip)):
            # we connect back to the asker only; its announced host is not where it connects from
            return {"observed_ip": observed_ip, "rpc": None, "dht": None,
                    "why": f"this request came from {observed_ip}, not from {rpc_host}, the host to check"}
        now = self.clock()
        self._last = {ip: at for ip, at in self._last.items() if now - at < MIN_INTERVAL_S}
        if observed_ip in self._running or observed_ip in self._last or len(self._running) >= MAX_CONCURRENT:
            raise ClientLimitError(f"reachability checks are rate-limited: one per address every "
                                   f"{MIN_INTERVAL_S:.0f} s, {MAX_CONCURRENT} at once; ask again later")
        self._last[observed_ip] = now
        self._running.add(observed_ip)
        try:
            (rpc_ok, rpc_error), (dht_ok, dht_error) = await asyncio.gather(
                self._rpc(rpc), self._dht(dht_host, dht_port))
        finally:
            self._running.discard(observed_ip)
        return {"observed_ip": observed_ip, "rpc": rpc_ok, "rpc_error": rpc_error, "dht": dht_ok,
                "dht_error": dht_error}

    async def _rpc(self, endpoint: str) -> tuple[bool, str]:
        # a transport of its own, closed after: no socket keeps dialling an address that never answers
        transport = ZmqTransport(insecure_plaintext=True)  # a ping carries nothing secret
        try:
            await ping_rtt(transport, endpoint, timeout=LEG_TIMEOUT_S)
            return True, ""
        except Exception as exc:  # any failure to answer is the finding, not an error of ours
            return False, f"no answer to a ping within {LEG_TIMEOUT_S:g} s ({type(exc).__name__})"
        finally:
            await transport.close()

    async def _dht(self, host: str, port: int) -> tuple[bool, str]:
        try:
            answered = await asyncio.wait_for(self.node.aping(host, port), LEG_TIMEOUT_S + 1.0)
        except (asyncio.TimeoutError, OSError) as exc:
            return False, f"no answer to a DHT ping ({type(exc).__name__})"
        return (True, "") if answered else (False, "no answer to a DHT ping")


async def ask_swarm(node, transport, model_id: str, num_blocks: int, my_peer_id: str, rpc_endpoint: str,
                    dht_address: str) -> Reachability:
    """Ask up to HELPERS_ASKED other servers of `model_id` (any block) to connect back to us."""
    began = time.monotonic()
    try:
        blocks = await afetch_block_servers(node, model_id, 0, num_blocks)
    except Exception as exc:  # the DHT did not answer: nothing to ask, nothing proven
        return Reachability("", None, None, rpc_error=f"reading the DHT failed: {exc}")
    helpers = {}
    for records in blocks:
        for peer_id, record in records.items():
            if peer_id != my_peer_id and record.state != ServerState.OFFLINE:
                helpers[peer_id] = record
    if not helpers:
        return Reachability("", None, None)
    asked = random.sample(list(helpers.values()), min(HELPERS_ASKED, len(helpers)))
    failures = []
    for record in asked:
        try:
            reply = await transport.call(record.endpoint, "check_reachable", {"rpc": rpc_endpoint, "dht": dht_address},
                                         timeout=2 * LEG_TIMEOUT_S + 3.0)
        except Exception as exc:  # that helper could not answer (an older version, gone, busy): try another
            failures.append(f"{record.peer_id[:12]}: {exc}")
            continue
        meta = reply.meta
        seconds = time.monotonic() - began
        if meta.get("rpc") is None:
            return Reachability(record.peer_id, None, None, observed_ip=str(meta.get("observed_ip", "")),
                                rpc_error=str(meta.get("why", "the helper did not check")), seconds=seconds)
        return Reachability(record.peer_id, bool(meta["rpc"]), bool(meta.get("dht")),
                            observed_ip=str(meta.get("observed_ip", "")), rpc_error=str(meta.get("rpc_error", "")),
                            dht_error=str(meta.get("dht_error", "")), seconds=seconds)
    return Reachability(asked[0].peer_id, None, None, rpc_error="no server answered the check: " + "; ".join(failures),
                        seconds=time.monotonic() - began)


class AnnounceWhenReachable:
    """A server's standing with the swarm: asked before it announces; while the swarm cannot
    reach it, the announcer's records are withheld and the swarm is asked again every RECHECK_S,
    then `announce_now` runs."""

    def __init__(self, ask: Callable[[], Awaitable[Reachability]], announcer, rpc_endpoint: str, dht_address: str):
        self.ask, self.announcer = ask, announcer
        self.rpc_endpoint, self.dht_address = rpc_endpoint, dht_address

    async def check(self) -> bool:
        """Ask once and log what was found; True when the server may announce itself."""
        found = await self.ask()
        line = found.line(self.rpc_endpoint, self.dht_address)
        if found.announce:
            (logger.info if found.rpc or not found.helper else logger.warning)(line)
            self.announcer.withheld = None
        else:
            logger.error(line)
            self.announcer.withheld = "the swarm cannot reach this server"
        return found.announce

    async def until_reachable(self, announce_now: Callable[[], Awaitable]) -> None:
        """After a check found the server unreachable: ask every RECHECK_S until it is reachable."""
        await asyncio.sleep(RECHECK_S)
        while not await self.check():
            await asyncio.sleep(RECHECK_S)
        await announce_now()
