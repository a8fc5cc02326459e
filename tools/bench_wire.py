#!/usr/bin/env python
"""Benchmark wire/ over tcp loopback: RpcServer + ZmqTransport against a bare zmq.asyncio
DEALER/ROUTER ping-pong of the same bytes, measured in the same run.

Each case runs its server in a child process (as a real server would be) and times sequential
round trips (one request in flight) of an echo: the reply carries the same tensor back.

  decode step : 1x1x4096 fp16   (8 KiB)      bar: real p50 <= 1.5x bare p50
  prefill     : 1x512x4096 fp16 (4 MiB)      bar: >= 1 GB/s of tensor bytes (one way)
  CURVE       : the same, encrypted           bar: decode p50 <= 1.15x plaintext decode p50

"wire" rows are plaintext (--insecure-plaintext servers); "curve" rows the same echo with CURVE
on, as zswarm runs by default. Both sets run interleaved in one process, so the ratio compares
like with like; --curve or --plaintext runs one set only.

The prefill path copies nothing in user space: the tensor's memory goes to libzmq as is, and the
received frame becomes the tensor (tests/wire/test_wire_envelope.py pins both). perf on the
2-core dev box: ~80% of a 4 MiB round trip's CPU is libzmq's I/O threads in the kernel's TCP
copies, for ours and bare zmq alike: ours tracks bare zmq and the machine sets both, so judge
the 1 GB/s bar on a quiet machine with cores to spare, and read the ratio to bare everywhere.

It also measures the lz4 codec (encode + decode CPU time, ratio) on fp16 and bf16 activations
and prints the link speed below which compressing pays: saved bytes / extra CPU seconds.

    python tools/bench_wire.py                 # table
    python tools/bench_wire.py --json out.json # table + JSON
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's wire, also in the servers

import torch
import zmq
import zmq.asyncio

from wire import RpcServer, ZmqTransport
from wire.codec import decode_tensor, encode_tensor
from wire.envelope import Message, encode_message

SHAPES = {"decode": (1, 1, 4096), "prefill": (1, 512, 4096)}
DECODE_BAR = 1.5
PREFILL_BAR_GBPS = 1.0
CURVE_DECODE_BAR = 1.15  # issue 14: CURVE's decode round trip within 1.15x of plaintext's
SECURITY_CASES = {"plaintext": "wire", "curve": "curve"}


# ---------------------------------------------------------------- servers (child processes)

async def serve_real(compression: str, security: str) -> None:
    async def echo(request):
        return {}, request.tensors
    server = RpcServer({"echo": echo}, compression=compression, insecure_plaintext=security == "plaintext")
    await server.start()
    print("ready", server.address, flush=True)
    await asyncio.Event().wait()


async def serve_bare() -> None:
    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print("ready", f"tcp://127.0.0.1:{port}", flush=True)
    while True:  # echo every message as it came: [identity, payload]
        frames = await sock.recv_multipart(copy=False)
        await sock.send_multipart(frames, copy=False)


class Child:
    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", *args],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.close()
            raise RuntimeError(f"benchmark server failed to start: {line!r}")
        self.address = line.split()[1]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


# ---------------------------------------------------------------- clients

def summarize(name: str, kind: str, compression: str, times: list[float], wire_bytes: int,
              tensor_bytes: int) -> dict:
    # wire_bytes counts our frames as encoded, before CURVE adds its ~33 bytes of box per frame
    times = sorted(times)
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    return {"case": name, "size": kind, "compression": compression, "iters": len(times),
            "p50_us": p50 * 1e6, "p99_us": p99 * 1e6, "wire_bytes": wire_bytes,
            "tensor_bytes": tensor_bytes, "gbps_one_way": tensor_bytes / p50 / 1e9}


class BareClient:
    """A zmq.asyncio DEALER doing the plainest ping-pong of one payload frame."""

    def __init__(self, address: str, payload: bytes):
        self.sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.payload = payload
        self.copy = len(payload) < 65536  # pyzmq's advice: copy small messages, not large ones

    async def round_trip(self) -> None:
        await self.sock.send_multipart([self.payload], copy=self.copy)
        await self.sock.recv_multipart(copy=self.copy)


class WireClient:
    def __init__(self, transport: ZmqTransport, address: str, x: torch.Tensor):
        self.transport, self.address, self.x = transport, address, x

    async def round_trip(self) -> None:
        await self.transport.call(self.address, "echo", None, [self.x], timeout=30)


async def measure(cases: dict, iters: dict, warmup: int, rounds: int) -> dict:
    """Time every case in `rounds` interleaved blocks, so load from elsewhere on the machine
    falls on all cases alike. The order is shuffled each round: a block runs slower after a
    CPU-heavy one (an lz4 prefill), and a fixed order always put the same case there."""
    times = {name: [] for name in cases}
    for name, client in cases.items():
        for _ in range(warmup):
            await client.round_trip()
    order = list(cases)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            client, block = cases[name], times[name]
            for _ in range(max(1, iters[name[1]] // rounds)):
                t0 = time.perf_counter()
                await client.round_trip()
                block.append(time.perf_counter() - t0)
    return times


def activations(kind: str, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*SHAPES[kind], generator=g).to(dtype)


def run_round_trips(args) -> list[dict]:
    iters = {"decode": args.decode_iters, "prefill": args.prefill_iters}
    xs = {kind: activations(kind, torch.float16) for kind in SHAPES}
    children = {"bare": Child("bare")}
    try:
        for compression in args.compressions:
            for security in args.security:
                children[compression, security] = Child("real", compression, security)

        async def main():
            cases, transports = {}, []
            for kind, x in xs.items():
                cases[("bare zmq", kind, "-")] = BareClient(children["bare"].address, x.numpy().tobytes())
            for compression in args.compressions:
                for security in args.security:
                    # plaintext allowed so that one transport kind dials both; CURVE servers'
                    # addresses name their key, and are dialled with it
                    transport = ZmqTransport(compression=compression, insecure_plaintext=True)
                    transports.append(transport)
                    address = children[compression, security].address
                    for kind, x in xs.items():
                        cases[(SECURITY_CASES[security], kind, compression)] = WireClient(transport, address, x)
            try:
                return await measure(cases, iters, args.warmup, args.rounds)
            finally:
                for t in transports:
                    await t.close()

        times = asyncio.run(main())
    finally:
        for child in children.values():
            child.close()
    rows = []
    for (case, kind, compression), ts in times.items():
        x = xs[kind]
        tensor_bytes = x.numel() * x.element_size()
        wire_bytes = tensor_bytes if case == "bare zmq" else sum(
            memoryview(f).nbytes for f in encode_message(Message("echo", {}, [x], 1), compression=compression))
        rows.append(summarize(case, kind, compression, ts, wire_bytes, tensor_bytes))
    return rows


# ---------------------------------------------------------------- codec cost vs link speed

def codec_costs(reps: int) -> list[dict]:
    out = []
    for dtype in (torch.float16, torch.bfloat16):
        x = activations("prefill", dtype, seed=1)
        raw = x.numel() * x.element_size()
        timings = {}
        for compression in ("none", "lz4"):
            enc, dec = [], []
            for _ in range(reps):
                t0 = time.perf_counter()
                desc, payload = encode_tensor(x, compression=compression)
                t1 = time.perf_counter()
                decode_tensor(desc, payload)
                t2 = time.perf_counter()
                enc.append(t1 - t0)
                dec.append(t2 - t1)
            timings[compression] = (statistics.median(enc), statistics.median(dec), len(payload), desc["codec"])
        extra_s = sum(timings["lz4"][:2]) - sum(timings["none"][:2])
        saved = raw - timings["lz4"][2]
        pays_below = saved / extra_s if saved > 0 and extra_s > 0 else 0.0
        out.append({"dtype": str(dtype).replace("torch.", ""), "codec": timings["lz4"][3],
                    "ratio": timings["lz4"][2] / raw, "encode_ms": timings["lz4"][0] * 1e3,
                    "decode_ms": timings["lz4"][1] * 1e3, "raw_encode_decode_ms": sum(timings["none"][:2]) * 1e3,
                    "pays_below_MBps": pays_below / 1e6, "pays_below_Mbitps": pays_below * 8 / 1e6})
    return out


# ---------------------------------------------------------------- report

def curve_verdict(rows: list[dict], compression: str) -> dict:
    by = {(r["case"], r["size"], r["compression"]): r for r in rows}
    ratios = {kind: by[("curve", kind, compression)]["p50_us"] / by[("wire", kind, compression)]["p50_us"]
              for kind in SHAPES}
    return {"compression": compression, "curve_decode_ratio": ratios["decode"],
            "curve_prefill_ratio": ratios["prefill"], "curve_decode_bar": CURVE_DECODE_BAR,
            "curve_ok": ratios["decode"] <= CURVE_DECODE_BAR}


def verdict(rows: list[dict], default: str) -> dict:
    by = {(r["case"], r["size"], r["compression"]): r for r in rows}
    bare_decode = by[("bare zmq", "decode", "-")]["p50_us"]
    real_decode = by[("wire", "decode", default)]["p50_us"]
    prefill = by[("wire", "prefill", default)]["gbps_one_way"]
    bare_prefill = by[("bare zmq", "prefill", "-")]["gbps_one_way"]
    return {"compression": default, "decode_ratio_to_bare": real_decode / bare_decode,
            "decode_bar": DECODE_BAR, "decode_ok": real_decode / bare_decode <= DECODE_BAR,
            "prefill_gbps_one_way": prefill, "bare_prefill_gbps_one_way": bare_prefill,
            "prefill_ratio_to_bare": prefill / bare_prefill, "prefill_bar_gbps": PREFILL_BAR_GBPS,
            "prefill_ok": prefill >= PREFILL_BAR_GBPS}


def print_report(rows, codec, checks, curve_checks=()) -> None:
    print(f"{'case':<9} {'size':<8} {'compr':<6} {'iters':>6} {'p50 us':>9} {'p99 us':>9} "
          f"{'wire bytes':>11} {'GB/s 1-way':>10}")
    for r in rows:
        print(f"{r['case']:<9} {r['size']:<8} {r['compression']:<6} {r['iters']:>6} {r['p50_us']:>9.1f} "
              f"{r['p99_us']:>9.1f} {r['wire_bytes']:>11} {r['gbps_one_way']:>10.2f}")
    print()
    print(f"{'lz4 on 1x512x4096':<18} {'codec':<5} {'ratio':>6} {'enc ms':>7} {'dec ms':>7} "
          f"{'raw ms':>7} {'pays below':>18}")
    for c in codec:
        pays = f"{c['pays_below_MBps']:.0f} MB/s ({c['pays_below_Mbitps']:.0f} Mbit/s)" if c["pays_below_MBps"] else "never"
        print(f"{c['dtype']:<18} {c['codec']:<5} {c['ratio']:>6.3f} {c['encode_ms']:>7.2f} {c['decode_ms']:>7.2f} "
              f"{c['raw_encode_decode_ms']:>7.2f} {pays:>18}")
    print()
    for check in checks:
        print(f"compression={check['compression']}: decode p50 = {check['decode_ratio_to_bare']:.2f}x bare "
              f"(bar {DECODE_BAR}x: {'ok' if check['decode_ok'] else 'FAIL'}); prefill ours "
              f"{check['prefill_gbps_one_way']:.2f} GB/s vs bare zmq {check['bare_prefill_gbps_one_way']:.2f} GB/s "
              f"= {check['prefill_ratio_to_bare']:.2f}x bare (bar {PREFILL_BAR_GBPS} GB/s: "
              f"{'ok' if check['prefill_ok'] else 'FAIL'})")
    for check in curve_checks:
        print(f"compression={check['compression']}: CURVE decode p50 = {check['curve_decode_ratio']:.3f}x plaintext "
              f"(bar {CURVE_DECODE_BAR}x: {'ok' if check['curve_ok'] else 'FAIL'}); CURVE prefill p50 = "
              f"{check['curve_prefill_ratio']:.2f}x plaintext (no bar: libsodium's box over every byte)")
    print("GB/s 1-way = tensor bytes / round-trip p50: an echo carries them both ways, so the link "
          "moves twice that; bare zmq (same bytes, no protocol) shows what this machine's loopback allows.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decode-iters", type=int, default=2000)
    parser.add_argument("--prefill-iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved blocks per case")
    parser.add_argument("--codec-reps", type=int, default=10)
    parser.add_argument("--compressions", nargs="+", default=["none", "auto", "lz4"],
                        choices=["none", "auto", "lz4"])
    security = parser.add_mutually_exclusive_group()
    security.add_argument("--curve", dest="security", action="store_const", const=["curve"],
                          help="only the CURVE cases (default: CURVE and plaintext, interleaved, and their ratio)")
    security.add_argument("--plaintext", dest="security", action="store_const", const=["plaintext"],
                          help="only the plaintext cases")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)  # internal: child server
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve_bare() if args.serve[0] == "bare" else serve_real(*args.serve[1:3]))
        return 0
    args.security = args.security or ["plaintext", "curve"]
    rows = run_round_trips(args)
    codec = codec_costs(args.codec_reps)
    checks = [verdict(rows, c) for c in args.compressions] if "plaintext" in args.security else []
    curve_checks = [curve_verdict(rows, c) for c in args.compressions] if len(args.security) == 2 else []
    print_report(rows, codec, checks, curve_checks)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"round_trips": rows, "codec": codec, "checks": checks, "curve_checks": curve_checks,
                       "host": {"cpus": os.cpu_count(), "torch": torch.__version__,
                                "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}}, f, indent=2)
    passed = all(c["decode_ok"] and c["prefill_ok"] for c in checks) and all(c["curve_ok"] for c in curve_checks)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
