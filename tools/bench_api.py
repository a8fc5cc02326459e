#!/usr/bin/env python
"""Time to first token and decode tokens/s through zswarm-api (the real openai client, streamed)
against the Python API (model.generate in this process) on the same swarm, in one run.

    python tools/bench_api.py                          # tiny random chat model, 2 servers, CPU
    python tools/bench_api.py --new-tokens 64 --repeats 9 --json /tmp/bench_api.json

It starts a real swarm on loopback (a DHT node here, zswarm-server processes splitting the blocks)
and a zswarm-api process, then runs the same greedy chat request both ways, interleaved (python,
api, python, api, ...) so that the noise of a shared machine falls on both alike. Per run:
  - TTFT: request sent -> first token (Python: generate's first new token; API: the first
    content chunk of the SSE stream, which zswarm-api sends once the first token exists);
  - decode tokens/s: (tokens - 1) / (last token - first token).
Medians of --repeats (after one warm-up of each). Hidden states are float32 on the wire both ways.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny",
                        help='"tiny" (a random 6-block chat llama with a byte tokenizer, made here) or a checkpoint '
                             "directory with a tokenizer and chat template")
    parser.add_argument("--servers", type=int, default=2, help="servers splitting the blocks evenly (2)")
    parser.add_argument("--new-tokens", type=int, default=32, help="max_tokens of each request (32)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each way, interleaved (5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server and here (1)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser.parse_args(argv)


def python_run(model, tokenizer, messages, new_tokens):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Clock(StoppingCriteria):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    clock = Clock()
    began = time.perf_counter()
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, stopping_criteria=StoppingCriteriaList([clock]))
    tokens = out.shape[1] - ids.shape[1]
    return began, clock.times[0], clock.times[-1], tokens, tokenizer.decode(out[0, ids.shape[1]:],
                                                                          skip_special_tokens=True)


def api_run(client, model_id, messages, new_tokens):
    began = time.perf_counter()
    first = last = None
    text, tokens = "", 0
    for chunk in client.chat.completions.create(model=model_id, messages=messages, max_tokens=new_tokens,
                                                temperature=0, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            text += chunk.choices[0].delta.content
    return began, first, last, tokens, text


def summarise(runs):
    ttft = [first - began for began, first, _, _, _ in runs]
    rates = [(tokens - 1) / (last - first) for _, first, last, tokens, _ in runs if tokens > 1 and last > first]
    return {"ttft_ms": statistics.median(ttft) * 1e3, "decode_tokens_per_s": statistics.median(rates) if rates else None,
            "tokens": statistics.median(r[3] for r in runs), "runs": len(runs)}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import openai
    import torch
    from transformers import AutoTokenizer

    from zswarm import AutoDistributedModelForCausalLM
    from zswarm.models import resolve_model
    from zswarm.testing.api_process import ApiProcess
    from zswarm.testing.chat_model import make_tiny_chat_checkpoint
    from zswarm.testing.launch import LocalSwarm, split_blocks

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_api-"))
    model_dir = make_tiny_chat_checkpoint(work / "tiny-chat") if args.model == "tiny" else Path(args.model)
    source = resolve_model(str(model_dir))
    messages = [{"role": "user", "content": "Tell me about the swarm."}]
    with LocalSwarm(model_dir, source.model_id, source.num_blocks, work / "swarm") as swarm:
        for i, (start, end) in enumerate(split_blocks(source.num_blocks, args.servers)):
            swarm.start(f"s{i}", start, end, threads=args.threads)
        with ApiProcess([model_dir], swarm.initial_peers, work, threads=args.threads,
                        extra=("--wire-dtype", "float32", "--log-level", "WARNING")) as api:
            swarm.wait_online()
            api.wait_ready()
            model = AutoDistributedModelForCausalLM.from_pretrained(str(model_dir), initial_peers=swarm.initial_peers,
                                                                    wire_dtype="float32", show_route=False)
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            client = openai.OpenAI(base_url=api.url + "/v1", api_key="none", max_retries=0, timeout=300)
            try:
                python_run(model, tokenizer, messages, args.new_tokens)  # warm-up: routes, pings, caches
                api_run(client, source.model_id, messages, args.new_tokens)
                runs = {"python": [], "api": []}
                for _ in range(args.repeats):
                    runs["python"].append(python_run(model, tokenizer, messages, args.new_tokens))
                    runs["api"].append(api_run(client, source.model_id, messages, args.new_tokens))
            finally:
                model.close()
    same_text = all(p[4] == a[4] for p, a in zip(runs["python"], runs["api"]))
    results = {name: summarise(r) for name, r in runs.items()}
    settings = {"model": source.model_id, "servers": args.servers, "new_tokens": args.new_tokens,
                "repeats": args.repeats, "threads": args.threads, "wire_dtype": "float32", "same_text": same_text}
    print(f"zswarm-api vs the Python API: {source.model_id}, {args.servers} servers, {args.new_tokens} new tokens, "
          f"median of {args.repeats} interleaved runs, {args.threads} thread(s)")
    print(f"  {'way':<8} {'TTFT ms':>9} {'decode tok/s':>13} {'tokens':>7}")
    for name, r in results.items():
        rate = f"{r['decode_tokens_per_s']:.1f}" if r["decode_tokens_per_s"] else "-"
        print(f"  {name:<8} {r['ttft_ms']:>9.1f} {rate:>13} {r['tokens']:>7.0f}")
    p, a = results["python"], results["api"]
    print(f"  API overhead: TTFT {a['ttft_ms'] - p['ttft_ms']:+.1f} ms"
          + (f", decode {100 * (a['decode_tokens_per_s'] / p['decode_tokens_per_s'] - 1):+.1f}%"
             if a["decode_tokens_per_s"] and p["decode_tokens_per_s"] else "")
          + f"; same text both ways: {same_text}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
