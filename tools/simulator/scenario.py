"""Scenarios: a swarm, its model, its network and its clients, read from a JSON data file.

A scenario file (see scenarios/*.json) holds::

    name, description, seed, duration_s
    model:    num_blocks, block_gb (weights of one block as served), hidden_size,
              cache_tokens_per_block (KV budget a server keeps per hosted block), kv_kb_per_token_block
    network:  rtt_s {region: {region: seconds}} (symmetric; missing pairs mirror), client_mbps,
              hop_overhead_s (per call, serialisation and queueing), relay ("client" | "server")
              decode_efficiency (share of peak memory bandwidth a decode step reaches, 0.6),
              block_overhead_ms (kernel launches per block per step, 0.15)
    gpus:     {name: {memory_gb, bandwidth_gbps | block_ms, mbps, load_s_per_block}}
              A decode step of one block at batch 1 reads the block's weights once, so
              block_ms = block_gb / (bandwidth_gbps * decode_efficiency) + block_overhead_ms,
              unless block_ms is given.
    servers:  [{gpu, region, count, join_at_s, join_every_s, blocks?}]   (blocks: override the fit)
    churn:    {mean_uptime_s, mean_downtime_s, from_s}        (optional; every server flips on/off)
              or [{server, leave_at_s, return_at_s?}]           (scripted; server = its index)
    clients:  {count, regions {region: share}, start_at_s, session_tokens, max_length, think_s}
    rebalance_period_s (mean; each check at a random time around it), sample_every_s

Everything is validated on load: a bad file is a ScenarioError that names the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from zswarm.defaults import HOP_OVERHEAD_S

SCENARIO_DIR = Path(__file__).with_name("scenarios")


class ScenarioError(ValueError):
    """A scenario file that cannot be simulated; the message names the field."""


@dataclass
class Gpu:
    name: str
    memory_gb: float
    block_ms: float
    mbps: float = 1000.0
    load_s_per_block: float = 1.0


@dataclass
class ServerSpec:
    name: str
    gpu: Gpu
    region: str
    join_at_s: float
    blocks: int


@dataclass
class ChurnEvent:
    server: int
    leave_at_s: float
    return_at_s: float | None = None


@dataclass
class Scenario:
    name: str
    description: str
    seed: int
    duration_s: float
    num_blocks: int
    block_gb: float
    hidden_size: int
    cache_tokens_per_block: int
    kv_kb_per_token_block: float
    rtt_s: dict[tuple[str, str], float]
    client_mbps: float
    hop_overhead_s: float
    relay: str
    servers: list[ServerSpec]
    churn: list[ChurnEvent] = field(default_factory=list)
    random_churn: dict | None = None
    clients: int = 1
    client_regions: dict[str, float] = field(default_factory=dict)
    clients_start_at_s: float = 0.0
    session_tokens: int = 64
    max_length: int = 2048
    think_s: float = 5.0
    rebalance_period_s: float = 120.0
    sample_every_s: float = 10.0

    def rtt(self, a: str, b: str) -> float:
        return self.rtt_s[(a, b)]


def _get(data: dict, key: str, kind, where: str, default=None, *, positive=False):
    if key not in data:
        if default is None:
            raise ScenarioError(f"{where}: missing '{key}'")
        return default
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ScenarioError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    if kind in (int, float) and (not math.isfinite(value) or value < 0 or (positive and value == 0)):
        raise ScenarioError(f"{where}.{key}: must be {'positive' if positive else 'non-negative'}, got {value!r}")
    return value


def blocks_that_fit(gpu: Gpu, num_blocks: int, block_gb: float, cache_gb_per_block: float) -> int:
    """Blocks a GPU holds: 90% of its memory over (weights + KV budget) per block, at most the model."""
    return max(0, min(num_blocks, int(gpu.memory_gb * 0.9 // (block_gb + cache_gb_per_block))))


def parse_scenario(data: dict) -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError("a scenario is a JSON object")
    name = _get(data, "name", str, "scenario")
    where = f"scenario {name!r}"
    model = _get(data, "model", dict, where)
    num_blocks = _get(model, "num_blocks", int, "model", positive=True)
    if num_blocks > 10_000:
        raise ScenarioError("model.num_blocks: at most 10000")
    block_gb = _get(model, "block_gb", float, "model", positive=True)
    cache_tokens = _get(model, "cache_tokens_per_block", int, "model", 16384, positive=True)
    kv_kb = _get(model, "kv_kb_per_token_block", float, "model", 4.0)
    net = _get(data, "network", dict, where)
    raw_rtt = _get(net, "rtt_s", dict, "network")
    rtt: dict[tuple[str, str], float] = {}
    for a, row in raw_rtt.items():
        if not isinstance(row, dict):
            raise ScenarioError(f"network.rtt_s.{a}: expected an object")
        for b, value in row.items():
            rtt[(a, b)] = _get(row, b, float, f"network.rtt_s.{a}")
    regions = sorted({r for pair in rtt for r in pair})
    for a in regions:
        for b in regions:
            if (a, b) not in rtt:
                if (b, a) not in rtt:
                    raise ScenarioError(f"network.rtt_s: no RTT between {a!r} and {b!r}")
                rtt[(a, b)] = rtt[(b, a)]
    relay = _get(net, "relay", str, "network", "client")
    if relay not in ("client", "server"):
        raise ScenarioError(f"network.relay: 'client' or 'server', got {relay!r}")

    efficiency = _get(model, "decode_efficiency", float, "model", 0.6, positive=True)
    overhead_ms = _get(model, "block_overhead_ms", float, "model", 0.15)
    gpus = {}
    for gname, g in _get(data, "gpus", dict, where).items():
        if not isinstance(g, dict):
            raise ScenarioError(f"gpus.{gname}: expected an object")
        if "block_ms" in g:
            block_ms = _get(g, "block_ms", float, f"gpus.{gname}", positive=True)
        else:
            bandwidth = _get(g, "bandwidth_gbps", float, f"gpus.{gname}", positive=True)
            block_ms = block_gb / (bandwidth * efficiency) * 1000 + overhead_ms
        gpus[gname] = Gpu(gname, _get(g, "memory_gb", float, f"gpus.{gname}", positive=True), block_ms,
                          _get(g, "mbps", float, f"gpus.{gname}", 1000.0, positive=True),
                          _get(g, "load_s_per_block", float, f"gpus.{gname}", 1.0))
    cache_gb_per_block = cache_tokens * kv_kb / 1e6
    servers: list[ServerSpec] = []
    raw_servers = _get(data, "servers", list, where)
    for n, group in enumerate(raw_servers):
        w = f"servers[{n}]"
        if not isinstance(group, dict):
            raise ScenarioError(f"{w}: expected an object")
        gname = _get(group, "gpu", str, w)
        if gname not in gpus:
            raise ScenarioError(f"{w}.gpu: unknown gpu {gname!r}")
        region = _get(group, "region", str, w)
        if region not in regions:
            raise ScenarioError(f"{w}.region: {region!r} has no RTTs in network.rtt_s")
        count = _get(group, "count", int, w, 1, positive=True)
        if count > 1000:
            raise ScenarioError(f"{w}.count: at most 1000")
        join_at = _get(group, "join_at_s", float, w, 0.0)
        every = _get(group, "join_every_s", float, w, 0.0)
        fit = blocks_that_fit(gpus[gname], num_blocks, block_gb, cache_gb_per_block)
        blocks = _get(group, "blocks", int, w, fit, positive=True)
        if blocks < 1:
            raise ScenarioError(f"{w}: a {gname} cannot hold one block of this model")
        for i in range(count):
            servers.append(ServerSpec(f"{region}-{gname}-{len(servers)}", gpus[gname], region,
                                      join_at + i * every, min(blocks, num_blocks)))
    if not servers:
        raise ScenarioError(f"{where}: no servers")

    churn, random_churn = [], None
    raw_churn = data.get("churn")
    if isinstance(raw_churn, dict):
        random_churn = {"mean_uptime_s": _get(raw_churn, "mean_uptime_s", float, "churn", positive=True),
                        "mean_downtime_s": _get(raw_churn, "mean_downtime_s", float, "churn", positive=True),
                        "from_s": _get(raw_churn, "from_s", float, "churn", 0.0)}
    elif isinstance(raw_churn, list):
        for n, ev in enumerate(raw_churn):
            w = f"churn[{n}]"
            if not isinstance(ev, dict):
                raise ScenarioError(f"{w}: expected an object")
            idx = _get(ev, "server", int, w)
            if idx >= len(servers):
                raise ScenarioError(f"{w}.server: no server {idx}")
            ret = ev.get("return_at_s")
            churn.append(ChurnEvent(idx, _get(ev, "leave_at_s", float, w),
                                    None if ret is None else _get(ev, "return_at_s", float, w)))
    elif raw_churn is not None:
        raise ScenarioError("churn: an object (random) or a list (scripted)")

    clients = _get(data, "clients", dict, where)
    client_regions = _get(clients, "regions", dict, "clients")
    for r, share in client_regions.items():
        if r not in regions:
            raise ScenarioError(f"clients.regions: {r!r} has no RTTs in network.rtt_s")
        _get(client_regions, r, float, "clients.regions")
    count = _get(clients, "count", int, "clients", positive=True)
    if count > 10_000:
        raise ScenarioError("clients.count: at most 10000")
    return Scenario(
        name=name, description=data.get("description", ""), seed=_get(data, "seed", int, where, 0),
        duration_s=_get(data, "duration_s", float, where, positive=True), num_blocks=num_blocks,
        block_gb=block_gb, hidden_size=_get(model, "hidden_size", int, "model", positive=True),
        cache_tokens_per_block=cache_tokens, kv_kb_per_token_block=kv_kb, rtt_s=rtt,
        client_mbps=_get(net, "client_mbps", float, "network", 100.0, positive=True),
        hop_overhead_s=_get(net, "hop_overhead_s", float, "network", HOP_OVERHEAD_S), relay=relay, servers=servers,
        churn=churn, random_churn=random_churn, clients=count,
        client_regions={r: float(s) for r, s in client_regions.items()},
        clients_start_at_s=_get(clients, "start_at_s", float, "clients", 0.0),
        session_tokens=_get(clients, "session_tokens", int, "clients", 64, positive=True),
        max_length=_get(clients, "max_length", int, "clients", 2048, positive=True),
        think_s=_get(clients, "think_s", float, "clients", 5.0),
        rebalance_period_s=_get(data, "rebalance_period_s", float, where, 120.0, positive=True),
        sample_every_s=_get(data, "sample_every_s", float, where, 10.0, positive=True),
    )


def load_scenario(name_or_path: str) -> Scenario:
    """A scenario by name (a file in scenarios/) or by path to a JSON file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIO_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ScenarioError(f"no scenario {name_or_path!r} (known: {', '.join(list_scenarios())})")
    if path.stat().st_size > 1_000_000:
        raise ScenarioError(f"{path}: larger than 1 MB, not a scenario")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScenarioError(f"{path}: not valid JSON ({exc})") from None
    return parse_scenario(data)


def list_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.json"))


def reshuffled(sc: Scenario, k: int) -> Scenario:
    """Instance `k` of the same swarm: k = 0 is the file itself; k > 0 draws another seed (check times,
    clients, random churn) and another order in which the same servers join (at the same times).

    One join order is one roll of the dice: which server came first decides much of a greedy
    placement, so a strategy is judged on several instances, not on the one the file happens to list.
    """
    if k == 0:
        return sc
    import copy
    import random

    out = copy.deepcopy(sc)
    out.seed = sc.seed + 1000 * k
    times = [s.join_at_s for s in out.servers]
    random.Random(out.seed).shuffle(times)
    for spec, t in zip(out.servers, times):
        spec.join_at_s = t
    return out
