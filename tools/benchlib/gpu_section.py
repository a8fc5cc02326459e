"""The GPU section (issue 18's bar, in one run): a Llama-shaped model with random fp16 weights served
by 2 server processes on one device, against Hugging Face on the same device.

Order, so that each part sees the state it is about and HF never shares the GPU with a server:
  1. servers for --quant none: churn first (its 1st session is the first these servers ever
     serve, and the quant-none row), then concurrency 1/8/32, then the swarm's TTFT; servers stop
  2. HF fp16 loaded once: TTFT, eager anchors, the quant-none local row, static+compile anchors;
     then the memory-bandwidth floor
  3. for int8 and nf4: fresh servers, one session, servers stop, then local HF of that quant
Each part is selectable (--gpu-parts); see swarm_runs.py and hf_local.py for how each is timed.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import torch

from .chain_client import hops, server_info
from .client_pool import HEADLESS, ClientPool
from .floor import floor
from .gpu_tables import print_gpu
from .hf_local import best_of, eager_anchor, free, load_hf, static_anchor, ttft_local
from .random_llama import SHAPES, make_random_llama
from .server_chain import log_lines, start_chain
from .swarm_runs import churn, concurrency, session_row, ttft_swarm
from .swarm_session import one_session, prompt_lengths, random_prompt

PARTS = ("concurrency", "churn", "ttft", "anchors", "quants")
SERVER_FLAGS = ["--dtype", "float16", "--attn-cache-tokens", 8192, "--max-session-length", 4096]


class Progress:
    def __init__(self):
        self.began = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.began:7.1f}s] gpu: {message}", flush=True)


class Servers:
    """The chain for one quantization, started on entry and stopped on exit; row: what it announced."""

    def __init__(self, model_dir, ranges, quant, args, log_dir, progress):
        self.args = (model_dir, ranges, ["--device", args.gpu_device, *SERVER_FLAGS, "--quant", quant], log_dir,
                     args.timeout)
        self.quant, self.progress, self.row = quant, progress, {}

    def __enter__(self):
        began = time.monotonic()
        self.servers = start_chain(*self.args, measure_first=True, tag=f"{self.quant}-")
        info = asyncio.run(server_info(self.servers[0]))
        self.row = {"servers_up_s": time.monotonic() - began,
                    **{k: info[k] for k in ("inference_rps", "forward_rps", "throughput")}}
        self.progress(f"servers for quant {self.quant} up in {self.row['servers_up_s']:.1f}s")
        return hops(self.servers)

    def notes(self) -> dict:
        return {f"{self.quant} server{i}": log_lines(s, "graph") for i, s in enumerate(self.servers)}

    def __exit__(self, *exc):
        for server in self.servers:
            server.stop()


def _client_parts(model_dir: str, device: str):
    from zswarm.models import load_client_parts, resolve_model

    return load_client_parts(resolve_model(model_dir), dtype=torch.float16, device=device)


def _single(parts, servers, device, args, vocab) -> dict:
    """One session of --prompt-tokens, decoding --new-tokens."""
    with torch.inference_mode():
        run = asyncio.run(one_session(parts, servers, device, random_prompt(args.prompt_tokens, vocab, 0),
                                      args.new_tokens))
    return session_row(1, args.prompt_tokens, run)


def _with_local(row: dict, model, args, vocab) -> dict:
    """The quant row's local HF numbers: eager generate, batch 1, the swarm session's prompt."""
    try:
        ids = random_prompt(args.prompt_tokens, vocab, 0)
        local = best_of(model, ids, torch.ones_like(ids), args.new_tokens, args.anchor_repeats)
        row.update(local_ms_per_token=local["ms_per_token"], local_ms_per_token_mean=local["ms_per_token_mean"],
                   local_p50_runs_ms=local["p50_runs_ms"])
        if "swarm_ms_per_token" in row:
            row["swarm_over_local"] = row["swarm_ms_per_token"] / row["local_ms_per_token"]
    except Exception as exc:  # e.g. a transformers/bitsandbytes combination that cannot load
        row["local_error"] = f"{type(exc).__name__}: {exc}"
    return row


def _swarm_row(quant: str, servers_row: dict, session: dict) -> dict:
    return {"quant": quant, **servers_row, "swarm_ms_per_token": session["p50_ms"],
            "swarm_ms_per_token_mean": session["mean_ms"], "swarm_session": session}


def gpu_section(args, log_dir: Path, out: dict | None = None) -> dict:
    from zswarm.server.quant import QuantizationUnavailable, check_quant_available

    progress, device, parts = Progress(), args.gpu_device, set(args.gpu_parts)
    shape = SHAPES[args.gpu_shape]
    vocab, layers = shape["vocab_size"], shape["num_hidden_layers"]
    ranges = [(0, layers // 2), (layers // 2, layers)]
    progress(f"random {args.gpu_shape} checkpoint")
    model_dir = str(make_random_llama(Path(args.gpu_model_dir or log_dir / f"llama-{args.gpu_shape}-random"),
                                      args.gpu_shape, device))
    progress(f"checkpoint in {model_dir}")
    quants = list(args.quants) if "quants" in parts else []
    out = {} if out is None else out
    out.update({"settings": {"shape": args.gpu_shape, "device": device, "parts": sorted(parts), "server_ranges": ranges,
                        "server_flags": ["--device", device, *SERVER_FLAGS], "client_processes": args.client_procs,
                        "prompt_range": list(args.prompt_range), "prompt_tokens": args.prompt_tokens,
                        "new_tokens": args.new_tokens, "decode_steps": args.decode_steps,
                        "concurrency": args.concurrency, "churn_sessions": args.churn_sessions,
                        "churn_tokens": args.churn_tokens, "ttft_tokens": args.ttft_tokens,
                        "ttft_repeats": args.ttft_repeats, "anchor_repeats": args.anchor_repeats, "quants": quants,
                        "compile": args.compile},
           "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else device,
           "server_notes": {}, "quants": []})
    rows = {}
    if parts & {"churn", "concurrency", "ttft"} or "none" in quants:
        chain = Servers(model_dir, ranges, "none", args, log_dir, progress)
        with chain as servers:
            client = _client_parts(model_dir, device)
            if "churn" in parts:
                out["churn"] = churn(client, servers, device, args, vocab, progress)
                first = out["churn"]["first_session"]
            elif "none" in quants:
                first = _single(client, servers, device, args, vocab)
            if "none" in quants:
                rows["none"] = _swarm_row("none", chain.row, first)
                out["quants"].append(rows["none"])
            if "concurrency" in parts:
                progress(f"starting {args.client_procs} client processes")
                with ClientPool(args.client_procs, model_dir, servers, device) as pool:
                    out["concurrency"] = concurrency(pool, args, vocab, progress)
                progress(f"the same with headless clients ({args.client_procs} processes, no client GPU work)")
                with ClientPool(args.client_procs, model_dir, servers, HEADLESS) as pool:
                    out["capacity"] = concurrency(pool, args, vocab, progress)
            if "ttft" in parts:
                swarm_ttft = ttft_swarm(client, servers, device, args.ttft_tokens, args.ttft_repeats, vocab)
                out["ttft"] = {"prompt_tokens": args.ttft_tokens, "repeats": args.ttft_repeats, "swarm": swarm_ttft}
                progress(f"swarm TTFT {args.ttft_tokens} tokens: {swarm_ttft['ms']:.2f} ms")
            out["server_notes"].update(chain.notes())
            del client
    batches = {b: [random_prompt(length, vocab, seed=1000 + i)
                   for i, length in enumerate(prompt_lengths(b, *args.prompt_range))] for b in args.concurrency}
    if parts & {"ttft", "anchors"} or "none" in quants:
        progress("loading HF fp16")
        model = load_hf(model_dir, "none", device)
        try:
            if "ttft" in parts:
                local = ttft_local(model, random_prompt(args.ttft_tokens, vocab, seed=7), args.ttft_repeats)
                out["ttft"].update(local=local, swarm_over_local=swarm_ttft["ms"] / local["ms"])
                progress(f"local HF TTFT: {local['ms']:.2f} ms")
            if "anchors" in parts:
                out["anchors"] = {"repeats": args.anchor_repeats,
                                  "eager": eager_anchor(model, batches, args.decode_steps, args.anchor_repeats)}
                progress("HF eager: " + ", ".join(f"batch {r['batch']} {r['tokens_per_s']:.0f} tok/s"
                                                  for r in out["anchors"]["eager"]))
            if "none" in quants:
                _with_local(rows["none"], model, args, vocab)
            if "anchors" in parts:
                compile_ = args.compile and device.startswith("cuda")
                if args.compile and not compile_:
                    progress("not a CUDA device: the static-cache anchor runs without torch.compile")
                out["anchors"]["static"] = static_anchor(model, batches, args.decode_steps, args.anchor_repeats,
                                                          compile_, progress)
        finally:
            free(model, device)
        if "anchors" in parts:
            out["anchors"]["floor"] = floor(model_dir, shape, device, args.concurrency)
    for quant in quants:
        if quant == "none":
            continue
        try:
            check_quant_available(quant, device)
        except QuantizationUnavailable as exc:
            out["quants"].append({"quant": quant, "skipped": str(exc)})
            continue
        chain = Servers(model_dir, ranges, quant, args, log_dir, progress)
        with chain as servers:
            rows[quant] = _swarm_row(quant, chain.row, _single(_client_parts(model_dir, device), servers, device, args,
                                                               vocab))
            out["quants"].append(rows[quant])
            out["server_notes"].update(chain.notes())
        progress(f"loading HF {quant}")
        try:
            model = load_hf(model_dir, quant, device)
        except Exception as exc:
            rows[quant]["local_error"] = f"{type(exc).__name__}: {exc}"
            continue
        try:
            _with_local(rows[quant], model, args, vocab)
        finally:
            free(model, device)
        progress(f"quant {quant}: swarm {rows[quant]['swarm_ms_per_token']:.2f} ms/token, "
                 f"local {rows[quant].get('local_ms_per_token', float('nan')):.2f}")
    out["elapsed_s"] = time.monotonic() - progress.began
    print_gpu(out)
    return out
