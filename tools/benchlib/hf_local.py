"""Hugging Face on the same device, the anchors every swarm number is read against.

Every generate call is timed per token by a streamer that stamps the host clock at each token
generate hands it (generate already waits for each token on the host, so this adds no sync): the
first interval after the prompt is the prefill (time to first token), the rest are decode steps.

  eager   : `generate` with its default (dynamic) cache, as a user runs it
  static  : `cache_implementation="static"` with transformers' own compilation of the decode step
            (`compile_config=CompileConfig(fullgraph=True, mode="reduce-overhead")`: torch.compile
            with CUDA graphs, what transformers 5 documents for fast generate) Off a CUDA device the
            static cache runs without compiling (transformers compiles on CUDA only), with a note.
Each anchor: a full-length warm-up call (for static, the one that compiles; its time is reported),
then --anchor-repeats timed calls, the fastest reported (best_of). Batches are left-padded
prompts of the swarm's lengths, with their attention mask.
"""
from __future__ import annotations

import statistics
import time

import torch
from transformers.generation.streamers import BaseStreamer


class StepClock(BaseStreamer):
    def __init__(self):
        self.stamps = []

    def put(self, value) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def load_hf(model_dir: str, quant: str, device: str):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {}
    if quant == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif quant == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.float16)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16, device_map=device, **kwargs).eval()


def free(model, device: str) -> None:
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def left_padded(prompts: list, pad_id: int = 0) -> tuple:
    """Prompts (1 x L tensors) as one left-padded batch: (input_ids, attention_mask)."""
    width = max(p.shape[1] for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - p.shape[1]:] = p[0]
        mask[row, width - p.shape[1]:] = 1
    return ids, mask


def timed_generate(model, ids, mask, new_tokens: int, **kwargs) -> dict:
    """One greedy generate of exactly new_tokens tokens; its prefill and decode-step times (s)."""
    device = model.device
    clock = StepClock()
    began = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, streamer=clock, **kwargs)
    stamps = clock.stamps  # [prompt, token 1, ..., token new_tokens]
    return {"prefill_s": stamps[1] - stamps[0], "steps": [b - a for a, b in zip(stamps[1:], stamps[2:])],
            "call_s": time.perf_counter() - began}


def decode_row(batch: int, run: dict) -> dict:
    steps = run["steps"]
    return {"batch": batch, "ms_per_token": statistics.median(steps) * 1e3,
            "ms_per_token_mean": statistics.mean(steps) * 1e3, "tokens_per_s": batch * len(steps) / sum(steps),
            "decode_steps": len(steps)}


def best_of(model, ids, mask, steps: int, repeats: int, **kwargs) -> dict:
    """A full-length warm-up call (the one that compiles, for static), then `repeats` timed calls;
    the row of the fastest (lowest p50: HF's eager step is bound by the host's CPU, which on a shared
    VM varies from call to call, and the anchor should be HF at its best), with every run's p50."""
    first = timed_generate(model, ids, mask, steps + 1, **kwargs)
    rows = [decode_row(ids.shape[0], timed_generate(model, ids, mask, steps + 1, **kwargs)) for _ in range(repeats)]
    best = min(rows, key=lambda r: r["ms_per_token"])
    return {**best, "first_call_s": first["call_s"], "p50_runs_ms": [r["ms_per_token"] for r in rows]}


def eager_anchor(model, batches: dict, steps: int, repeats: int) -> list:
    """batches: batch size -> list of prompts."""
    rows = []
    for b, prompts in batches.items():
        ids, mask = left_padded(prompts)
        rows.append(best_of(model, ids, mask, steps, repeats))
    return rows


def static_anchor(model, batches: dict, steps: int, repeats: int, compile_: bool, progress=print) -> list:
    from transformers import CompileConfig

    if compile_:
        kwargs = {"cache_implementation": "static",
                  "compile_config": CompileConfig(fullgraph=True, mode="reduce-overhead")}
    else:
        kwargs = {"cache_implementation": "static", "disable_compile": True}
    rows = []
    for b, prompts in batches.items():
        ids, mask = left_padded(prompts)
        try:
            row = best_of(model, ids, mask, steps, repeats, **kwargs)
        except Exception as exc:  # a compile failure is a result to report, not the end of the run
            row = {"batch": b, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        row["compiled"] = compile_
        rows.append(row)
        progress(f"HF static{'+compile' if compile_ else ''} batch {b}: "
                 f"{row.get('ms_per_token', float('nan')):.2f} ms/token{'  ' + row['error'] if 'error' in row else ''}")
    return rows


def ttft_local(model, prompt: torch.Tensor, repeats: int) -> dict:
    """Time to first token of generate (eager) on the prompt: one warm-up, then `repeats` timed."""
    mask = torch.ones_like(prompt)
    timed_generate(model, prompt, mask, 1)
    runs = [timed_generate(model, prompt, mask, 1)["prefill_s"] for _ in range(repeats)]
    return {"ms": statistics.median(runs) * 1e3, "all_ms": [r * 1e3 for r in runs]}
