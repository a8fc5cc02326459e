#!/usr/bin/env python
"""Benchmark one server's decode step in-process: where the time of a one-token step goes.

On one device, for a Llama-shaped span of random weights (default: 16 blocks of a 7B), after a
prompt of --prompt tokens, per one-token step (synchronised every step, as a server is):

  hf          : the same layers as transformers' own LlamaModel with its DynamicCache
  span-eager  : BlockSpan.inference_step with CUDA graphs off (the path before decode graphs)
  span-eager+ : the same while another Python thread keeps the interpreter busy. Measured on an
                H200: about 8 s per step, with or without graphs (the step's thread waits for the
                GIL each time it gives it up), so the busy rows run 4 steps only. A server's
                compute thread must not share the interpreter with a thread that spins.
  span-graph  : BlockSpan.inference_step replaying the captured decode graph
  span-graph+ : the same with the busy thread

and checks span-graph against span-eager over every step (max |difference|). With --quant, the
span's linear layers are quantized as zswarm-server --quant does (the hf row is skipped).

    python tools/bench_decode.py                                   # on cuda, 7B shape, 16 blocks
    python tools/bench_decode.py --quant none nf4 int8 --json out.json
    python tools/bench_decode.py --device cpu --shape tiny          # dry run of the code paths
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import DynamicCache, LlamaConfig  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaModel  # noqa: E402

from zswarm.models.families import family_for  # noqa: E402
from zswarm.models.span import BlockSpan  # noqa: E402

SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
}


class BusyInterpreter:
    """A thread that keeps taking the GIL, like a server's event loop between steps."""

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self):
        while not self._stop.is_set():
            sum(range(2000))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def build(shape: str, layers: int, device: str, dtype: torch.dtype):
    config = LlamaConfig(num_hidden_layers=layers, vocab_size=256, max_position_embeddings=8192, **SHAPES[shape])
    config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaModel(config).eval()  # random weights, initialised on the device
    finally:
        torch.set_default_dtype(default)
    model.requires_grad_(False)
    family = family_for(config)
    span = BlockSpan(family, config, 0, layers, model.layers, dtype, torch.device(device),
                     rotary=family.build_rotary(config, dtype, torch.device(device)))
    return model, span


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(step, tokens, device: str) -> list[float]:
    times = []
    for token in tokens:
        began = time.perf_counter()
        step(token)
        sync(device)
        times.append(time.perf_counter() - began)
    return times


def hf_steps(model, prompt, tokens, device):
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(inputs_embeds=prompt, past_key_values=cache, use_cache=True)
        return time_steps(lambda t: model(inputs_embeds=t, past_key_values=cache, use_cache=True), tokens, device)


def span_steps(span, prompt, tokens, device, *, graphs: bool, outputs: list | None = None):
    span.graphs.enabled = graphs
    cache = span.new_cache(prompt.shape[0], prompt.shape[1] + len(tokens) + 8)
    span.inference_step(prompt, cache)

    def step(token):
        out = span.inference_step(token, cache)
        if outputs is not None:
            outputs.append(out.float().cpu())
    return time_steps(step, tokens, device)


def ms(samples: list[float]) -> float:
    ordered = sorted(samples[2:] if len(samples) > 4 else samples)  # the first steps include capture, warm-up
    return 1000 * ordered[len(ordered) // 2]


def progress(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def run_quant(args, quant: str) -> dict:
    progress(f"{quant}: building {args.layers} blocks")
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    model, span = build(args.shape, args.layers, args.device, dtype)
    if quant != "none":
        from zswarm.server.quant import quantize_module_
        quantize_module_(span.blocks, quant, torch.device(args.device), dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = span.hidden_size
    prompt = (torch.randn(args.batch, args.prompt, hidden, generator=gen) * 0.5).to(args.device, dtype)
    tokens = [(torch.randn(args.batch, 1, hidden, generator=gen) * 0.5).to(args.device, dtype)
              for _ in range(args.steps)]
    row = {"quant": quant, "shape": args.shape, "blocks": args.layers, "batch": args.batch, "prompt": args.prompt}
    if quant == "none":
        progress("hf steps")
        row["hf_ms"] = ms(hf_steps(model, prompt, tokens, args.device))
    eager_out, graph_out = [], []
    progress("span eager steps")
    row["span_eager_ms"] = ms(span_steps(span, prompt, tokens, args.device, graphs=False, outputs=eager_out))
    if args.busy:
        progress("span eager steps, busy interpreter")
        with BusyInterpreter():
            row["span_eager_busy_ms"] = ms(span_steps(span, prompt, tokens[:4], args.device, graphs=False))
    if args.device.startswith("cuda"):
        progress("span graph steps")
        span.graphs.enabled = True
        row["span_graph_ms"] = ms(span_steps(span, prompt, tokens, args.device, graphs=True, outputs=graph_out))
        row["graphs"] = "on" if span.graphs.enabled else "capture failed (eager)"
        if args.busy:
            progress("span graph steps, busy interpreter")
            with BusyInterpreter():
                row["span_graph_busy_ms"] = ms(span_steps(span, prompt, tokens[:4], args.device, graphs=True))
        row["graph_vs_eager_max_abs"] = max(float((g - e).abs().max()) for g, e in zip(graph_out, eager_out))
        row["graph_vs_eager_max_ref"] = max(float(e.abs().max()) for e in eager_out)
    if args.profile and quant == "none":
        row["profile"] = profile_eager(span, prompt, tokens[:8], args.device)
    del model, span
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def profile_eager(span, prompt, tokens, device) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    span.graphs.enabled = False
    cache = span.new_cache(prompt.shape[0], prompt.shape[1] + len(tokens) + 8)
    span.inference_step(prompt, cache)
    with profile(activities=activities) as prof:
        for token in tokens:
            span.inference_step(token, cache)
            sync(device)
    return prof.key_averages().table(sort_by="cpu_time_total", row_limit=15)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--quant", nargs="+", default=["none"], choices=["none", "int8", "nf4"])
    parser.add_argument("--busy", action="store_true", help="also time steps beside a busy Python thread")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of eager steps")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    faulthandler.dump_traceback_later(90, repeat=True)  # a stuck run shows where it is
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    rows = []
    for quant in args.quant:
        row = run_quant(args, quant)
        rows.append(row)
        progress(f"{quant}: {json.dumps({k: v for k, v in row.items() if k != 'profile'})}")
        if args.json:  # after every row: a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"\nDecode step of {args.layers} Llama-{args.shape}-shaped blocks on {name}, batch {args.batch}, "
          f"after {args.prompt} tokens; median ms per step (torch {torch.__version__})")
    cols = ["quant", "hf_ms", "span_eager_ms", "span_eager_busy_ms", "span_graph_ms", "span_graph_busy_ms",
            "graph_vs_eager_max_abs", "graphs"]
    print(" | ".join(f"{c:>22}" for c in cols))
    for row in rows:
        print(" | ".join(f"{_fmt(row.get(c)):>22}" for c in cols))
    for row in rows:
        if "profile" in row:
            print(f"\nprofile of eager steps ({row['quant']}):\n{row['profile']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 0.01 else f"{value:.2f}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
