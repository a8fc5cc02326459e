#!/usr/bin/env python
"""Benchmark the EAGER one-token decode step of a span against Hugging Face's own eager forward.

Issue 18's bar: a span's eager step <= 1.15x HF's eager forward of the same blocks. For a
Llama-shaped model of random weights (transformers' LlamaForCausalLM; every row runs the SAME
decoder-layer modules), after a prompt of --prompt tokens, per one-token step (synchronised on cuda
after every step, as a server is when it copies the result to the host):

  hf             LlamaModel.forward(inputs_embeds=..., DynamicCache): position ids, mask rule, rotary
                 cos/sin, the layers, the final norm -- HF's own eager forward of the same blocks
  bare           a Python loop over the same decoder layers with a DynamicCache, cos/sin sliced from
                 the span's rotary table (the span's own inputs), attention_mask=None: the floor
  bare+spancache the same loop writing a SpanCache made with max_length (isolates SpanCache.update
                 against DynamicCache's torch.cat); skipped where SpanCache is no transformers Cache
  span           BlockSpan.inference_step(token, cache), decode graphs off, the cache made with
                 max_length as the server makes it (zswarm/server/handlers.py _run_inference)
  span-grow      the same with a cache made without max_length
  server-step    the compute thread's body in the server: inference_mode + using_adapter + the host
                 tensor to the device + inference_step + to_wire_dtype(out.to("cpu"))
  hf-generate    (with --generate) LlamaForCausalLM.generate over the same layers, greedy, per new
                 token: (T(prompt -> N tokens) - T(prompt -> 1 token)) / (N - 1), as
                 tools/bench_server.py times local HF (adds embedding, lm_head, argmax, stop check)

Per row: median / min / p10 / p90 ms per step (step k of every row before step k+1 of any, the order
rotating, --rounds times over fresh caches; --no-interleave times one row after another); the torch
dispatcher ops of one step (a TorchDispatchMode: every op that reaches a backend, split into views
and others), of which host syncs (.item()/bool(tensor), nonzero, copies to the host); the Python
function calls of one step (sys.setprofile); on cuda the device kernels and the CUDA runtime calls
(launches, syncs, copies) of one step (torch.profiler). The ops each row runs beyond `bare` are
listed by name.

--quant int8|nf4 swaps the layers' linears for bitsandbytes ones exactly as zswarm-server --quant
does (zswarm/server/quant.py + loading.py), in place, so every row runs the same quantized layers.
--background also times the span row beside another thread, as a server's compute thread runs
beside its event loop: `loop` (an asyncio loop idle on a ZeroMQ ROUTER through wire.sockets.LoopSocket,
as wire/server.py's), `ticker` (that loop woken every 1 ms by a timer), `busy` (a Python thread that
never blocks: the GIL convoy; 3 steps only, it is slow).

    python tools/bench_eager.py --device cpu --shape small --layers 4 --steps 30
    python tools/bench_eager.py --device cuda --shape 7b --layers 32 --dtype float16 --generate --json out.json
    python tools/bench_eager.py --device cuda --shape 7b --layers 16 --quant int8 --generate
    python tools/bench_eager.py --device cuda --shape 7b --layers 16 --rows span --background loop busy
"""
from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as zswarm-server does

import torch  # noqa: E402
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

from benchlib.background import Background  # noqa: E402
from benchlib.op_counts import OpCounter, count_device_work, count_python_calls  # noqa: E402
from zswarm.models.families import family_for  # noqa: E402
from zswarm.models.families.base import cache_keyword  # noqa: E402
from zswarm.models.span import BlockSpan, as_dtype  # noqa: E402

SHAPES = {  # hidden, intermediate, heads, kv heads
    "7b": (4096, 11008, 32, 32),
    "8b": (4096, 14336, 32, 8),
    "1b": (2048, 5504, 16, 16),
    "medium": (1024, 2816, 16, 16),
    "small": (512, 1376, 8, 8),
    "gqa": (512, 1376, 8, 2),
    "tiny": (64, 128, 4, 2),
}
ROWS = ["hf", "bare", "bare+spancache", "span", "span-grow", "server-step"]
SPAN_ROWS = ("span", "span-grow", "server-step")  # enter inference_mode themselves


# ---- model -----------------------------------------------------------------------------------------
def parse_shape(text: str) -> tuple[int, int, int, int]:
    if text in SHAPES:
        return SHAPES[text]
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--shape is one of {sorted(SHAPES)} or HIDDEN,INTERMEDIATE,HEADS,KV_HEADS")
    return parts


def build(shape, layers: int, device: torch.device, dtype: torch.dtype, quant: str = "none"):
    """(LlamaForCausalLM, BlockSpan over all its layers): the span runs the model's own layer modules."""
    hidden, inter, heads, kv = shape
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                         num_key_value_heads=kv, num_hidden_layers=layers, vocab_size=256,
                         max_position_embeddings=8192, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"  # what the Llama family builds its blocks with
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            lm = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    lm.requires_grad_(False)
    with torch.no_grad():  # linears ~N(0, 0.02), norms at 1, whatever the init does
        for p in lm.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.02)
    if quant != "none":  # as zswarm-server --quant: zswarm/server/loading.py _load_blocks
        from zswarm.server.quant import quantize_module_

        quantize_module_(lm.model.layers, quant, device, dtype)
        lm.model.layers.to(device)
    family = family_for(config)
    span = BlockSpan(family, config, 0, layers, lm.model.layers, dtype, device,
                     rotary=family.build_rotary(config, dtype, device))
    span.eval()
    lm.eval()
    graphs = getattr(span, "graphs", None)
    if graphs is not None:
        graphs.enabled = False  # the eager path: what BLOOM, Falcon, Mixtral, int8 and CPU run
    return lm, span


def model_cache_keyword(model) -> str:
    """transformers 5.24 names the model's cache argument `cache`; earlier ones `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# ---- the rows: each returns step(hidden) over a fresh cache (the first call is the prefill) ---------------
def new_cache(span, max_length):
    # under inference_mode, as the server makes its caches (zswarm/server/handlers.py _run_inference); also
    # keeps clear of a KVPool grown inside inference_mode that a cache made outside it cannot zero (bb8c2e0)
    with torch.inference_mode():
        return span.new_cache(1, max_length)


def make_row(name: str, lm, span, max_length: int):
    model = lm.model
    if name == "hf":
        cache = DynamicCache(config=model.config)
        kw = {model_cache_keyword(model): cache, "use_cache": True}

        def step(h):
            return model(inputs_embeds=h, **kw).last_hidden_state
        return step

    if name in ("bare", "bare+spancache"):
        layer_kw = cache_keyword(type(model.layers[0]))
        begin = end = None
        if name == "bare":
            cache = DynamicCache(config=model.config)
        else:
            cache = new_cache(span, max_length)
            if not all(hasattr(cache, a) for a in ("update", "_begin_step", "_end_step")):
                raise NotImplementedError("this SpanCache is not a transformers Cache (no update/_begin_step/_end_step)")
            begin, end = cache._begin_step, cache._end_step
        state = {"past": 0}

        def step(h):
            past, q = state["past"], h.shape[1]
            if begin is not None:
                begin(h.shape[0])
            rope = span.rotary.get(past, q)
            for layer in model.layers:
                h = layer(h, attention_mask=None, position_embeddings=rope, **{layer_kw: cache})
            if end is not None:
                end(past + q)
            state["past"] = past + q
            return h
        return step

    if name in ("span", "span-grow"):
        cache = new_cache(span, max_length if name == "span" else None)

        def step(h):
            return span.inference_step(h, cache)
        return step

    if name == "server-step":
        from wire.codec import to_wire_dtype
        from zswarm.models.lora import using_adapter

        cache = new_cache(span, max_length)

        def step(h):  # zswarm/server/handlers.py _run_inference, one chunk; the hidden states arrive on the host
            h = h.to("cpu")
            with torch.inference_mode(), using_adapter(None):
                x = h.to(device=span.device, dtype=span.dtype)
                out = span.inference_step(x, cache)
                return to_wire_dtype(out.to("cpu"), h.dtype)
        return step
    raise ValueError(name)


def runnable(name: str, fn):
    """hf and bare run under inference_mode as a server would; span rows enter it themselves."""
    if name in SPAN_ROWS:
        return fn

    def wrapped(h):
        with torch.inference_mode():
            return fn(h)
    return wrapped


# ---- measuring -------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare_row(name, lm, span, prompt, tokens, warmup):
    """The row's step over a fresh cache, after the prompt and `warmup` steps."""
    step = runnable(name, make_row(name, lm, span, prompt.shape[1] + len(tokens) + 4))
    step(prompt)
    for t in tokens[:warmup]:
        step(t)
    sync(span.device)
    return step


def timed_step(step, token, device) -> float:
    began = time.perf_counter()
    step(token)
    sync(device)
    return time.perf_counter() - began


def count_row(step, token, device, args) -> dict:
    """Counters on one more step (one more token in the cache: the same op mix as the timed ones)."""
    counter = OpCounter()
    with counter:
        step(token)
    sync(device)
    row = {"ops": sum(counter.ops.values()), "view_ops": counter.views, "host_syncs": counter.syncs,
           "op_names": dict(counter.ops.most_common())}
    row["kernel_ops"] = row["ops"] - row["view_ops"]
    row["python_calls"] = count_python_calls(lambda: step(token))
    sync(device)
    if device.type == "cuda" and args.kernels:
        row.update(count_device_work(lambda: step(token), device))
    return row


def measure_rows(names, lm, span, prompt, tokens, warmup, args, skipped: dict) -> dict:
    """Time the rows. Interleaved (default): step k of every row runs before step k+1 of any, the
    order rotating, so clock or load drift (seen on an H200: one row's median moved 26 -> 52 ms
    between rows timed a second apart) falls on all rows alike. Else one row after another."""
    device = span.device
    steps, times = {}, {}
    for name in names:
        try:
            steps[name] = prepare_row(name, lm, span, prompt, tokens, warmup)
        except NotImplementedError as exc:  # a row the code under test cannot run
            skipped[name] = str(exc)
            continue
        times[name] = []
        if not args.interleave:  # this row's steps now, before the next row is made
            times[name] = [timed_step(steps[name], token, device) for token in tokens[warmup:]]
    if args.interleave:
        order = list(steps)
        for k, token in enumerate(tokens[warmup:]):
            for name in order[k % len(order):] + order[:k % len(order)]:
                times[name].append(timed_step(steps[name], token, device))
    return {name: {"times": times[name], **count_row(step, tokens[-1], device, args)} for name, step in steps.items()}


def measure_background(lm, span, prompt, tokens, warmup, kind: str) -> list[float]:
    step = prepare_row("span", lm, span, prompt, tokens, warmup)
    with Background(kind):
        return [timed_step(step, token, span.device) for token in tokens[warmup:]]


def generate_ms(lm, prompt_ids: torch.Tensor, new_tokens: int, device: torch.device) -> list[float]:
    """ms per new token of greedy generate: (T(N) - T(1)) / (N - 1), three times."""
    def timed(n):
        sync(device)
        began = time.perf_counter()
        lm.generate(prompt_ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        sync(device)
        return time.perf_counter() - began
    timed(2)
    return [1e3 * (timed(new_tokens) - timed(1)) / (new_tokens - 1) for _ in range(3)]


# ---- report -----------------------------------------------------------------------------------------------
def summarise(times_ms: list[float]) -> dict:
    ordered = sorted(times_ms)
    pick = lambda f: ordered[min(len(ordered) - 1, int(f * len(ordered)))]  # noqa: E731
    return {"median_ms": statistics.median(ordered), "min_ms": ordered[0], "p10_ms": pick(0.1), "p90_ms": pick(0.9),
            "mean_ms": statistics.fmean(ordered), "n": len(ordered)}


def op_diff(row: dict, base: dict) -> dict:
    a, b = collections.Counter(row["op_names"]), collections.Counter(base["op_names"])
    return {"more": dict((a - b).most_common()), "fewer": dict((b - a).most_common())}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.1f}"
    return str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:N]")
    parser.add_argument("--shape", type=parse_shape, default=SHAPES["small"],
                        help=f"one of {sorted(SHAPES)} or HIDDEN,INTERMEDIATE,HEADS,KV_HEADS (default small)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dtype", default=None, help="float32, float16, bfloat16 (default: float16 on cuda, float32 on cpu)")
    parser.add_argument("--quant", choices=["none", "int8", "nf4"], default="none",
                        help="bitsandbytes layers as zswarm-server --quant makes them (int8 and nf4 need bitsandbytes)")
    parser.add_argument("--steps", type=int, default=32, help="timed one-token steps per row and round")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="the rows are timed in turn, this many times")
    parser.add_argument("--prompt", type=int, default=64, help="tokens in the cache before the timed steps")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: 1 on cpu)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS)
    parser.add_argument("--generate", action="store_true", help="also time HF generate over the same layers")
    parser.add_argument("--background", nargs="*", choices=["loop", "ticker", "busy"], default=[],
                        help="also time the span row beside such a thread")
    parser.add_argument("--no-kernels", dest="kernels", action="store_false",
                        help="cuda: skip the profiler's count of kernels and runtime calls")
    parser.add_argument("--no-interleave", dest="interleave", action="store_false",
                        help="time one row after another instead of step k of every row in turn")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = as_dtype(args.dtype or ("float16" if device.type == "cuda" else "float32"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    elif args.threads:
        torch.set_num_threads(args.threads)

    lm, span = build(args.shape, args.layers, device, dtype, args.quant)
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = args.shape[0]
    prompt = (torch.randn(1, args.prompt, hidden, generator=gen) * 0.5).to(device, dtype)
    tokens = [(torch.randn(1, 1, hidden, generator=gen) * 0.5).to(device, dtype)
              for _ in range(args.warmup + args.steps)]

    results = {name: {"times": []} for name in args.rows}
    skipped = {}
    for _ in range(args.rounds):
        for name, row in measure_rows(list(results), lm, span, prompt, tokens, args.warmup, args, skipped).items():
            results[name]["times"] += [1e3 * t for t in row.pop("times")]
            results[name].update(row)
        for name in skipped:
            results.pop(name, None)
    if args.generate:
        ids = torch.randint(0, lm.config.vocab_size, (1, args.prompt), generator=gen).to(device)
        results["hf-generate"] = {"times": generate_ms(lm, ids, args.steps, device)}
    backgrounds = {}
    for kind in args.background:
        steps = tokens if kind != "busy" else tokens[:args.warmup + min(args.steps, 3)]
        backgrounds[f"span+{kind}"] = summarise([1e3 * t for t in measure_background(lm, span, prompt, steps,
                                                                                     args.warmup, kind)])

    # every row computes the same thing: one step after the prompt, against bare (hf adds the final norm)
    outs = {}
    for name in [n for n in results if n in ROWS and n != "hf"]:
        step = runnable(name, make_row(name, lm, span, args.prompt + 4))
        step(prompt)
        outs[name] = step(tokens[0]).to("cpu", torch.float32)
    ref = outs.get("bare", next(iter(outs.values()), None))
    exact = {name: float((o - ref).abs().max()) for name, o in outs.items()}

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    summary = {"device": device_name, "torch": torch.__version__,
               "transformers": __import__("transformers").__version__, "python": sys.version.split()[0],
               "shape": list(args.shape), "layers": args.layers, "dtype": str(dtype).removeprefix("torch."),
               "quant": args.quant, "prompt": args.prompt, "steps": args.steps, "rounds": args.rounds,
               "threads": torch.get_num_threads(), "switch_interval_s": sys.getswitchinterval(),
               "command": " ".join(sys.argv), "rows": {}, "background": backgrounds,
               "max_abs_diff_vs_bare": exact, "skipped": skipped}
    base = results.get("bare")
    for name, row in results.items():
        entry = summarise(row.pop("times"))
        entry.update(row)
        if "ops" in entry:
            entry["ops_per_layer"] = entry["ops"] / args.layers
            if base is not None and name != "bare":
                entry["vs_bare_ops"] = op_diff(row, base)
        summary["rows"][name] = entry
    if "hf" in summary["rows"]:  # x_hf: median over hf's median; x_hf_p10: the same of the p10s
        hf_row = summary["rows"]["hf"]
        for entry in list(summary["rows"].values()) + list(backgrounds.values()):
            entry["x_hf"] = entry["median_ms"] / hf_row["median_ms"]
            entry["x_hf_p10"] = entry["p10_ms"] / hf_row["p10_ms"]

    print(f"\nEager one-token decode step: {args.layers} Llama blocks of shape {list(args.shape)} (hidden, "
          f"intermediate, heads, kv heads), {summary['dtype']}, quant {args.quant}, on {device_name}, "
          f"{summary['threads']} torch threads, after {args.prompt} tokens; torch {torch.__version__}, "
          f"transformers {summary['transformers']}; {args.steps} steps x {args.rounds} rounds per row")
    cols = ["median_ms", "min_ms", "p10_ms", "p90_ms", "x_hf", "x_hf_p10", "ops", "kernel_ops", "host_syncs", "python_calls",
            "device_kernels", "cuda_launches"]
    print(f"{'row':>15} " + " ".join(f"{c:>12}" for c in cols))
    for name, entry in list(summary["rows"].items()) + list(backgrounds.items()):
        print(f"{name:>15} " + " ".join(f"{_fmt(entry.get(c)):>12}" for c in cols))
    for name, why in skipped.items():
        print(f"{name:>15} skipped: {why}")
    print("\nmax |difference| of one step against bare:", {k: f"{v:.3g}" for k, v in exact.items()})
    for name, entry in summary["rows"].items():
        diff = entry.get("vs_bare_ops")
        if diff:
            more = ", ".join(f"{k} x{v}" for k, v in diff["more"].items()) or "-"
            fewer = ", ".join(f"{k} x{v}" for k, v in diff["fewer"].items()) or "-"
            print(f"{name}: ops per step beyond bare: {more}; fewer: {fewer}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
