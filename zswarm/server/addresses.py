"""Where a server listens and the address it announces: `--host`, `--public-host`, the ports.

A server bound to every interface (`--host 0.0.0.0`) must not announce `tcp://0.0.0.0:PORT`:
nobody can connect to that. Without `--public-host`, it announces the address of the interface
that routes to the swarm (its first initial peer, or the default route for a new swarm) and
says so in its log; where there is none, it refuses to start and asks for `--public-host`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from typing import Callable, Optional, Sequence

from zswarm.errors import BindError, ConfigError
from zswarm.server.config import parse_host_port

logger = logging.getLogger(__name__)

WILDCARD_HOSTS = ("0.0.0.0", "::", "*", "")
# Any address outside this machine: a UDP connect() only asks the routing table, no packet leaves.
DEFAULT_ROUTE_PROBE = ("10.255.255.255", 1)


def route_source(host: str, port: int) -> Optional[str]:
    """The local address this machine would send from to reach host:port, or None without a route."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            return probe.getsockname()[0]
    except OSError:
        return None


def announced_host(host: str, public_host: Optional[str], initial_peers: Sequence[str],
                   route: Callable[[str, int], Optional[str]] = route_source) -> str:
    """The host written into our DHT record: --public-host, else --host unless it is a wildcard."""
    if public_host:
        return public_host
    if host not in WILDCARD_HOSTS:
        return host
    targets = [parse_host_port(peer) for peer in initial_peers] or [DEFAULT_ROUTE_PROBE]
    for target in targets:
        found = route(*target)
        if found and found not in WILDCARD_HOSTS and not _unusable(found, target[0]):
            what = f"the interface that reaches {target[0]}" if initial_peers else "the default route's interface"
            logger.warning("--host %s without --public-host: announcing %s (%s); give --public-host if others "
                           "reach this machine at another address", host, found, what)
            return found
    raise ConfigError(f"--host {host} binds every interface, but no address of this machine to announce was found "
                      f"(no route to the swarm); give --public-host ADDRESS, the address others reach this machine at")


def _unusable(found: str, target: str) -> bool:
    """A loopback source is right only for a loopback peer (a swarm on this machine)."""
    try:
        return ipaddress.ip_address(found).is_loopback and not ipaddress.ip_address(target).is_loopback
    except ValueError:
        return False


def bind_error(exc: OSError, what: str, host: str, port: int, flag: str) -> BindError:
    """An OSError (or zmq.ZMQError) from binding -> a one-line BindError that says what to do."""
    code = getattr(exc, "errno", None)
    reason = os.strerror(code) if isinstance(code, int) else str(exc)  # zmq's strerror repeats the address
    where = f"{host}:{port}" if port else f"{host} (a free port)"
    if code == errno.EADDRINUSE:
        return BindError(f"{what} {where} is already in use ({reason}); stop what holds it or choose another {flag}")
    if code == errno.EADDRNOTAVAIL:
        return BindError(f"cannot listen on {where} for the {what}: {host} is not an address of this machine "
                         f"({reason}); use one of its addresses, or 0.0.0.0 for all")
    return BindError(f"cannot listen on {where} for the {what}: {reason}")


def check_ports_free(host: str, port: int, dht_port: int, metrics_port: Optional[int] = None) -> None:
    """Fail at once, before the model is prepared or the DHT joined, when a fixed port is taken:
    binds each (TCP `port`, UDP `dht_port`, TCP `metrics_port`) and lets go. 0 or None: no check."""
    bind_host = "0.0.0.0" if host in WILDCARD_HOSTS else host
    for number, kind, what, flag in ((port, socket.SOCK_STREAM, "RPC port (TCP)", "--port"),
                                     (dht_port, socket.SOCK_DGRAM, "DHT port (UDP)", "--dht-port"),
                                     (metrics_port, socket.SOCK_STREAM, "metrics port (TCP)", "--metrics-port")):
        if not number:
            continue
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:  # as libzmq binds: a port in TIME_WAIT is free to it
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((bind_host, number))
            except OSError as exc:
                raise bind_error(exc, what, host, number, flag) from None
