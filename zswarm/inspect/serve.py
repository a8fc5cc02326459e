"""`zswarm-inspect serve`: the swarm health page over HTTP without a model or the API, for an
operator's status page (like health.petals.dev for a private swarm).

    GET /health        the page (it reloads itself)
    GET /health.json   the same facts as data
    GET /              redirects to /health

Python's own threaded HTTP server: one page and one JSON document, for a handful of browsers
behind one cached look at the swarm, need no web framework (zswarm-api has one for its API).
"""
from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from zswarm.errors import InspectError, SwarmUnreachable
from zswarm.inspect.cached import CachedReports
from zswarm.inspect.health_page import health_json, render_health_html

logger = logging.getLogger("zswarm.inspect.serve")


def make_handler(reports: CachedReports, refresh_s: int) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        server_version = "zswarm-inspect"

        def do_GET(self):  # noqa: N802 (the name http.server calls)
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(302, "text/plain; charset=utf-8", b"see /health\n", location="/health")
                return
            pages: dict[str, Callable] = {
                "/health": lambda r: ("text/html; charset=utf-8", render_health_html(r, refresh_s=refresh_s)),
                "/health.json": lambda r: ("application/json", json.dumps(health_json(r), sort_keys=True)),
            }
            page = pages.get(path)
            if page is None:
                self._send(404, "text/plain; charset=utf-8", b"not found: this server has /health and /health.json\n")
                return
            try:
                kind, body = page(reports.latest())
            except (SwarmUnreachable, InspectError) as exc:
                self._send(503, "text/plain; charset=utf-8", f"cannot read the swarm: {exc}\n".encode())
                return
            self._send(200, kind, body.encode())

        def _send(self, status: int, kind: str, body: bytes, location: str | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if location:
                self.send_header("Location", location)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # one line per request, in our log, not on raw stderr
            logger.info("%s %s", self.address_string(), format % args)

    return HealthHandler


def serve_health(reports: CachedReports, host: str, port: int, refresh_s: int,
                 on_listening: Callable[[str], None]) -> None:
    """Serve until interrupted; `on_listening(url)` once the socket is bound (port 0: a free one)."""
    httpd = ThreadingHTTPServer((host, port), make_handler(reports, refresh_s))
    httpd.daemon_threads = True  # a browser that keeps its connection open does not hold up the exit
    try:
        bound_host, bound_port = httpd.server_address[:2]
        on_listening(f"http://{bound_host}:{bound_port}/health")
        httpd.serve_forever()
    finally:
        httpd.server_close()
