"""zswarm-inspect: look at a swarm from any machine that can reach one of its DHT nodes.

    zswarm-inspect --initial-peers HOST:PORT                 # every model: health, coverage, servers
    zswarm-inspect --initial-peers HOST:PORT route MODEL     # the route a client here would take now
    zswarm-inspect server HOST:PORT                          # one server's info and ping (no DHT)
    zswarm-inspect --initial-peers HOST:PORT raw KEY         # a DHT key's entries, decoded and checked
    zswarm-inspect reports PATH                              # lying servers a client reported (no DHT)
    zswarm-inspect --initial-peers HOST:PORT serve --port 8090   # the health page over HTTP

Add --json for one JSON document per refresh, --watch SECONDS [--count N] to refresh.
Exit status (one convention for every zswarm command): 0 shown; 1 what was asked for is not
there (a server that does not answer, no route, a model no server announces, a key with no
entries); 2 cannot ask (bad arguments, swarm unreachable).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Callable, Sequence

from zswarm.cli_logging import setup_logging
from zswarm.defaults import HEALTH_REFRESH_S, REPORT_CACHE_S
from zswarm.errors import InspectError, SwarmUnreachable
from zswarm.inspect.render import render_raw, render_reports, render_route, render_server, render_swarm
from zswarm.reports import read_reports
from zswarm.inspect.views import to_jsonable

if TYPE_CHECKING:  # fetch.py imports torch (through wire's transport): only once arguments are parsed
    from zswarm.inspect.fetch import Inspector

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2
SERVE_PORT = 8090  # `serve`'s default: beside zswarm-api's 8000, not on it
CLEAR_SCREEN = "\x1b[H\x1b[2J"


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _peers(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--initial-peers", action="extend", type=_peers, metavar="HOST:PORT[,HOST:PORT]",
                        help="DHT address of any node of the swarm (a bootstrap node or a server); repeatable")
    parser.add_argument("--json", action="store_true", help="print JSON (one document per line with --watch)")
    parser.add_argument("--watch", type=_positive(float), metavar="SECONDS", help="refresh every SECONDS")
    parser.add_argument("--count", type=_positive(int), metavar="N", help="with --watch: stop after N refreshes")
    parser.add_argument("--ping-timeout", type=_positive(float), metavar="S", help="seconds to wait for a ping (2)")
    parser.add_argument("--timeout", type=_positive(float), metavar="S", help="seconds to wait for a server's info (5)")
    parser.add_argument("--host", help="interface our DHT node binds (default: loopback for loopback peers, else all)")
    parser.add_argument("--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--no-ping", action="store_true",
                        help="swarm view: trust the records, do not ping servers (no RTT; unreachable servers still count)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zswarm-inspect", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser)
    sub = parser.add_subparsers(dest="view", metavar="VIEW", title="views (default: swarm)")
    # Options may come before or after the view's name: the sub-parsers know them too, but with
    # no defaults of their own, so they never overwrite a value given before the name.
    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text, argument_default=argparse.SUPPRESS)
        _common(p)
        return p

    swarm = add("swarm", "every model: health, per-block coverage and the servers (the default view)")
    swarm.add_argument("--model", help="only this model")
    server = add("server", "info and ping of one server, by its RPC address (no DHT needed)")
    server.add_argument("address", help="host:port or tcp://host:port, with #curve=KEY for a CURVE server (as the server "
                        "logs it at start-up and `route --json` shows it)")
    route = add("route", "the inference route a client here would take now, and its cost per token")
    route.add_argument("model", help="model id as servers announce it")
    route.add_argument("--max-length", type=int, help="session length in tokens to check cache room for (0)")
    raw = add("raw", "the entries of one DHT key, decoded, with expiry and signature status")
    raw.add_argument("key", help='a DHT key: "models", "MODEL/block/N", or a full key like zswarm/v1/MODEL/block/N')
    reports = add("reports", "the servers a client found lying: its report file (ClientConfig.report_path)")
    reports.add_argument("path", help="the report file, one JSON report a line")
    serve = add("serve", "the swarm health page over HTTP (/health, /health.json) until interrupted")
    serve.add_argument("--listen", metavar="HOST", help="interface the page listens on (127.0.0.1; 0.0.0.0: every one)")
    serve.add_argument("--port", type=int, metavar="PORT", help="TCP port of the page (8090; 0: a free one, logged)")
    serve.add_argument("--refresh", type=_positive(int), metavar="S",
                       help=f"the page reloads itself every S seconds ({HEALTH_REFRESH_S})")
    serve.add_argument("--report-cache", type=_non_negative, metavar="S",
                       help=f"seconds one look at the swarm is reused for every browser ({REPORT_CACHE_S:g})")
    return parser


def make_view(args, inspector: "Inspector") -> tuple[Callable[[], object], Callable[[object], str], Callable[[object], int]]:
    """(fetch, render, exit status) for the chosen view."""
    view = args.view or "swarm"
    if view == "swarm":
        ping = not getattr(args, "no_ping", False)
        return (lambda: inspector.swarm(getattr(args, "model", None), ping=ping), render_swarm, lambda v: EXIT_OK)
    if view == "server":
        return (lambda: inspector.server(args.address), render_server, lambda v: EXIT_OK)
    if view == "route":
        max_length = getattr(args, "max_length", None) or 0
        return (lambda: inspector.route(args.model, max_length=max_length), render_route,
                lambda v: EXIT_OK if v.seconds_per_token is not None else EXIT_FAILED)
    from zswarm.inspect.fetch import expand_key

    key = expand_key(args.key)
    return (lambda: inspector.raw(key), lambda v: render_raw(v, time.time()),
            lambda v: EXIT_OK if v.entries else EXIT_FAILED)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.count and not args.watch:
        parser.error("--count needs --watch")
    return args


def run(args: argparse.Namespace, inspector: "Inspector") -> int:
    """Show the chosen view (refreshing with --watch) through `inspector`; returns the exit status."""
    try:
        fetch, render, judge = make_view(args, inspector)
        shown = 0
        while True:
            view = fetch()
            status = judge(view)
            if args.json:
                data = view if isinstance(view, dict) else to_jsonable(view)
                print(json.dumps(data, indent=None if args.watch else 2, sort_keys=True), flush=True)
            else:
                if args.watch and sys.stdout.isatty():
                    sys.stdout.write(CLEAR_SCREEN)
                sys.stdout.write(render(view))
                sys.stdout.flush()
            shown += 1
            if not args.watch or (args.count and shown >= args.count):
                return status
            if not args.json and not sys.stdout.isatty():
                print(flush=True)  # a blank line between refreshes when piped
            time.sleep(args.watch)
    except SwarmUnreachable as exc:
        print(f"zswarm-inspect: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except InspectError as exc:
        print(f"zswarm-inspect: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `zswarm-inspect ... | head`
        return EXIT_OK


def show_reports(args) -> int:
    """The reports view: a local file, read without joining any swarm."""
    try:
        reports, skipped = read_reports(args.path)
    except OSError as exc:
        print(f"zswarm-inspect: cannot read reports: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"reports": [dataclasses.asdict(r) for r in reports], "skipped_lines": skipped},
                         indent=2, sort_keys=True))
    else:
        sys.stdout.write(render_reports(reports, skipped))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.view == "reports":
        return show_reports(args)
    level = getattr(args, "log_level", None) or "WARNING"
    setup_logging(level)
    if level != "DEBUG":  # kademlia warns about every server that left; that is routine here
        logging.getLogger("kademlia").setLevel(logging.ERROR)
    if (args.view or "swarm") != "server" and not args.initial_peers:
        print("zswarm-inspect: this view reads the DHT: give --initial-peers HOST:PORT of a bootstrap node or server",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    from zswarm.inspect.fetch import Inspector

    try:
        inspector = Inspector(args.initial_peers or (), host=args.host, ping_timeout=args.ping_timeout or 2.0,
                              info_timeout=args.timeout or 5.0, ping_servers=not getattr(args, "no_ping", False))
    except InspectError as exc:
        print(f"zswarm-inspect: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        if args.view == "serve":
            return serve(args, inspector)
        return run(args, inspector)
    finally:
        inspector.close()


def serve(args, inspector: "Inspector") -> int:
    from zswarm.inspect.cached import CachedReports
    from zswarm.inspect.serve import serve_health

    port = getattr(args, "port", None)
    port = SERVE_PORT if port is None else port
    if not 0 <= port <= 65535:
        print(f"zswarm-inspect: --port must be in 0..65535, got {port}", file=sys.stderr)
        return EXIT_UNREACHABLE
    max_age_s = getattr(args, "report_cache", None)
    reports = CachedReports(inspector, max_age_s=REPORT_CACHE_S if max_age_s is None else max_age_s)
    try:
        serve_health(reports, getattr(args, "listen", None) or "127.0.0.1", port,
                     getattr(args, "refresh", None) or HEALTH_REFRESH_S,
                     lambda url: print(f"zswarm-inspect: serving the health page at {url}", file=sys.stderr, flush=True))
    except OSError as exc:  # the port is taken, or the interface is not ours
        print(f"zswarm-inspect: cannot listen on port {port}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        pass
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
