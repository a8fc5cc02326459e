#!/usr/bin/env python3
"""Simulate swarms under the `latency` and `petals` placement strategies and compare them.

    python tools/simulate.py                          # every scenario, both strategies
    python tools/simulate.py -s public-swarm -s lan-cluster --json out.json
    python tools/simulate.py --instances 6            # also 5 more join orders and seeds per scenario
    python tools/simulate.py --what-if public-swarm   # the bound with one assumption changed at a time
    python tools/simulate.py --list

Scenarios are JSON files in tools/simulator/scenarios/ (or any path). The simulator runs the
same zswarm.placement and zswarm.routing functions as the server and client; see
tools/simulator/engine.py for what it models. Deterministic: the same inputs give the same table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator import ScenarioError, compare, list_scenarios, load_scenario, run  # noqa: E402
from simulator.bound import client_weighted_bound, least_time_breakdown  # noqa: E402
from simulator.scenario import reshuffled  # noqa: E402
from simulator.whatif import VARIANTS, variant  # noqa: E402

from zswarm.defaults import STRATEGIES as _STRATEGIES  # noqa: E402

STRATEGIES = tuple(sorted(_STRATEGIES, key=lambda s: s != "petals"))  # the baseline first


def _fmt(value, digits=1):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _table(headers, rows) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("-s", "--scenario", action="append", metavar="NAME|PATH",
                    help="scenario to run (repeatable; default: all in tools/simulator/scenarios)")
    ap.add_argument("--strategy", action="append", choices=STRATEGIES,
                    help="strategy to run (repeatable; default: both)")
    ap.add_argument("--relay", choices=("client", "server"), default=None,
                    help="who carries hidden states between spans (default: the scenario's, 'client' in all of ours)")
    ap.add_argument("--throughput-slack", type=float, default=None,
                    help="latency strategy: share of the swarm's minimum block throughput it may give up for "
                         "latency (default: zswarm.placement.LatencyModel's)")
    ap.add_argument("--blind", action="store_true",
                    help="placement sees no region labels, only the RTTs the deciding server measured to the others "
                         "(what a real server can know); clients and routing are unchanged")
    ap.add_argument("--instances", type=int, default=1, metavar="N",
                    help="also run N-1 more instances of each scenario (other seeds and join orders) and print "
                         "the spread of the comparison (default 1: the file only)")
    ap.add_argument("--what-if", metavar="NAME",
                    help="instead: run scenario NAME with one assumption changed at a time (tools/simulator/whatif.py)")
    ap.add_argument("--json", metavar="PATH", help="also write every result (with coverage timelines) as JSON")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = ap.parse_args(argv)

    if args.list:
        for name in list_scenarios():
            print(f"{name:24s} {load_scenario(name).description}")
        return 0
    if args.throughput_slack is not None and not (0.0 <= args.throughput_slack <= 1.0):
        ap.error("--throughput-slack must be between 0 and 1")
    if not 1 <= args.instances <= 50:
        ap.error("--instances must be between 1 and 50")
    knobs = {} if args.throughput_slack is None else {"throughput_slack": args.throughput_slack}
    if args.blind:
        knobs["regions_known"] = False
    if args.what_if:
        return _what_if(args.what_if, args.relay, knobs, args.json, argv)
    strategies = args.strategy or list(STRATEGIES)
    try:
        scenarios = [load_scenario(s) for s in (args.scenario or list_scenarios())]
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    results, comparisons, bounds, instances = [], [], {}, {}
    for sc in scenarios:
        by_strategy = {}
        for strategy in strategies:
            r = run(sc, strategy, relay=args.relay, **(knobs if strategy == "latency" else {}))
            by_strategy[strategy] = r
            results.append(r)
        bounds[sc.name] = client_weighted_bound(sc, args.relay or sc.relay)
        if len(by_strategy) == 2:
            comparisons.append(compare(by_strategy["latency"], by_strategy["petals"]))
            spread = [comparisons[-1]]
            for k in range(1, args.instances):
                other = reshuffled(sc, k)
                spread.append(compare(run(other, "latency", relay=args.relay, **knobs),
                                      run(other, "petals", relay=args.relay)))
            if args.instances > 1:
                instances[sc.name] = spread
    total = time.perf_counter() - started

    rows = [[r.scenario, r.strategy, _fmt(r.mean_ms), _fmt(r.p95_ms), _fmt(r.served_tps, 2), _fmt(r.capacity_tps),
             _fmt(100 * r.coverage, 2), _fmt(100 * r.min_coverage, 0), _fmt(r.mean_hops, 2), r.moves, r.reroutes,
             r.open_waits] for r in results]
    print(_table(["scenario", "strategy", "mean ms/tok", "p95 ms/tok", "served tok/s", "capacity tok/s",
                  "coverage %", "min cov %", "hops", "moves", "reroutes", "open waits"], rows))
    if comparisons:
        print()
        by_name = {r.scenario + "/" + r.strategy: r for r in results}
        rows = []
        for c in comparisons:
            bound = bounds[c.scenario]
            petals_ms = by_name[c.scenario + "/petals"].mean_ms
            rows.append([c.scenario, _fmt(1000 * bound if bound else None), f"{c.latency_speedup:.2f}x",
                         f"{petals_ms / (1000 * bound):.2f}x" if bound else "-", f"{c.served_ratio:.3f}",
                         f"{c.capacity_ratio:.3f}", f"{c.coverage_ratio:.3f}",
                         "yes" if c.meets_bar(min_speedup=0.95) else "NO"])
        print(_table(["scenario", "bound ms/tok", "speedup", "petals/bound", "served ratio", "capacity ratio",
                      "coverage ratio", "within 5%"], rows))
        print("\nspeedup = petals mean / latency mean; bound = least unloaded time per token any placement could give"
              "\n(tools/simulator/bound.py), so petals/bound caps the speedup placement can buy, queueing aside;"
              "\nratios are latency / petals; 'within 5%': no metric worse than petals by more than 5%.")
    if instances:
        print()
        rows = []
        for name, cs in instances.items():
            speedups = [c.latency_speedup for c in cs]
            rows.append([name, len(cs), f"{sum(speedups) / len(speedups):.2f}x", f"{min(speedups):.2f}x",
                         f"{max(speedups):.2f}x", f"{min(c.served_ratio for c in cs):.3f}",
                         f"{min(c.capacity_ratio for c in cs):.3f}", f"{min(c.coverage_ratio for c in cs):.3f}",
                         sum(c.meets_bar(min_speedup=0.95) for c in cs)])
        print(_table(["scenario", "instances", "mean speedup", "min", "max", "min served ratio",
                      "min capacity ratio", "min coverage ratio", "within 5%"], rows))
        print("\ninstance 0 is the scenario file; instance k > 0 has another seed and the same servers joining in"
              "\nanother order (tools/simulator/scenario.py: reshuffled); 'within 5%' counts instances.")
    runs = len(results) + sum(2 * (len(cs) - 1) for cs in instances.values())
    print(f"\n{runs} runs in {total:.1f} s")

    if args.json:
        payload = {"command": "python tools/simulate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "results": [dict(r.row(), timeline=r.timeline) for r in results],
                   "comparisons": [vars(c) for c in comparisons],
                   "bounds_ms": {k: (1000 * v if v else None) for k, v in bounds.items()},
                   "instances": {k: [vars(c) for c in cs] for k, cs in instances.items()}}
        Path(args.json).write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.json}")
    return 0


def _what_if(name: str, relay, knobs: dict, json_path, argv) -> int:
    """The bound, Petals' rule and ours on scenario `name` with one assumption changed at a time."""
    rows, payload = [], []
    for edit, (what, _) in VARIANTS.items():
        try:
            sc = variant(name, edit)
        except (OSError, ScenarioError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        floors = [(least_time_breakdown(sc, r, relay or sc.relay), w) for r, w in sc.client_regions.items()]
        if any(f is None for f, _ in floors):
            continue  # no bound to compare with: skip the runs too
        weight = sum(w for _, w in floors) or 1.0
        petals, ours = run(sc, "petals", relay=relay), run(sc, "latency", relay=relay, **knobs)
        part = {k: sum(getattr(f, k) * w for f, w in floors) / weight for k in ("compute", "network", "overhead")}
        bound = sum(part.values())
        spans = sum(f.spans * w for f, w in floors) / weight
        rows.append([edit, _fmt(spans, 1), _fmt(1000 * part["compute"]), _fmt(1000 * part["network"]),
                     _fmt(1000 * part["overhead"]), _fmt(1000 * bound), _fmt(petals.mean_ms), _fmt(ours.mean_ms),
                     f"{petals.mean_ms / (1000 * bound):.2f}x", f"{petals.mean_ms / ours.mean_ms:.2f}x"])
        payload.append({"variant": edit, "what": what, "bound_ms": 1000 * bound,
                        **{f"bound_{k}_ms": 1000 * v for k, v in part.items()}, "bound_spans": spans,
                        "petals": petals.row(), "latency": ours.row()})
    print(f"{name}, one assumption changed at a time (tools/simulator/whatif.py):\n")
    print(_table(["variant", "bound spans", "compute ms", "network ms", "overhead ms", "bound ms/tok",
                  "petals ms/tok", "latency ms/tok", "petals/bound", "speedup"], rows))
    print("\nbound = least unloaded time per token any placement could give (tools/simulator/bound.py), split into"
          "\nits parts; petals/bound caps what any placement could gain over Petals' rule. Variants:")
    for edit, (what, _) in VARIANTS.items():
        print(f"  {edit:18s} {what}")
    if json_path:
        Path(json_path).write_text(json.dumps({"command": "python tools/simulate.py " + " ".join(
            argv if argv is not None else sys.argv[1:]), "what_if": payload}, indent=1))
        print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
