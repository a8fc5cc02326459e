"""zswarm-api: an OpenAI-compatible HTTP server in front of a swarm, with its health page.

    zswarm-api --model MODEL --initial-peers HOST:PORT [--port 8000]
    curl localhost:8000/v1/chat/completions -d '{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}]}'
    open http://localhost:8000/health       # coverage, servers; /health.json for the same as JSON

Every flag is an ApiConfig field (zswarm/api/config.py); --wire-dtype and the other client
settings are ClientConfig's. Exit status: 0 stopped; 2 bad arguments or the swarm/model cannot be used.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import socket
import sys
from typing import Sequence

from zswarm.api.config import ApiConfig
from zswarm.field_help import field_help

EXIT_OK, EXIT_UNUSABLE = 0, 2
_CLIENT_FLAGS = {"wire_dtype": str, "step_timeout": float, "request_timeout": float, "max_retries": int}


def _peers(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def build_parser() -> argparse.ArgumentParser:
    helps = field_help(ApiConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(ApiConfig)}

    def described(name: str) -> str:
        default = defaults.get(name)
        text = helps.get(name, "").replace("%", "%%")
        return f"{text} (default: {default})" if default not in (None, "", ()) and not callable(default) else text

    parser = argparse.ArgumentParser(prog="zswarm-api", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], argument_default=argparse.SUPPRESS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", dest="models", action="append", required=True, metavar="MODEL",
                        help=described("models") + "; repeatable")
    parser.add_argument("--initial-peers", dest="initial_peers", action="extend", type=_peers, required=True,
                        metavar="HOST:PORT[,HOST:PORT]", help=described("initial_peers"))
    for name, kind in [("host", str), ("port", int), ("default_max_tokens", int), ("max_n", int),
                       ("max_concurrent", int), ("report_cache_s", float), ("health_refresh_s", int),
                       ("ready_file", str)]:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=described(name))
    client = parser.add_argument_group("client settings (ClientConfig fields; their defaults are its own)")
    for name, kind in _CLIENT_FLAGS.items():
        client.add_argument("--" + name.replace("_", "-"), dest=f"client.{name}", type=kind, metavar=name.upper())
    parser.add_argument("--log-level", type=str.upper, default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def parse_config(argv: Sequence[str] | None = None) -> tuple[ApiConfig, str]:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    level = args.pop("log_level")
    client = {k.split(".", 1)[1]: args.pop(k) for k in list(args) if k.startswith("client.")}
    try:
        config = ApiConfig(**args, client=client)
        if client:
            from zswarm.client.config import ClientConfig  # checks the values (light: no torch)

            ClientConfig(**client)
    except ValueError as exc:
        parser.error(str(exc))
    return config, level


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the slow start so a taken port fails at once, and so that
    port 0 gives a port we know."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def write_ready_file(path: str, url: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as out:
        json.dump({"url": url, "pid": os.getpid()}, out)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    config, level = parse_config(argv)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("kademlia", "httpx"):  # a contact that left, each request of a refresh: routine here
        logging.getLogger(noisy).setLevel(logging.ERROR if level != "DEBUG" else logging.DEBUG)
    try:
        sock = listen(config.host, config.port)
    except OSError as exc:
        print(f"zswarm-api: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE

    import uvicorn

    from zswarm.api.app import create_app
    from zswarm.api.reports import SwarmReports
    from zswarm.api.served import ServedModels
    from zswarm.errors import ZswarmError

    try:
        served = ServedModels.load(config.models, config.initial_peers, config.client)
    except (ZswarmError, OSError, ValueError) as exc:
        print(f"zswarm-api: cannot serve {', '.join(config.models)}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    reports = SwarmReports(config.initial_peers, max_age_s=config.report_cache_s)
    try:
        app = create_app(config, served, reports)
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        logging.getLogger(__name__).info("zswarm-api serving %s on %s (health page: %s/health)",
                                         ", ".join(served.by_id), url, url)
        if config.ready_file:
            # uvicorn serves this socket once run() starts; connections made before wait in its backlog
            write_ready_file(config.ready_file, url)
        server.run(sockets=[sock])
    finally:
        reports.close()
        served.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
