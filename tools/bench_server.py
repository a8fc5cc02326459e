#!/usr/bin/env python
"""Benchmark zswarm-server: real server processes, a minimal client on wire's transport.

CPU section (always, unless --skip-cpu), on a tiny Llama (or --cpu-model):
  overhead    : one decode step through one server process minus the same step on the same
                blocks called in-process (median µs)
  concurrency : decode tokens/s of --concurrency sessions (default 1, 8, 32) stepping at once
                through one server, prompts of different lengths; agg(N)/agg(1), per-session p50

GPU section (--gpu), issue 18's bar in one run: a Llama-7B-shaped model with random fp16 weights
(written as safetensors into a temporary dir), served by 2 server processes on one GPU (blocks
0:16 and 16:32), against Hugging Face on the same GPU. Parts (--gpu-parts, default all):
  churn       : p50 per token of the 1st, 2nd and 100th session the servers serve
  concurrency : 1/8/32 client sessions (client processes) decoding at once: aggregate tokens/s,
                per-session p50, max p50 / single-session p50; then the same sessions with headless
                clients (no client GPU work: the servers' capacity, as for clients on other machines)
  ttft        : time to first token of a 512-token prompt, swarm vs local HF
  anchors     : HF eager generate and HF static cache + torch.compile at batch 1/8/32, and the
                memory-bandwidth floor (weight bytes / measured copy bandwidth)
  quants      : --quants none, int8, nf4 (bitsandbytes): one session vs local HF, per token
The span's eager step vs HF's eager forward of the same blocks is tools/bench_decode.py.

    python tools/bench_server.py                          # CPU table
    python tools/bench_server.py --gpu --skip-cpu --json out.json      # the GPU tables, and JSON
    python tools/bench_server.py --gpu --skip-cpu --gpu-parts churn    # one part
    python tools/bench_server.py --gpu --gpu-device cpu --gpu-shape small --skip-cpu   # dry run of the GPU path
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as zswarm-server does: no spinning OpenMP workers

import torch  # noqa: E402

# The sections and what they share live in tools/benchlib/, one concept a module (its __init__ lists them).
from benchlib.cpu_section import cpu_section  # noqa: E402
from benchlib.gpu_section import PARTS, gpu_section  # noqa: E402
from benchlib.random_llama import SHAPES  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the results as JSON to this path")
    parser.add_argument("--skip-cpu", action="store_true", help="skip the CPU section")
    parser.add_argument("--cpu-model", help="checkpoint dir for the CPU section (default: a tiny random Llama)")
    parser.add_argument("--steps", type=int, default=200, help="decode steps timed for the overhead")
    parser.add_argument("--prefill", type=int, default=8, help="prompt tokens before decoding (CPU)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32],
                        help="concurrent sessions (CPU and GPU), and the anchors' batch sizes")
    parser.add_argument("--decode-steps", type=int, default=32, help="decode steps per session (concurrency, anchors)")
    parser.add_argument("--prompt-range", type=int, nargs=2, default=[8, 64], metavar=("LO", "HI"),
                        help="concurrent sessions' prompt lengths, spread evenly over [LO, HI]")
    parser.add_argument("--gpu", action="store_true", help="run the GPU section")
    parser.add_argument("--gpu-parts", nargs="+", choices=list(PARTS), default=list(PARTS),
                        help="which parts of the GPU section to run")
    parser.add_argument("--gpu-device", default="cuda", help="device of the GPU section (cpu: a dry run)")
    parser.add_argument("--gpu-shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--gpu-model-dir", help="where to write (or reuse) the random checkpoint")
    parser.add_argument("--quants", nargs="+", choices=["none", "int8", "nf4"], default=["none", "int8", "nf4"])
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt of the single sessions (churn, quants)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded by the single sessions")
    parser.add_argument("--client-procs", type=int, default=4, help="client processes the GPU concurrency spreads over")
    parser.add_argument("--churn-sessions", type=int, default=100, help="sessions of the churn; the last is measured")
    parser.add_argument("--churn-tokens", type=int, default=8, help="tokens each churn filler session decodes")
    parser.add_argument("--ttft-tokens", type=int, default=512, help="prompt length of the time-to-first-token part")
    parser.add_argument("--ttft-repeats", type=int, default=3, help="timed prefills (after one warm-up)")
    parser.add_argument("--anchor-repeats", type=int, default=2,
                        help="timed HF calls per anchor and quant row after a full warm-up; the fastest counts")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="the static-cache anchor without torch.compile")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a server to come up")
    parser.add_argument("--work-dir", help="logs and checkpoints (default: a temporary dir)")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.prompt_range[0] < 1 or args.prompt_range[0] > args.prompt_range[1]:
        parser.error("--concurrency must be >= 1 and --prompt-range LO HI must satisfy 1 <= LO <= HI")
    if args.decode_steps < 2 or args.new_tokens < 2 or args.churn_sessions < 1 or args.churn_tokens < 1 \
            or args.anchor_repeats < 1:
        parser.error("--decode-steps and --new-tokens must be >= 2, --churn-sessions and --churn-tokens >= 1")

    # stopped from outside (timeout, kill): unwind, so the finally blocks stop the server processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_server_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"logs and checkpoints in {work}")
    import transformers

    results = {"torch": torch.__version__, "transformers": transformers.__version__, "command": " ".join(sys.argv),
               "args": vars(args)}
    try:
        if not args.skip_cpu:
            results["cpu"] = cpu_section(args, work)
        if args.gpu:
            results["gpu"] = {}
            gpu_section(args, work, results["gpu"])  # fills it part by part
    finally:  # what was measured is written even when a later part fails or the run is stopped
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
            print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
