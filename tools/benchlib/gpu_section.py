"""The GPU section: a Llama-shaped model with random fp16 weights served by 2 server processes on
one device; greedy decode latency per token through them against Hugging Face `generate` of the
same checkpoint on the same device, for each --quants (none, int8, nf4 with bitsandbytes)."""
from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import torch

from wire import ZmqTransport

from .chain_client import Chain, server_info
from .random_llama import SHAPES, make_random_llama
from .server_chain import start_chain


def swarm_decode(model_dir: str, servers: list, device: str, prompt: torch.Tensor, new_tokens: int) -> list:
    """Greedy decoding through the chain; seconds per generated token (prefill excluded)."""
    from zswarm.models import load_client_parts, resolve_model

    parts = load_client_parts(resolve_model(model_dir), dtype=torch.float16, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    async def run():
        transport = ZmqTransport()
        chain = await Chain(transport, servers).open(prompt.shape[1] + new_tokens + 1)
        times = []
        with torch.inference_mode():
            hidden = parts.embed(prompt.to(device))
            for i in range(new_tokens + 1):
                began = time.perf_counter()
                out = await chain.step(hidden.to("cpu", torch.float16))
                logits = parts.head(parts.norm(out.to(device)[:, -1:]))
                next_id = logits.argmax(-1)
                hidden = parts.embed(next_id)
                sync()
                if i:  # step 0 is the prefill
                    times.append(time.perf_counter() - began)
        await chain.close()
        await transport.close()
        return times
    return asyncio.run(run())


def local_generate(model_dir: str, quant: str, device: str, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds per token of HF generate on one device: (time of N tokens - time of 1) / (N - 1)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {}
    if quant == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif quant == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.float16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16, device_map=device, **kwargs).eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    ids = prompt.to(device)

    def timed(n):
        sync()
        began = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        sync()
        return time.perf_counter() - began
    try:
        timed(2)  # warm-up
        per_token = min((timed(new_tokens) - timed(1)) / (new_tokens - 1) for _ in range(2))
    finally:
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return per_token


def gpu_section(args, log_dir: Path) -> list:
    from zswarm.server.quant import QuantizationUnavailable, check_quant_available

    device = args.gpu_device
    model_dir = str(make_random_llama(Path(args.gpu_model_dir or log_dir / f"llama-{args.gpu_shape}-random"),
                                      args.gpu_shape, device))
    layers = SHAPES[args.gpu_shape]["num_hidden_layers"]
    half = layers // 2
    prompt = torch.randint(0, SHAPES[args.gpu_shape]["vocab_size"], (1, args.prompt_tokens),
                           generator=torch.Generator().manual_seed(0))
    rows = []
    for quant in args.quants:
        row = {"quant": quant, "shape": args.gpu_shape, "servers": 2, "device": device}
        try:
            check_quant_available(quant, device)
        except QuantizationUnavailable as exc:
            row["skipped"] = str(exc)
            rows.append(row)
            continue
        extra = ["--device", device, "--dtype", "float16", "--quant", quant, "--attn-cache-tokens", 8192,
                 "--max-session-length", 4096]
        began = time.monotonic()
        servers = start_chain(model_dir, [(0, half), (half, layers)], extra, log_dir, args.timeout,
                              measure_first=True)
        row["servers_up_s"] = time.monotonic() - began
        try:
            info = asyncio.run(server_info(servers[0]))
            row.update({k: info[k] for k in ("inference_rps", "forward_rps", "throughput")})
            times = swarm_decode(model_dir, servers, device, prompt, args.new_tokens)
        finally:
            for server in servers:
                server.stop()
        row["swarm_ms_per_token"] = statistics.median(times) * 1e3
        row["swarm_ms_per_token_mean"] = statistics.mean(times) * 1e3
        try:
            row["local_ms_per_token"] = local_generate(model_dir, quant, device, prompt, args.new_tokens) * 1e3
            row["swarm_over_local"] = row["swarm_ms_per_token"] / row["local_ms_per_token"]
        except Exception as exc:  # e.g. a transformers/bitsandbytes combination that cannot load
            row["local_error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"\nGPU: Llama-{args.gpu_shape}-shaped, random fp16 weights, 2 server processes on one {name}; "
          f"prompt {args.prompt_tokens}, {args.new_tokens} new tokens, greedy")
    print(f"{'quant':>6} {'swarm ms/token':>15} {'local HF ms/token':>18} {'swarm/local':>12} "
          f"{'measured steps/s/block':>23}  note")
    for r in rows:
        if "skipped" in r:
            print(f"{r['quant']:>6} {'-':>15} {'-':>18} {'-':>12} {'-':>23}  skipped: {r['skipped'][:80]}")
            continue
        local = r.get("local_ms_per_token")
        print(f"{r['quant']:>6} {r['swarm_ms_per_token']:>15.2f} {local if local is None else f'{local:.2f}':>18} "
              f"{r.get('swarm_over_local', float('nan')):>12.2f} {r['inference_rps']:>23.1f}  "
              f"{r.get('local_error', '')[:80]}")
    return rows
