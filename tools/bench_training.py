#!/usr/bin/env python
"""Benchmark fine-tuning through the swarm against the same training step on a local HF model.

    python tools/bench_training.py                      # a tiny random llama (quick), CPU
    python tools/bench_training.py --model smollm2      # the embedded SmolLM2-135M-Instruct
    python tools/bench_training.py --json /tmp/bench_training.json

One training step = forward + backward of a batch with trainable prompts (--mode ptune or
deep_ptune; model weights frozen everywhere), loss on every position. Measured in one run on
the same model and batch:
  - local HF (transformers, --threads threads), the prompts applied the way the servers do;
  - the swarm on loopback (zswarm-server processes, --threads each): one server with all the
    blocks; two servers splitting them (2 hops); two replicas of all blocks with the batch in two
    row groups that run in parallel (max_request_tokens = half the batch).
Prints tokens/s (batch tokens / median step seconds over --repeats, after one warm-up step).
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

import torch  # noqa: E402

from zswarm.defaults import DEFAULT_MODEL_ID  # noqa: E402

MODELS = {"smollm2": DEFAULT_MODEL_ID}


def prepare_model(ref: str, workdir: Path) -> str:
    if ref != "tiny":
        return MODELS.get(ref, ref)
    from zswarm.models.testing import make_tiny_checkpoint

    return str(make_tiny_checkpoint("llama", workdir / "tiny-llama", num_layers=12))


def median_step_seconds(step, repeats: int) -> float:
    step()  # warm up: first-call costs (allocations, connections)
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def loss_of(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                             ids[:, 1:].reshape(-1))


def local_step(local, ids, prompts, deep):
    """The step on local HF: prompts prepended, deep prompts added before each layer to the
    positions < pre_seq_len (what zswarm/models/span.py add_prompt does on the servers)."""
    def step():
        hooks = []
        if deep is not None:
            for layer, prompt in zip(local.model.layers, deep):
                hooks.append(layer.register_forward_pre_hook(_adding(prompt), with_kwargs=True))
        try:
            embeds = local.get_input_embeddings()(ids)
            embeds = torch.cat([prompts.unsqueeze(0).expand(ids.shape[0], -1, -1), embeds], dim=1)
            logits = local(inputs_embeds=embeds, use_cache=False).logits[:, prompts.shape[0]:]
            loss_of(logits, ids).backward()
        finally:
            for hook in hooks:
                hook.remove()
    return step


def _adding(prompt):
    def hook(module, args, kwargs):
        if args:
            return (_add(args[0], prompt), *args[1:]), kwargs
        return args, dict(kwargs, hidden_states=_add(kwargs["hidden_states"], prompt))
    return hook


def _add(hidden, prompt):
    k = prompt.shape[0]
    return torch.cat([hidden[:, :k] + prompt.to(hidden.dtype), hidden[:, k:]], dim=1)


def swarm_step(model, ids):
    def step():
        loss_of(model(ids).logits, ids).backward()
    return step


def run(args) -> dict:
    from zswarm import AutoDistributedModelForCausalLM
    from zswarm.testing.launch import LocalSwarm
    from zswarm.models import resolve_model
    from zswarm.models.testing import load_reference_model

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench-training-"))
    model_ref = prepare_model(args.model, workdir)
    source = resolve_model(model_ref)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(source.config.vocab_size), (args.batch, args.seq_len), generator=generator)
    tokens = ids.numel()
    client_args = dict(wire_dtype=args.wire_dtype, show_route=False, tuning_mode=args.mode,
                       pre_seq_len=args.pre_seq_len, ping_timeout=1.0, liveness_interval_s=0.5)
    result = {"model": source.model_id, "num_blocks": source.num_blocks, "batch": [args.batch, args.seq_len],
              "mode": args.mode, "pre_seq_len": args.pre_seq_len, "threads": args.threads,
              "wire_dtype": args.wire_dtype, "repeats": args.repeats, "rows": []}

    def add_row(config, servers, seconds):
        result["rows"].append({"config": config, "servers": servers, "step_s": seconds,
                               "tokens_per_s": tokens / seconds})

    local = load_reference_model(str(source.path)).requires_grad_(False)
    hidden = local.config.hidden_size
    prompts = (torch.randn(args.pre_seq_len, hidden) * 0.02).requires_grad_(True)
    deep = (torch.zeros(source.num_blocks, args.pre_seq_len, hidden).requires_grad_(True)
            if args.mode == "deep_ptune" else None)
    add_row("local HF", 0, median_step_seconds(local_step(local, ids, prompts, deep), args.repeats))
    del local

    n = source.num_blocks
    setups = [("swarm, 1 server", [(0, n)], {}),
              ("swarm, 2 hops", [(0, n // 2), (n // 2, n)], {}),
              ("swarm, 2 replicas, 2 row groups", [(0, n), (0, n)],
               {"max_request_tokens": (args.batch // 2) * (args.seq_len + args.pre_seq_len)})]
    swarm = LocalSwarm(model_ref, source.model_id, source.num_blocks, workdir / "swarm")
    try:
        for index, (config, spans, extra) in enumerate(setups):
            servers = [swarm.start(f"s{index}-{i}", a, b, threads=args.threads) for i, (a, b) in enumerate(spans)]
            swarm.wait_online(*servers, timeout=300)
            model = AutoDistributedModelForCausalLM.from_pretrained(
                model_ref, initial_peers=swarm.initial_peers, allowed_servers=[s.peer_id for s in servers],
                **client_args, **extra)
            try:
                add_row(config, len(servers), median_step_seconds(swarm_step(model, ids), args.repeats))
            finally:
                model.close()
            for server in servers:
                swarm.kill(server)
    finally:
        swarm.close()
    base = result["rows"][0]["tokens_per_s"]
    for row in result["rows"]:
        row["vs_local"] = row["tokens_per_s"] / base
    return result


def print_table(result: dict) -> None:
    batch, seq = result["batch"]
    print(f"model {result['model']} ({result['num_blocks']} blocks), batch {batch}x{seq} tokens, {result['mode']} "
          f"pre_seq_len {result['pre_seq_len']}, {result['threads']} thread(s) per process, wire {result['wire_dtype']}, "
          f"median of {result['repeats']}")
    print(f"{'config':<34} {'servers':>7} {'step s':>8} {'fwd+bwd tokens/s':>17} {'vs local':>9}")
    for row in result["rows"]:
        print(f"{row['config']:<34} {row['servers']:>7} {row['step_s']:>8.3f} {row['tokens_per_s']:>17.0f} "
              f"{row['vs_local']:>8.2f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (a random 12-block llama), 'smollm2' (the embedded default), a checkpoint dir or hub id")
    parser.add_argument("--mode", choices=("ptune", "deep_ptune"), default="deep_ptune")
    parser.add_argument("--pre-seq-len", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server and for the local model")
    parser.add_argument("--wire-dtype", default="float32", choices=("auto", "float16", "bfloat16", "float32"))
    parser.add_argument("--json", help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    if args.batch < 2 or args.seq_len < 2 or args.pre_seq_len < 1 or args.repeats < 1:
        parser.error("need --batch >= 2, --seq-len >= 2, --pre-seq-len >= 1, --repeats >= 1")
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
