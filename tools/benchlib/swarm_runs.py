"""What the GPU section measures through a running chain of servers:

  churn       : sessions opened, decoded and closed one after another on the same servers; the
                1st, 2nd and last (default 100th) decode --new-tokens from the same prompt and are
                measured, the others (fillers) decode a few tokens from prompts of varying length.
                Whether the 2nd and last give the 1st one's tokens is reported too (greedy).
  concurrency : N client sessions (client_pool.ClientPool) decoding at once, prompts of
                different lengths: aggregate tokens/s and each session's p50 per token
  ttft        : time to first token of a long prompt, one session at a time (after a warm-up)
"""
from __future__ import annotations

import asyncio
import statistics
import time

import torch

from .stats import mean_ms, p50_ms
from .swarm_session import GreedySession, one_session, prompt_lengths, random_prompt


def session_row(index: int, prompt_len: int, run: dict) -> dict:
    return {"session": index, "prompt_tokens": prompt_len, "new_tokens": len(run["times"]),
            "p50_ms": p50_ms(run["times"]), "mean_ms": mean_ms(run["times"]),
            "prefill_ms": run["prefill_s"] * 1e3, "open_ms": run["open_s"] * 1e3}


def churn(parts, servers, device: str, args, vocab: int, progress) -> dict:
    n = args.churn_sessions
    measured = sorted({1, min(2, n), n})
    fillers = prompt_lengths(9, *args.prompt_range)
    rows, tokens = [], {}

    async def run():
        for i in range(1, n + 1):
            if i in measured:
                prompt, new = random_prompt(args.prompt_tokens, vocab, seed=0), args.new_tokens
            else:
                prompt, new = random_prompt(fillers[i % len(fillers)], vocab, seed=i), args.churn_tokens
            result = await one_session(parts, servers, device, prompt, new)
            rows.append(session_row(i, prompt.shape[1], result))
            if i in measured:
                tokens[i] = result["tokens"]
                progress(f"churn session {i}/{n}: {rows[-1]['p50_ms']:.2f} ms/token (p50)")
            elif i % 20 == 0:
                progress(f"churn session {i}/{n}: {rows[-1]['p50_ms']:.2f} ms/token (filler)")

    began = time.monotonic()
    with torch.inference_mode():
        asyncio.run(run())
    by_index = {r["session"]: r for r in rows}
    return {"sessions": n, "measured": measured, "wall_s": time.monotonic() - began,
            "filler_tokens": args.churn_tokens, "measured_tokens": args.new_tokens,
            "first_ms": by_index[1]["p50_ms"], "second_ms": by_index[measured[1]]["p50_ms"] if n > 1 else None,
            "last_ms": by_index[n]["p50_ms"],
            "same_tokens_as_first": {str(i): tokens[i] == tokens[1] for i in measured[1:]},
            "first_session": by_index[1], "rows": rows}


def concurrency(pool, args, vocab: int, progress) -> list:
    rows = []
    for n in args.concurrency:
        lengths = prompt_lengths(n, *args.prompt_range)
        prompts = [random_prompt(length, vocab, seed=1000 + i)[0].tolist() for i, length in enumerate(lengths)]
        result = pool.run(prompts, args.decode_steps)
        p50s = [p50_ms(s["times"]) for s in result["sessions"]]
        row = {"sessions": n, "decode_steps": args.decode_steps, "client_processes": result["processes"],
               "wall_s": result["wall_s"], "tokens_per_s": n * args.decode_steps / result["wall_s"],
               "p50_ms_median": statistics.median(p50s), "p50_ms_min": min(p50s), "p50_ms_max": max(p50s),
               "per_session_p50_ms": p50s, "prompt_lengths": lengths,
               "prefill_ms_max": max(s["prefill_s"] for s in result["sessions"]) * 1e3}
        rows.append(row)
        progress(f"concurrency {n}: {row['tokens_per_s']:.1f} tokens/s aggregate, "
                 f"per-session p50 {row['p50_ms_min']:.2f}..{row['p50_ms_max']:.2f} ms")
    single = next((r["p50_ms_median"] for r in rows if r["sessions"] == 1), None)
    for r in rows:
        r["max_p50_over_single"] = r["p50_ms_max"] / single if single else None
    return rows


def ttft_swarm(parts, servers, device: str, tokens: int, repeats: int, vocab: int) -> dict:
    prompt = random_prompt(tokens, vocab, seed=7)

    async def run():
        times = []
        for _ in range(repeats + 1):  # the first is a warm-up
            session = await GreedySession(parts, servers, device).open(tokens + 2)
            try:
                times.append(await session.prefill(prompt))
            finally:
                await session.close()
        return times[1:]

    with torch.inference_mode():
        runs = asyncio.run(run())
    return {"ms": statistics.median(runs) * 1e3, "all_ms": [r * 1e3 for r in runs]}
