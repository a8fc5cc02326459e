"""The swarm health page (like health.petals.dev, for a private swarm): a `SwarmReport` as one
self-contained HTML page and as JSON. Pure: the report and the time come in, text goes out.

Per model: healthy or broken (its gaps in NoRouteError's own words), a coverage bar with one
cell per block, striped in the colours of the servers that serve it (a gap is red, a block only
being loaded amber), one span row per server, and the server table. The page reloads itself
every `refresh_s` seconds (a meta refresh: no script, so it also works where scripts are off).

Every string that came from the network (names, versions, ids) is HTML-escaped here and nowhere
else: a server that names itself `<script>` shows that text.

A field a server's record does not carry is shown as "—" (a server of an older version
announces no `started_at`, so no uptime).
"""
from __future__ import annotations

import hashlib
import html
import math
import time
from typing import Sequence

from zswarm.blocks import format_blocks
from zswarm.inspect.render import fmt_ms, fmt_rate, fmt_uptime, short_id
from zswarm.inspect.views import ModelHealth, ServerRow, SwarmReport, gap_message, to_jsonable

MISSING = "—"  # a field the server's record does not carry


def server_colour(peer_id: str) -> str:
    """A stable colour per server (the same on every refresh and every machine)."""
    hue = int.from_bytes(hashlib.sha256(peer_id.encode()).digest()[:2], "big") % 360
    return f"hsl({hue}, 62%, 48%)"


def block_servers(model: ModelHealth) -> list[list[ServerRow]]:
    """For each block, the servers whose span holds it and that count toward coverage."""
    return [[row for row in model.servers if row.serving and row.start <= block < row.end]
            for block in range(model.num_blocks)]


def uptime_s(row: ServerRow, taken_at: float) -> float | None:
    """Seconds the server had run when the report was taken; None: its record does not say."""
    if not row.started_at or not math.isfinite(row.started_at):
        return None
    return max(0.0, taken_at - row.started_at)


def _uptime_text(seconds: float | None) -> str:
    return MISSING if seconds is None else fmt_uptime(seconds)


# (heading, cell text of a row given the report's time): one list both the HTML table and its tests read.
SERVER_COLUMNS = [
    ("name", lambda r, t: r.public_name or short_id(r.peer_id)),
    ("peer id", lambda r, t: short_id(r.peer_id)),
    ("state", lambda r, t: r.state if r.reachable is not False else f"{r.state}, unreachable"),
    ("version", lambda r, t: r.version or MISSING),
    ("blocks", lambda r, t: format_blocks(r.start, r.end)),
    ("throughput (tok/s)", lambda r, t: fmt_rate(r.throughput)),
    ("precision", lambda r, t: r.dtype or MISSING),
    ("quant", lambda r, t: r.quant or MISSING),
    ("adapters", lambda r, t: ", ".join(r.adapters) or "none"),
    ("cache left (tokens)", lambda r, t: f"{r.cache_tokens_left:,}"),
    ("RTT", lambda r, t: fmt_ms(r.rtt) if r.rtt is not None else MISSING),
    ("uptime", lambda r, t: _uptime_text(uptime_s(r, t))),
]

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 6px} .muted{color:#777}
.status{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-size:12px;margin-left:8px}
.healthy{background:#2e8b57} .broken{background:#c62828}
.bar{display:flex;height:28px;border:1px solid #bbb;background:#fff;margin:6px 0 2px}
.cell{flex:1;display:flex;flex-direction:column;border-right:1px solid #fff;min-width:2px}
.cell:last-child{border-right:0} .cell span{flex:1}
.cell.gap{background:repeating-linear-gradient(45deg,#e53935 0 4px,#ffcdd2 4px 8px)}
.cell.joining{background:#ffb300}
.ruler{display:flex;font-size:10px;color:#777} .ruler span{flex:1}
.spans{margin:4px 0 10px} .span-row{position:relative;height:14px;margin:2px 0;background:#eee}
.span-row i{position:absolute;top:0;bottom:0;border-radius:2px}
.gaps{color:#c62828;margin:4px 0}
table{border-collapse:collapse;background:#fff;margin-top:6px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;white-space:nowrap} th{background:#f0f0f0}
td.num{text-align:right} .swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _bar(model: ModelHealth) -> str:
    cells = []
    for coverage, owners in zip(model.blocks, block_servers(model)):
        block = coverage.block
        if owners:
            names = ", ".join(r.public_name or short_id(r.peer_id) for r in owners)
            stripes = "".join(f'<span style="background:{server_colour(r.peer_id)}"></span>' for r in owners)
            cells.append(f'<div class="cell" data-block="{block}" data-servers="{len(owners)}" '
                         f'title="block {block}: {_e(names)}">{stripes}</div>')
        else:
            kind = "joining" if coverage.joining else "gap"
            what = "being loaded" if coverage.joining else "served by no one"
            cells.append(f'<div class="cell {kind}" data-block="{block}" data-servers="0" '
                         f'title="block {block}: {what}"></div>')
    step = max(1, math.ceil(model.num_blocks / 20))
    ruler = "".join(f"<span>{i if i % step == 0 else ''}</span>" for i in range(model.num_blocks))
    return f'<div class="bar">{"".join(cells)}</div><div class="ruler">{ruler}</div>'


def _spans(model: ModelHealth) -> str:
    rows = []
    width = max(1, model.num_blocks)
    for r in model.servers:
        style = (f"left:{100 * r.start / width:.3f}%;width:{100 * (r.end - r.start) / width:.3f}%;"
                 f"background:{server_colour(r.peer_id)};opacity:{1 if r.serving else 0.35}")
        rows.append(f'<div class="span-row" data-peer="{_e(r.peer_id)}" data-start="{r.start}" data-end="{r.end}" '
                    f'title="{_e(r.public_name or short_id(r.peer_id))}: blocks {format_blocks(r.start, r.end)}">'
                    f'<i style="{style}"></i></div>')
    return f'<div class="spans">{"".join(rows)}</div>'


def _server_table(model: ModelHealth, taken_at: float) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h, _ in SERVER_COLUMNS)
    body = []
    for r in model.servers:
        cells = [f"<td>{_e(text(r, taken_at))}</td>" for _, text in SERVER_COLUMNS]
        cells[0] = (f'<td><span class="swatch" style="background:{server_colour(r.peer_id)}"></span>'
                    f"{_e(SERVER_COLUMNS[0][1](r, taken_at))}</td>")
        body.append(f'<tr data-peer="{_e(r.peer_id)}">{"".join(cells)}</tr>')
    if not body:
        body.append(f'<tr><td colspan="{len(SERVER_COLUMNS)}" class="muted">no servers</td></tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _model_section(model: ModelHealth, served_here: bool, taken_at: float) -> str:
    serving = sum(1 for r in model.servers if r.serving)
    covered = sum(1 for c in model.blocks if c.servers)
    here = ' · <span class="muted">served by this API</span>' if served_here else ""
    gaps = f'<div class="gaps">{_e(gap_message(model.model_id, model.gaps))}</div>' if model.gaps else ""
    return (f'<section data-model="{_e(model.model_id)}" data-status="{model.status}">'
            f'<h2>{_e(model.model_id)}<span class="status {model.status}">{model.status}</span></h2>'
            f'<div class="muted">{covered} of {model.num_blocks} blocks served · {serving} of '
            f'{len(model.servers)} servers serving{here}</div>'
            f"{gaps}{_bar(model)}{_spans(model)}{_server_table(model, taken_at)}</section>")


def render_health_html(report: SwarmReport, *, refresh_s: int = 10, served: Sequence[str] = (),
                       now: float | None = None) -> str:
    """The page. `served`: model ids the serving process answers requests for (zswarm-api)."""
    now = time.time() if now is None else now
    taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.taken_at))
    sections = "".join(_model_section(m, m.model_id in served, report.taken_at) for m in report.models) \
        or '<p class="muted">no model is announced in this swarm</p>'
    healthy = sum(1 for m in report.models if m.healthy)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{int(refresh_s)}">'
            f"<title>zswarm health</title><style>{_STYLE}</style></head><body>"
            f"<h1>zswarm swarm health</h1>"
            f'<div class="muted">{healthy} of {len(report.models)} models healthy · through '
            f'{_e(", ".join(report.initial_peers))} · taken {taken} ({max(0.0, now - report.taken_at):.0f} s ago) · '
            f'reloads every {int(refresh_s)} s · <a href="health.json">JSON</a></div>'
            f"{sections}</body></html>")


def health_json(report: SwarmReport) -> dict:
    """The page's content as data: inspect's JSON of the report, plus each block's serving servers
    (the coloured cells), whether it counts toward coverage, and its uptime in seconds (None:
    its record does not say)."""
    data = to_jsonable(report)
    for model_data, model in zip(data["models"], report.models):
        model_data["block_servers"] = [[r.peer_id for r in owners] for owners in block_servers(model)]
        for row_data, row in zip(model_data["servers"], model.servers):
            row_data["uptime_s"] = uptime_s(row, report.taken_at)
            row_data["serving"] = row.serving
    return data
