#!/usr/bin/env python
"""Benchmark zswarm-server: real server processes, a minimal client on wire's transport.

CPU section (always, unless --skip-cpu), on a tiny Llama (or --cpu-model):
  overhead    : one decode step through one server process minus the same step on the same
                blocks called in-process (median µs)
  concurrency : decode tokens/s of 1, 8 and 32 sessions stepping at once through one server

GPU section (--gpu), issue 5's proof: a Llama-7B-shaped model with random fp16 weights (written
as safetensors into a temporary dir), served by 2 server processes on one GPU (blocks 0:16 and
16:32); greedy decode latency per token through the swarm against Hugging Face `generate` of the
same checkpoint on the same GPU; for --quant none, int8 and nf4 (bitsandbytes).

    python tools/bench_server.py                          # CPU table
    python tools/bench_server.py --gpu --json out.json    # CPU + GPU tables, and JSON
    python tools/bench_server.py --gpu --gpu-device cpu --gpu-shape small --skip-cpu   # dry run of the GPU path
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as zswarm-server does: no spinning OpenMP workers

import torch  # noqa: E402

from wire import ZmqTransport  # noqa: E402

SERVING = re.compile(r"serving (\S+) blocks (\d+):(\d+) of (\d+) on .* at (tcp://\S+) \(peer (\w+)\)")
DHT_AT = re.compile(r"others join this swarm with --initial-peers (\S+)\)")
SHAPES = {  # LlamaConfig keywords
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
               num_hidden_layers=32, vocab_size=32000, max_position_embeddings=4096),
    "small": dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=8,
                  num_hidden_layers=4, vocab_size=1000, max_position_embeddings=1024),
}


# ---------------------------------------------------------------------------- server processes
class ServerProcess:
    def __init__(self, args: list, log_dir: Path, name: str, env: dict):
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "zswarm.server.cli", *map(str, args)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.address = self.dht_address = None
        self.start = self.end = None

    def wait_serving(self, timeout: float) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            match = SERVING.search(text)
            if match:
                self.dht_address = DHT_AT.search(text).group(1)
                self.start, self.end, self.address = int(match.group(2)), int(match.group(3)), match.group(5)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"server did not come up; log {self.log_path}:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def start_chain(model_dir: str, ranges: list, extra: list, log_dir: Path, timeout: float,
                measure_first: bool = False) -> list:
    """Servers for `ranges`, one after another; the first starts the swarm (and, with
    `measure_first`, measures its throughput; the others announce a fixed one)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    servers = []
    try:
        for i, (start, end) in enumerate(ranges):
            join = ["--new-swarm"] if i == 0 else ["--initial-peers", servers[0].dht_address]
            rate = (["--throughput-cache", log_dir / "throughput.json"] if measure_first and i == 0
                    else ["--throughput", 1])
            args = [model_dir, *join, "--block-indices", f"{start}:{end}", *rate, *extra]
            servers.append(ServerProcess(args, log_dir, f"server{i}-{start}-{end}", env).wait_serving(timeout))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


# ---------------------------------------------------------------------------- minimal client
class Chain:
    """One inference session on each server of a chain, stepped in order (the protocol, bare)."""

    def __init__(self, transport, servers):
        self.transport, self.servers, self.sessions, self.position = transport, servers, [], 0

    async def open(self, max_length: int, batch_size: int = 1) -> "Chain":
        for s in self.servers:
            reply = await self.transport.call(s.address, "open_session", {
                "start": s.start, "end": s.end, "max_length": max_length, "batch_size": batch_size,
                "wait_timeout": 30}, timeout=60)
            self.sessions.append(reply.meta["session_id"])
        return self

    async def step(self, hidden: torch.Tensor) -> torch.Tensor:
        for s, sid in zip(self.servers, self.sessions):
            hidden = (await self.transport.call(s.address, "inference_step", {
                "session_id": sid, "position": self.position}, [hidden], timeout=120)).tensors[0]
        self.position += hidden.shape[1]
        return hidden

    async def close(self) -> None:
        for s, sid in zip(self.servers, self.sessions):
            await self.transport.call(s.address, "close_session", {"session_id": sid}, timeout=30)


def median_us(samples: list) -> float:
    return statistics.median(samples) * 1e6


def p10_us(samples: list) -> float:
    return sorted(samples)[len(samples) // 10] * 1e6


# ---------------------------------------------------------------------------- CPU section
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


# ---------------------------------------------------------------------------- GPU section
def make_random_llama(out: Path, shape: str, device: str) -> Path:
    """A Llama checkpoint of the given shape with random fp16 weights, one safetensors shard per block."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, dtype="float16")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    gen = torch.Generator(device=device).manual_seed(0)
    groups: dict = {}
    for name, size in shapes.items():
        match = re.match(r"model\.layers\.(\d+)\.", name)
        groups.setdefault(f"block{int(match.group(1)):03d}" if match else "rest", []).append((name, size))
    weight_map, total = {}, 0
    for group, items in groups.items():
        tensors = {}
        for name, size in items:
            if name.endswith("norm.weight"):
                t = torch.ones(size, dtype=torch.float16)
            else:
                t = (torch.randn(size, generator=gen, device=device, dtype=torch.float16) * 0.02).cpu()
            tensors[name] = t
            total += t.numel() * 2
        filename = f"model-{group}.safetensors"
        save_file(tensors, str(out / filename), metadata={"format": "pt"})
        weight_map.update({name: filename for name in tensors})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    config.save_pretrained(str(out))
    return out


async def server_info(server) -> dict:
    transport = ZmqTransport()
    try:
        return (await transport.call(server.address, "info", timeout=30)).meta
    finally:
        await transport.close()


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the results as JSON to this path")
    parser.add_argument("--skip-cpu", action="store_true", help="skip the CPU section")
    parser.add_argument("--cpu-model", help="checkpoint dir for the CPU section (default: a tiny random Llama)")
    parser.add_argument("--steps", type=int, default=200, help="decode steps timed for the overhead")
    parser.add_argument("--prefill", type=int, default=8, help="prompt tokens before decoding (CPU)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="concurrent sessions")
    parser.add_argument("--decode-steps", type=int, default=32, help="decode steps per session (concurrency)")
    parser.add_argument("--gpu", action="store_true", help="run the GPU section")
    parser.add_argument("--gpu-device", default="cuda", help="device of the GPU section (cpu: a dry run)")
    parser.add_argument("--gpu-shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--gpu-model-dir", help="where to write (or reuse) the random checkpoint")
    parser.add_argument("--quants", nargs="+", choices=["none", "int8", "nf4"], default=["none", "int8", "nf4"])
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a server to come up")
    parser.add_argument("--work-dir", help="logs and checkpoints (default: a temporary dir)")
    args = parser.parse_args(argv)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_server_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"logs and checkpoints in {work}")
    results = {"torch": torch.__version__, "command": " ".join(sys.argv)}
    if not args.skip_cpu:
        results["cpu"] = cpu_section(args, work)
    if args.gpu:
        results["gpu"] = gpu_section(args, work)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
