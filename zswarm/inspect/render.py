"""Text for zswarm-inspect's views: pure functions from views.py's data to a string.

Times are passed in (`now`), never read here, so a rendering is a function of its arguments.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

from zswarm.blocks import format_blocks
from zswarm.inspect.views import ModelHealth, RawView, RouteView, SwarmReport, coverage_runs, gap_message

PEER_ID_CHARS = 12  # of 32: enough to tell servers apart in a table; --json has the full id


def printable(text) -> str:
    """Text from the network as it may reach a terminal: control characters (escape sequences a
    hostile server could put in its name or version) become '?'."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def short_id(peer_id: str | None) -> str:
    return "-" if not peer_id else peer_id[:PEER_ID_CHARS]


def fmt_ms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    return f"{seconds * 1000:.1f} ms"


def fmt_rate(x: float) -> str:
    return f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[bool] | None = None,
          indent: str = "  ") -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned where `right` says so."""
    right = right or [False] * len(headers)
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return (indent + "  ".join(parts)).rstrip()

    return [line(headers)] + [line(r) for r in rows]


def coverage_strip(model: ModelHealth) -> str:
    """One character per block: the number of serving servers ('.' none, '+' ten or more)."""
    return "".join("." if c.servers == 0 else str(c.servers) if c.servers < 10 else "+" for c in model.blocks)


def _ruler(num_blocks: int) -> str:
    """Block numbers every 10 blocks, aligned above the strip."""
    out = ""
    for i in range(0, num_blocks, 10):
        label = str(i)
        out = out.ljust(i) + label
    return out


def render_model(model: ModelHealth) -> list[str]:
    servers = len(model.servers)
    head = f"{model.model_id}  {model.num_blocks} blocks, {servers} server{'s' if servers != 1 else ''}  "
    lines = [printable(head + ("healthy" if model.healthy else "BROKEN: " + gap_message(model.model_id, model.gaps)))]
    if model.num_blocks:
        pad = "  coverage  "
        lines.append(" " * len(pad) + _ruler(model.num_blocks))
        lines.append(pad + coverage_strip(model))
        rows = []
        for start, end, count, throughput in coverage_runs(model.blocks):
            joining = sum(c.joining for c in model.blocks[start:end] if c.servers == 0)
            note = "" if count else ("served by no one" + (" (a server is joining)" if joining else ""))
            rows.append([format_blocks(start, end), str(count), fmt_rate(throughput) if count else "-", note])
        lines += table(["blocks", "servers", "tokens/s", ""], rows, right=[False, True, True, False])
    if model.servers:
        rows = []
        now = time.time()
        for s in model.servers:
            state = s.state if s.reachable is not False else f"{s.state}, no answer"
            precision = s.dtype + (f" {s.quant}" if s.quant not in ("", "none") else "")
            rows.append([short_id(s.peer_id), s.public_name or "-", s.address, format_blocks(s.start, s.end), state,
                         fmt_rate(s.throughput), str(s.cache_tokens_left), precision, ", ".join(s.adapters) or "-",
                         s.version or "-", fmt_uptime(now - s.started_at) if s.started_at else "-", fmt_ms(s.rtt)])
        lines.append("")
        lines += table(["peer id", "name", "address", "blocks", "state", "tokens/s", "cache left", "precision",
                        "adapters", "version", "uptime", "rtt"], rows,
                       right=[False, False, False, False, False, True, True, False, False, False, True, True])
    return lines


def render_swarm(view: SwarmReport) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(view.taken_at))
    n = len(view.models)
    lines = [f"swarm via {printable(', '.join(view.initial_peers))} at {when}: {n} model{'s' if n != 1 else ''}"]
    if not view.models:
        lines.append("  no server announces any model (yet)")
    for model in view.models:
        lines.append("")
        lines += render_model(model)
    return "\n".join(lines) + "\n"


def render_server(report: dict) -> str:
    info = dict(report["info"])
    model = info.pop("model_id", "?")
    start, end, num_blocks = info.pop("start", "?"), info.pop("end", "?"), info.pop("num_blocks", "?")
    load = info.pop("load", None)
    rows = [("serves", f"{model} blocks {format_blocks(start, end)} of {num_blocks}"),
            ("ping", f"{report['pings_answered']}/{report['pings_sent']} answered, rtt min {fmt_ms(report['rtt_min'])}, "
                     f"median {fmt_ms(report['rtt_median'])}")]
    rows += [(str(key), _scalar(info[key])) for key in sorted(info, key=str)]
    if isinstance(load, dict):
        rows.append(("load", ", ".join(f"{k}={_scalar(v)}" for k, v in sorted(load.items()))))
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"server {report['address']}"] + [printable(f"  {k:<{width}}  {v}") for k, v in rows]) + "\n"


def _scalar(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) or "-"
    return str(v)


def render_route(view: RouteView) -> str:
    head = f"route for {view.model_id} ({view.num_blocks} blocks), as a client here would take it now"
    if view.max_length:
        head += f" for a {view.max_length}-token session"
    lines = [printable(head + ":")]
    if view.seconds_per_token is None:
        lines.append(printable(f"  no route: {gap_message(view.model_id, view.gaps)}"))
        return "\n".join(lines) + "\n"
    rows = [[str(i + 1), format_blocks(h.start, h.end), short_id(h.peer_id), h.address, fmt_ms(h.rtt), fmt_ms(h.compute)]
            for i, h in enumerate(view.hops)]
    lines += table(["#", "blocks", "peer id", "address", "rtt", "compute/token"], rows,
                   right=[True, False, False, False, True, True])
    lines.append(f"  estimated {fmt_ms(view.seconds_per_token)} per token "
                 f"({1 / view.seconds_per_token:.1f} tokens/s) over {len(view.hops)} hop{'s' if len(view.hops) != 1 else ''}")
    return "\n".join(lines) + "\n"


def fmt_uptime(seconds: float) -> str:
    """A duration as its two largest units: 45s, 12m30s, 3h05m, 2d04h."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def render_raw(view: RawView, now: float) -> str:
    if not view.entries:
        return (f"key {printable(view.key)}  (kademlia id {view.digest}): no entries. Keys look like \"models\" or "
                f"\"MODEL/block/N\" (see zswarm-inspect raw --help)\n")
    lines = [f"key {printable(view.key)}  (kademlia id {view.digest}): {len(view.entries)} entr{'y' if len(view.entries) == 1 else 'ies'}"]
    if not view.checked:
        lines.append("  (only entries the DHT node verified are shown)")
    for e in view.entries:
        expires = "-" if e.expiration_time is None else _relative(e.expiration_time - now)
        signed = "-" if e.signed_at is None else _relative(e.signed_at - now)
        lines.append("")
        lines.append(printable(f"  {e.peer_id or '?'}  {e.status}  {e.kind}  signed {signed}  expires {expires}"
                     + (f"  held by {e.holders} nodes" if e.holders > 1 else "")))
        lines += [printable(f"    {line}") for line in _describe_value(e.value)]
    return "\n".join(lines) + "\n"


def _relative(delta: float) -> str:
    return f"in {delta:.0f} s" if delta >= 0 else f"{-delta:.0f} s ago"


def _describe_value(value) -> list[str]:
    if isinstance(value, dict):
        return [f"{k}: {_scalar(v) if not isinstance(v, dict) else v}" for k, v in value.items()]
    return [str(value)]


def render_reports(reports, skipped: int = 0) -> str:
    """Reports of lying servers (zswarm.client.verification.LieReport), oldest first."""
    if not reports:
        lines = ["no reports"]
    else:
        lines = [f"{'time (UTC)':<20} {'server':<20} {'model':<24} {'blocks':<8} {'verdict':<12} {'position':>8} "
                 f"{'rel. error':>10} {'tolerance':>9}  witnesses / detail"]
        for r in reports:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.time))
            blocks = format_blocks(r.start, r.end) if r.start >= 0 else "?"
            position = str(r.position) if r.position >= 0 else "-"
            lines.append(printable(f"{when:<20} {r.peer_id[:20]:<20} {r.model_id[:24]:<24} {blocks:<8} {r.verdict:<12} "
                                   f"{position:>8} {r.relative_error:>10.3g} {r.tolerance:>9.3g}  "
                                   f"{', '.join(w[:12] for w in r.witnesses) or '-'}: {r.detail}"))
    if skipped:
        lines.append(f"({skipped} lines of the file are not reports and were skipped)")
    return "\n".join(lines) + "\n"
