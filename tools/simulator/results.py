"""What a run reports: time per token, throughput, coverage; and the comparison of strategies."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from .engine import Simulation
from .scenario import Scenario


@dataclass
class RunResult:
    scenario: str
    strategy: str
    relay: str
    tokens: int  # decode steps measured (from the clients' start on)
    mean_ms: float  # time per token, ms
    p50_ms: float
    p95_ms: float
    served_tps: float  # tokens/s all clients got, on average over the measured window
    capacity_tps: float  # the swarm's min per-block throughput (Petals' measure), time-averaged
    coverage: float  # share of blocks served by an ONLINE server, time-averaged
    min_coverage: float
    mean_hops: float  # spans per route at session open
    moves: int  # rebalancing moves
    reroutes: int  # failovers inside sessions
    open_waits: int  # session opens that found no route or no cache room and waited
    wall_s: float
    timeline: list = field(default_factory=list)  # [t, coverage, capacity, servers online]

    def row(self) -> dict:
        d = asdict(self)
        d.pop("timeline")
        return d


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def run(scenario: Scenario, strategy: str, *, relay: str | None = None, **latency_knobs) -> RunResult:
    """Simulate `scenario` under `strategy`; `latency_knobs` override LatencyModel fields (slack, ...)."""
    t0 = time.perf_counter()
    sim = Simulation(scenario, strategy, relay=relay, **latency_knobs).run()
    wall = time.perf_counter() - t0
    times = sorted(sim.token_times)
    window = [s for s in sim.samples if s[0] >= scenario.clients_start_at_s] or sim.samples
    measured = max(scenario.duration_s - scenario.clients_start_at_s, 1e-9)
    return RunResult(
        scenario=scenario.name, strategy=strategy, relay=sim.relay, tokens=len(times),
        mean_ms=1000 * sum(times) / len(times) if times else float("nan"),
        p50_ms=1000 * _percentile(times, 0.5), p95_ms=1000 * _percentile(times, 0.95),
        served_tps=len(times) / measured,
        capacity_tps=sum(s[2] for s in window) / len(window),
        coverage=sum(s[1] for s in window) / len(window), min_coverage=min(s[1] for s in window),
        mean_hops=sum(sim.route_hops) / len(sim.route_hops) if sim.route_hops else float("nan"),
        moves=sim.moves, reroutes=sim.reroutes, open_waits=sim.open_waits, wall_s=wall,
        timeline=[[round(t, 3), round(c, 4), round(cap, 3), n] for t, c, cap, n in sim.samples])


@dataclass
class Comparison:
    """`latency` against `petals` on one scenario, and whether it meets the bar."""

    scenario: str
    latency_speedup: float  # petals mean time per token / latency's
    served_ratio: float  # latency / petals
    capacity_ratio: float
    coverage_ratio: float

    def meets_bar(self, min_speedup: float = 1.0, tolerance: float = 0.05) -> bool:
        return (self.latency_speedup >= min_speedup and self.served_ratio >= 1 - tolerance
                and self.capacity_ratio >= 1 - tolerance and self.coverage_ratio >= 1 - tolerance)


def compare(ours: RunResult, theirs: RunResult) -> Comparison:
    def ratio(a, b):
        return a / b if b else (1.0 if a == b else float("inf"))

    return Comparison(ours.scenario, ratio(theirs.mean_ms, ours.mean_ms), ratio(ours.served_tps, theirs.served_tps),
                      ratio(ours.capacity_tps, theirs.capacity_tps), ratio(ours.coverage, theirs.coverage))
