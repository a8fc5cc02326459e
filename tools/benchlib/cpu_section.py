"""The CPU section: on a tiny Llama (or --cpu-model), the overhead of one decode step through one
server process over the same step on the same blocks in-process, and the decode tokens/s of 1, 8
and 32 sessions stepping at once through that server."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import torch

from wire import ZmqTransport

from .chain_client import Chain
from .server_chain import start_chain
from .stats import median_us, p10_us


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
    max_length = args.prefill + max(args.steps, args.decode_steps) + 1
    extra = ["--device", "cpu", "--dtype", "float32", "--attn-cache-tokens", sessions_max * max_length,
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

        async def concurrent(n_sessions: int) -> float:
            transports = [ZmqTransport() for _ in range(n_sessions)]  # one connection per client
            chains = [await Chain(t, [server]).open(max_length) for t in transports]
            await asyncio.gather(*(c.step(prefill) for c in chains))

            async def decode(chain):
                for _ in range(args.decode_steps):
                    await chain.step(tokens[0])
            began = time.perf_counter()
            await asyncio.gather(*(decode(c) for c in chains))
            elapsed = time.perf_counter() - began
            for c, t in zip(chains, transports):
                await c.close()
                await t.close()
            return n_sessions * args.decode_steps / elapsed

        local, remote = asyncio.run(local_and_remote())
        rates = {n_s: asyncio.run(concurrent(n_s)) for n_s in args.concurrency}
    finally:
        server.stop()
    result = {"model": source.model_id, "blocks": n, "hidden_size": hidden_size, "steps": args.steps,
              "local_step_us": median_us(local), "server_step_us": median_us(remote),
              "overhead_us": median_us(remote) - median_us(local),
              "local_step_p10_us": p10_us(local), "server_step_p10_us": p10_us(remote),
              "overhead_p10_us": p10_us(remote) - p10_us(local),
              "tokens_per_s": {str(k): v for k, v in rates.items()}, "decode_steps": args.decode_steps}
    print(f"\nCPU: {source.model_id}, {n} blocks, hidden {hidden_size}, float32, one server process")
    print(f"{'':>8} {'in-process step':>16} {'through server':>16} {'overhead':>12}")
    for label, suffix in (("median", ""), ("p10", "_p10")):
        print(f"{label:>8} {result['local_step' + suffix + '_us']:>13.0f} µs {result['server_step' + suffix + '_us']:>13.0f} µs"
              f" {result['overhead' + suffix + '_us']:>9.0f} µs")
    print(f"{'sessions':>10} {'decode tokens/s':>16}")
    for k, v in rates.items():
        print(f"{k:>10} {v:>16.1f}")
    return result
