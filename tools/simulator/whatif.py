"""What drives the least time per token: the same swarm with one assumption changed at a time.

The bar (2x lower time per token than Petals' rule) asks whether any placement could do it;
`bound.py` answers for a scenario as modelled. These variants show which assumption holds the
bound where it is. They are sensitivity checks, not scenarios to judge strategies on: each moves
the swarm away from the Petals-like public swarm the bar is about.

Each variant edits the scenario's JSON before it is parsed, so what follows from it (how many
blocks fit a card, its decode time) is recomputed the way a scenario file would be.
"""

from __future__ import annotations

import copy
import json

from .scenario import SCENARIO_DIR, Scenario, parse_scenario


def _same_region_rtt(data: dict, rtt: float) -> None:
    for a, row in data["network"]["rtt_s"].items():
        if a in row:
            row[a] = rtt


def _far_clients(data: dict, rtt: float) -> None:
    for row in data["network"]["rtt_s"].values():
        row["elsewhere"] = rtt
    data["network"]["rtt_s"]["elsewhere"] = {"elsewhere": 0.03}
    data["clients"]["regions"] = {"elsewhere": 1}


def _memory(data: dict, factor: float) -> None:
    for gpu in data["gpus"].values():
        gpu["memory_gb"] *= factor


def _set(section: str, key: str, value):
    def edit(data: dict) -> None:
        data[section][key] = value
    return edit


VARIANTS = {
    "as-modelled": ("the scenario file as it is", lambda d: None),
    "server-relay": ("servers pass hidden states to each other (Petals' push): a hand-over costs half a "
                     "server-to-server RTT, not a client round trip", _set("network", "relay", "server")),
    "no-call-overhead": ("no per-call overhead (8 ms -> 0)", _set("network", "hop_overhead_s", 0.0)),
    "lan-regions": ("5 ms RTT inside a region instead of 30 ms", lambda d: _same_region_rtt(d, 0.005)),
    "half-kv": ("half the KV reserve (8192 tokens per block, 4 sessions of 2048): a 24 GB card holds 40 "
                "blocks, not 38, so two cover the model", _set("model", "cache_tokens_per_block", 8192)),
    "double-memory": ("every card has twice the memory: a 24 GB card becomes 48 GB (76 blocks)",
                      lambda d: _memory(d, 2.0)),
    "far-clients": ("all clients 150 ms from every server (another continent)", lambda d: _far_clients(d, 0.15)),
}


def variant(name: str, edit_name: str) -> Scenario:
    """Scenario `name` (a file in scenarios/) with the edit `edit_name` of VARIANTS applied."""
    data = json.loads((SCENARIO_DIR / f"{name}.json").read_text())
    data = copy.deepcopy(data)
    VARIANTS[edit_name][1](data)
    return parse_scenario(data)
