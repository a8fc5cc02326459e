"""The CPU section: on a tiny Llama (or --cpu-model), the overhead of one decode step through one
server process over the same step on the same blocks in-process, and the decode tokens/s of 1, 8
and 32 sessions stepping at once through that server (each its own connection and session, prompts
of different lengths, one event loop: on a 2-core box more client processes would only take the
server's cores); aggregate tokens/s, each session's p50 per step, and agg(N) / agg(1) (issue 18's
bar: >= 3 at 8 sessions once steps are batched)."""
from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import torch

from wire import ZmqTransport

from .chain_client import Chain
from .server_chain import start_chain
from .stats import median_us, p10_us, p50_ms
from .swarm_session import prompt_lengths


def cpu_section(args, log_dir: Path) -> dict:
    from zswarm.models import resolve_model
    from zswarm.models.testing import make_tiny_checkpoint
    from zswarm.server.loading import load_blocks

    model_dir = args.cpu_model or str(make_tiny_checkpoint("llama", log_dir / "tiny-llama", num_layers=6))
    source = resolve_model(model_dir)
    n = source.num_blocks
    span = load_blocks(source, 0, n, dtype=torch.float32, device="cpu", progress=lambda _: None)
    hidden_size = span.hidden_size
    sessions_max = max(args.concurrency)
    max_length = max(args.prefill + args.steps, args.prompt_range[1] + args.decode_steps) + 1
    # room for every session at once, each rounded up to whole pages of whatever size the server's KV pool uses
    extra = ["--device", "cpu", "--dtype", "float32", "--attn-cache-tokens", sessions_max * -(-max_length // 256) * 256,
             "--max-session-length", max_length]
    (server,) = start_chain(model_dir, [(0, n)], extra, log_dir, args.timeout)
    g = torch.Generator().manual_seed(0)
    prefill = torch.randn(1, args.prefill, hidden_size, generator=g)
    tokens = [torch.randn(1, 1, hidden_size, generator=g) for _ in range(args.steps)]
    try:
        async def local_and_remote():
            """Alternate an in-process step and the same step through the server, so both see the
            same machine load (this matters on a busy CPU)."""
            transport = ZmqTransport()
            chain = await Chain(transport, [server]).open(max_length)
            await chain.step(prefill)
            local, remote = [], []
            with torch.inference_mode():
                cache = span.new_cache(1)
                span.inference_step(prefill, cache)
                for x in tokens:
                    began = time.perf_counter()
                    span.inference_step(x, cache)
                    local.append(time.perf_counter() - began)
                    began = time.perf_counter()
                    await chain.step(x)
                    remote.append(time.perf_counter() - began)
            await chain.close()
            await transport.close()
            return local, remote

        async def concurrent(n_sessions: int) -> dict:
            lengths = prompt_lengths(n_sessions, *args.prompt_range)
            transports = [ZmqTransport() for _ in range(n_sessions)]  # one connection per client
            chains = [await Chain(t, [server]).open(max_length) for t in transports]
            await asyncio.gather(*(c.step(torch.randn(1, length, hidden_size, generator=g))
                                   for c, length in zip(chains, lengths)))

            async def decode(chain):
                times = []
                for _ in range(args.decode_steps):
                    began = time.perf_counter()
                    await chain.step(tokens[0])
                    times.append(time.perf_counter() - began)
                return times
            began = time.perf_counter()
            times = await asyncio.gather(*(decode(c) for c in chains))
            elapsed = time.perf_counter() - began
            for c, t in zip(chains, transports):
                await c.close()
                await t.close()
            p50s = [p50_ms(t) for t in times]
            return {"sessions": n_sessions, "tokens_per_s": n_sessions * args.decode_steps / elapsed, "wall_s": elapsed,
                    "p50_ms_median": statistics.median(p50s), "p50_ms_max": max(p50s), "prompt_lengths": lengths}

        local, remote = asyncio.run(local_and_remote())
        rows = [asyncio.run(concurrent(n_s)) for n_s in args.concurrency]
    finally:
        server.stop()
    result = {"model": source.model_id, "blocks": n, "hidden_size": hidden_size, "steps": args.steps,
              "local_step_us": median_us(local), "server_step_us": median_us(remote),
              "overhead_us": median_us(remote) - median_us(local),
              "local_step_p10_us": p10_us(local), "server_step_p10_us": p10_us(remote),
              "overhead_p10_us": p10_us(remote) - p10_us(local),
              "tokens_per_s": {str(r["sessions"]): r["tokens_per_s"] for r in rows}, "decode_steps": args.decode_steps,
              "concurrency": rows, "client": "one event loop, one connection per session",
              "server_flags": [str(x) for x in extra], "prompt_range": list(args.prompt_range)}
    single = next((r for r in rows if r["sessions"] == 1), None)
    for r in rows:
        r["over_single"] = r["tokens_per_s"] / single["tokens_per_s"] if single else None
        r["max_p50_over_single"] = r["p50_ms_max"] / single["p50_ms_median"] if single else None
    result["agg8_over_agg1"] = next((r["over_single"] for r in rows if r["sessions"] == 8), None)
    print(f"\nCPU: {source.model_id}, {n} blocks, hidden {hidden_size}, float32, one server process")
    print(f"  server flags: {' '.join(result['server_flags'])} (CLI defaults otherwise)")
    print(f"{'':>8} {'in-process step':>16} {'through server':>16} {'overhead':>12}")
    for label, suffix in (("median", ""), ("p10", "_p10")):
        print(f"{label:>8} {result['local_step' + suffix + '_us']:>13.0f} µs {result['server_step' + suffix + '_us']:>13.0f} µs"
              f" {result['overhead' + suffix + '_us']:>9.0f} µs")
    print(f"concurrent sessions, one connection each, prompts {args.prompt_range[0]}..{args.prompt_range[1]} tokens, "
          f"{args.decode_steps} decode steps each")
    print(f"{'sessions':>10} {'decode tokens/s':>16} {'agg/agg(1)':>11} {'p50 ms/step med/max':>20} {'max/single':>11}")
    for r in rows:
        over = "-" if r["over_single"] is None else f"{r['over_single']:.2f}"
        worst = "-" if r["max_p50_over_single"] is None else f"{r['max_p50_over_single']:.2f}"
        print(f"{r['sessions']:>10} {r['tokens_per_s']:>16.1f} {over:>11} "
              f"{r['p50_ms_median']:>9.2f}/{r['p50_ms_max']:<10.2f} {worst:>11}")
    if result["agg8_over_agg1"] is not None:
        print(f"agg(8)/agg(1) = {result['agg8_over_agg1']:.2f} (issue 18's bar: >= 3)")
    return result
