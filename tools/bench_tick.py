#!/usr/bin/env python
"""Benchmark a decode tick against its rows: what one more session costs a server that batches.

In one process, for a span of random weights, time `BlockSpan.decode_tick` over N sessions of
one row each (different lengths, as a server's are) for each N of --rows, and fit the cost of a
tick as  t(N) = t(1) * (1 + c * (N - 1)). The placement simulator (tools/simulator/engine.py)
prices a batch of k requests the same way with c = BATCH_COST; this prints both, so the
simulator's batch model can be checked against what a server measures. Medians of --steps
ticks, the rows of every N interleaved tick by tick (this box is noisy).

    python tools/bench_tick.py                                    # CPU, tiny Llama
    python tools/bench_tick.py --device cuda --shape 7b --layers 16 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, simulator
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def build_span(args):
    from zswarm.models import load_span, resolve_model

    if args.shape == "tiny":
        from zswarm.models.testing import make_tiny_checkpoint

        path = make_tiny_checkpoint("llama", Path(tempfile.mkdtemp()) / "tiny", num_layers=args.layers)
    else:
        from benchlib.random_llama import make_random_llama

        path = make_random_llama(Path(tempfile.mkdtemp()) / args.shape, args.shape, args.device)
    source = resolve_model(str(path))
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    span = load_span(source, 0, min(args.layers, source.num_blocks), dtype=dtype, device=args.device)
    span.attach_pool(max(args.rows) * (args.prompt + 2 * args.steps + 64))
    return span


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="tiny", help="tiny (zswarm's test Llama) or a benchlib shape (7b, small)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--prompt", type=int, default=32, help="longest prompt; sessions' lengths spread below it")
    parser.add_argument("--steps", type=int, default=40, help="timed ticks per N")
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1) if args.device == "cpu" else None
    from simulator.engine import BATCH_COST

    span = build_span(args)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    torch.manual_seed(0)
    groups = {}
    with torch.inference_mode():
        for n in args.rows:
            caches = [span.new_cache(1, args.prompt + args.steps + 8) for _ in range(n)]
            for k, cache in enumerate(caches):
                span.inference_step(torch.randn(1, 1 + (k * 7) % args.prompt, span.hidden_size,
                                                device=args.device, dtype=span.dtype), cache)
            groups[n] = (caches, [torch.randn(1, 1, span.hidden_size, device=args.device, dtype=span.dtype)
                                  for _ in caches])
        times = {n: [] for n in args.rows}
        for step in range(args.steps + 3):  # the first 3 are warm-up
            for n, (caches, hiddens) in groups.items():
                sync()
                began = time.perf_counter()
                span.decode_tick(hiddens, caches).to("cpu")
                sync()
                if step >= 3:
                    times[n].append(time.perf_counter() - began)
    base = statistics.median(times[min(args.rows)])
    rows = []
    print(f"decode tick of N one-row sessions, {span} on {args.device}; median of {args.steps} ticks")
    print(f"{'N':>4} {'tick ms':>9} {'ms per row':>11} {'t(N)/t(1)':>10} {'fitted c':>9}")
    for n in args.rows:
        t = statistics.median(times[n])
        c = (t / base - 1) / (n - 1) if n > 1 else None
        rows.append({"rows": n, "tick_ms": t * 1e3, "ratio": t / base, "per_extra_row": c})
        print(f"{n:>4} {t * 1e3:>9.2f} {t * 1e3 / n:>11.3f} {t / base:>10.2f} {'-' if c is None else f'{c:.3f}':>9}")
    print(f"the simulator's batch model: c = BATCH_COST = {BATCH_COST} (tools/simulator/engine.py)")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "device": args.device,
                                               "shape": args.shape, "layers": args.layers, "rows": rows,
                                               "simulator_batch_cost": BATCH_COST}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
