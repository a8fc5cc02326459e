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
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as zswarm-server does: no spinning OpenMP workers

import torch  # noqa: E402

# The sections and what they share live in tools/benchlib/, one concept a module (its __init__ lists them).
from benchlib.cpu_section import cpu_section  # noqa: E402
from benchlib.gpu_section import gpu_section  # noqa: E402
from benchlib.random_llama import SHAPES  # noqa: E402


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
