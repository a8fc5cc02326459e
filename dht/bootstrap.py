"""zswarm-bootstrap: a standalone DHT node with a stable address, for starting a private swarm.

    zswarm-bootstrap --host 0.0.0.0 --port 31337 [--identity ~/.zswarm/bootstrap.pem] [--peer H:P ...]

Prints the address others give as --initial-peers on stdout (with --host 0.0.0.0: the address of
the interface that routes to --peer, or to the default route; --public-host overrides it), serves
until SIGINT or SIGTERM, then exits 0; exits 2 when it cannot start.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading

from dht.errors import DHTError
from dht.identity import Identity
from dht.node import DHTNode, parse_address


def _peer(text: str) -> str:
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {text!r}")
    return int(text)


WILDCARD_HOSTS = ("0.0.0.0", "::", "")
DEFAULT_ROUTE_PROBE = ("10.255.255.255", 1)  # any address off this machine; a UDP connect sends nothing


def reachable_host(host: str, peers: list[str]) -> str:
    """The host part of the address to print: `host`, or for a wildcard the local address that
    routes to the first peer (or the default route); loopback when there is no route at all."""
    if host not in WILDCARD_HOSTS:
        return host
    target = parse_address(peers[0]) if peers else DEFAULT_ROUTE_PROBE
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(target)
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zswarm-bootstrap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=_port, default=31337, help="UDP port (default 31337; 0 picks one)")
    parser.add_argument("--identity", help="ed25519 key file, created when absent (default: a fresh key)")
    parser.add_argument("--peer", action="append", default=[], type=_peer,
                        help="another bootstrap node host:port to join (repeatable)")
    parser.add_argument("--public-host", help="the address to print for others to join through (default: see above)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # kademlia logs every RPC reply at INFO
        logging.getLogger("kademlia").setLevel(logging.WARNING)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        identity = Identity.load_or_create(args.identity) if args.identity else Identity.generate()
        node = DHTNode(args.host, args.port, args.peer, identity).start()
    except (DHTError, OSError) as exc:
        print(f"zswarm-bootstrap: {exc}", file=sys.stderr)
        return 2
    try:
        port = node.address.rsplit(":", 1)[1]
        host = args.public_host or reachable_host(args.host, args.peer)
        print(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        node.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
