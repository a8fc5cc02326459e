#!/usr/bin/env python
"""Benchmark the zswarm client against local Hugging Face generation of the same model, in one run.

    python tools/bench_client.py                              # the embedded SmolLM2-135M, CPU
    python tools/bench_client.py --model tiny --new-tokens 16 # a tiny random llama (quick check)
    python tools/bench_client.py --json /tmp/bench_client.json

It starts a real swarm on loopback (a DHT node here, zswarm-server processes) and measures:
  - time to first token and per-token latency of greedy generate through 1, 2, 3 and 6 hops
    (servers splitting the blocks evenly), against local HF generate: overhead per hop in ms,
    and the slope of ms/token over hops (one more hop's cost, the compute being the same);
  - forward tokens/s of a batch (model(input_ids), no cache) through 3 hops and locally;
  - recovery after a kill -9 mid-generation while a replica holds the same blocks: how long the
    client took to notice, and from noticing to the next token.
Each server and the local model use --threads torch threads; numbers are medians of --repeats.

    python tools/bench_client.py --mode spot-checks --model tiny   # the cost of verification
    python tools/bench_client.py --mode relays --repeats 5         # client relay vs server push, 2 hops

--mode relays: two servers splitting the blocks; per-token latency of local HF, of the client relaying
between the servers (relay="client", the default) and of the servers pushing to each other
(relay="server"), runs interleaved, --repeats of each, and whether each gives local HF's tokens.

--mode spot-checks: two hops, each span held by two replicas; greedy generate with spot checks at
the default rate (zswarm.defaults.SPOT_CHECK_RATE) against the same with none, runs interleaved,
--repeats of each: the per-token cost of spot checks in percent of the unchecked decode time.
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
from transformers import StoppingCriteria, StoppingCriteriaList  # noqa: E402

from zswarm.defaults import DEFAULT_MODEL_ID  # noqa: E402

HOPS = (1, 2, 3, 6)


class TokenClock(StoppingCriteria):
    """Timestamps each generated token (generate calls stopping criteria once per token)."""

    def __init__(self, on_token=None):
        self.began = time.perf_counter()
        self.times: list[float] = []
        self.on_token = on_token

    def __call__(self, input_ids, scores, **kwargs):
        self.times.append(time.perf_counter())
        if self.on_token is not None:
            self.on_token(len(self.times))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def ttft_ms(self) -> float:
        return (self.times[0] - self.began) * 1000

    def per_token_ms(self) -> float:
        return (self.times[-1] - self.times[0]) / max(len(self.times) - 1, 1) * 1000


def timed_generate(model, ids, new_tokens: int, on_token=None, **kwargs) -> TokenClock:
    clock = TokenClock(on_token)
    model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   stopping_criteria=StoppingCriteriaList([clock]), **kwargs)
    return clock


def median_generate(model, ids, args) -> dict:
    timed_generate(model, ids, 2)  # warm up: first-call costs (allocations, connections)
    clocks = [timed_generate(model, ids, args.new_tokens) for _ in range(args.repeats)]
    return {"ttft_ms": statistics.median(c.ttft_ms() for c in clocks),
            "per_token_ms": statistics.median(c.per_token_ms() for c in clocks)}


def median_forward_tokens_per_s(model, ids, repeats: int) -> float:
    with torch.no_grad():
        model(ids)  # warm up
        seconds = []
        for _ in range(repeats):
            began = time.perf_counter()
            model(ids)
            seconds.append(time.perf_counter() - began)
    return ids.numel() / statistics.median(seconds)


def even_spans(num_blocks: int, hops: int) -> list[tuple[int, int]]:
    cuts = [round(i * num_blocks / hops) for i in range(hops + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:])]


def prepare_model(ref: str, workdir: Path) -> str:
    if ref != "tiny":
        return ref
    from zswarm.models.testing import make_tiny_checkpoint

    return str(make_tiny_checkpoint("llama", workdir / "tiny-llama", num_layers=12))


def run(args) -> dict:
    from zswarm import AutoDistributedModelForCausalLM
    from zswarm.testing.launch import LocalSwarm
    from zswarm.models import resolve_model

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench-client-"))
    model_ref = prepare_model(args.model, workdir)
    source = resolve_model(model_ref)
    model_dir = str(source.path)
    if source.num_blocks < max(HOPS):
        raise SystemExit(f"{source.model_id} has {source.num_blocks} blocks; need at least {max(HOPS)}")
    generator = torch.Generator().manual_seed(0)
    vocab = int(source.config.vocab_size)
    prompt = torch.randint(0, vocab, (1, args.prompt_len), generator=generator)
    batch = torch.randint(0, vocab, (args.batch, args.batch_len), generator=generator)
    client_args = dict(wire_dtype=args.wire_dtype, show_route=False, ping_timeout=1.0, liveness_interval_s=0.5)

    from zswarm.models.testing import load_reference_model

    local = load_reference_model(model_dir)
    result = {"model": source.model_id, "num_blocks": source.num_blocks, "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens, "threads": args.threads, "wire_dtype": args.wire_dtype,
              "repeats": args.repeats, "generate": [], "forward": {}, "recovery": {}}
    result["generate"].append({"config": "local HF", "hops": 0, **median_generate(local, prompt, args)})
    result["forward"]["local_tokens_per_s"] = median_forward_tokens_per_s(local, batch, args.repeats)
    result["forward"]["batch"] = list(batch.shape)

    # Servers get the same reference as the client, so both name the model alike in the DHT.
    swarm = LocalSwarm(model_ref, source.model_id, source.num_blocks, workdir / "swarm")
    try:
        for hops in HOPS:
            servers = [swarm.start(f"h{hops}-{i}", a, b, threads=args.threads)
                       for i, (a, b) in enumerate(even_spans(source.num_blocks, hops))]
            swarm.wait_online(*servers)
            model = AutoDistributedModelForCausalLM.from_pretrained(
                model_ref, initial_peers=swarm.initial_peers, allowed_servers=[s.peer_id for s in servers],
                **client_args)
            try:
                row = {"config": f"swarm {hops} hop{'s' if hops > 1 else ''}", "hops": hops,
                       **median_generate(model, prompt, args)}
                result["generate"].append(row)
                if hops == 3:
                    result["forward"]["swarm_3_hops_tokens_per_s"] = median_forward_tokens_per_s(
                        model, batch, args.repeats)
            finally:
                model.close()
            for server in servers:
                swarm.kill(server)
        result["recovery"] = measure_recovery(swarm, source, model_ref, prompt, args, client_args)
    finally:
        swarm.close()
    base = result["generate"][0]["per_token_ms"]
    for row in result["generate"][1:]:
        row["overhead_per_hop_ms"] = (row["per_token_ms"] - base) / row["hops"]
    # The same blocks computed in every swarm row, only split differently: the slope of ms/token
    # over hops is the cost of one more hop, free of how local HF and servers differ in compute.
    rows = result["generate"][1:]
    hops = [r["hops"] for r in rows]
    ms = [r["per_token_ms"] for r in rows]
    mean_h, mean_ms = statistics.fmean(hops), statistics.fmean(ms)
    result["per_hop_slope_ms"] = (sum((h - mean_h) * (m - mean_ms) for h, m in zip(hops, ms))
                                  / sum((h - mean_h) ** 2 for h in hops))
    return result


def measure_recovery(swarm, source, model_ref, prompt, args, client_args) -> dict:
    """kill -9 the route's second server at token --kill-at; a replica holds the same blocks."""
    from zswarm import AutoDistributedModelForCausalLM

    half = source.num_blocks // 2
    servers = [swarm.start("r-a", 0, half, threads=args.threads), swarm.start("r-b", half, source.num_blocks,
               threads=args.threads), swarm.start("r-b2", half, source.num_blocks, threads=args.threads)]
    swarm.wait_online(*servers)
    model = AutoDistributedModelForCausalLM.from_pretrained(
        model_ref, initial_peers=swarm.initial_peers, allowed_servers=[s.peer_id for s in servers], **client_args)
    killed_at = {}
    try:
        with model.inference_session(max_length=args.prompt_len + args.new_tokens + 1) as session:
            def kill(n_tokens):
                if n_tokens == args.kill_at:
                    victim = next(s for s in servers if s.peer_id == session.spans[-1].peer_id)
                    killed_at["time"] = time.perf_counter()
                    killed_at["monotonic"] = time.monotonic()
                    swarm.kill(victim)

            clock = timed_generate(model, prompt, args.new_tokens, on_token=kill, session=session)
            if not session.failures:
                return {"error": "no failure was noticed"}
            noticed = session.failures[0][0]
            next_token = next(t for t in clock.times if t > killed_at["time"])
            total_ms = (next_token - killed_at["time"]) * 1000
            detect_ms = (noticed - killed_at["monotonic"]) * 1000
            return {"kill_to_detection_ms": detect_ms, "detection_to_next_token_ms": total_ms - detect_ms,
                    "kill_to_next_token_ms": total_ms, "per_token_ms_before": clock.per_token_ms(),
                    "tokens_replayed": args.prompt_len + args.kill_at - 1}
    finally:
        model.close()


def _two_hop_setup(args, prefix: str):
    """What the two-hop modes share: torch threads, the model, a seeded prompt and a LocalSwarm
    (not started) in a fresh work dir. Returns (model_ref, source, prompt, swarm)."""
    from zswarm.models import resolve_model
    from zswarm.testing.launch import LocalSwarm

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    model_ref = prepare_model(args.model, workdir)
    source = resolve_model(model_ref)
    prompt = torch.randint(0, int(source.config.vocab_size), (1, args.prompt_len),
                           generator=torch.Generator().manual_seed(0))
    return model_ref, source, prompt, LocalSwarm(model_ref, source.model_id, source.num_blocks, workdir / "swarm")


def run_spot_checks(args) -> dict:
    from zswarm import AutoDistributedModelForCausalLM
    from zswarm.defaults import SPOT_CHECK_RATE

    model_ref, source, prompt, swarm = _two_hop_setup(args, "bench-spot-checks-")
    runs: dict[float, list] = {0.0: [], SPOT_CHECK_RATE: []}
    checks = 0
    try:
        for i, (a, b) in enumerate(even_spans(source.num_blocks, 2)):
            swarm.start(f"s{i}", a, b, threads=args.threads), swarm.start(f"r{i}", a, b, threads=args.threads)
        swarm.wait_online()
        models = {rate: AutoDistributedModelForCausalLM.from_pretrained(
            model_ref, initial_peers=swarm.initial_peers, wire_dtype=args.wire_dtype, show_route=False,
            spot_check_rate=rate) for rate in runs}
        try:
            for model in models.values():
                timed_generate(model, prompt, 2)  # warm up
            for _ in range(args.repeats):  # interleaved: the box's noise falls on both alike
                for rate, model in models.items():
                    with model.inference_session(max_length=args.prompt_len + args.new_tokens) as session:
                        clock = timed_generate(model, prompt, args.new_tokens, session=session)
                        runs[rate].append(clock.per_token_ms())
                        checks += session.checks.checks if rate else 0
            distrusted = sum(len(m.swarm.manager.distrusted) for m in models.values())
        finally:
            for model in models.values():
                model.close()
    finally:
        swarm.close()
    plain, checked = statistics.median(runs[0.0]), statistics.median(runs[SPOT_CHECK_RATE])
    return {"mode": "spot-checks", "model": source.model_id, "num_blocks": source.num_blocks, "hops": 2,
            "replicas": 2, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "threads": args.threads,
            "wire_dtype": args.wire_dtype, "repeats": args.repeats, "rate": SPOT_CHECK_RATE,
            "per_token_ms": {"unchecked": plain, "checked": checked}, "runs_ms": {str(k): v for k, v in runs.items()},
            "cost_percent": 100 * (checked / plain - 1), "spot_checks": checks, "false_alarms": distrusted}


def run_relays(args) -> dict:
    """Two servers splitting the blocks; local HF, the client relaying (relay="client", the default)
    and the servers pushing (relay="server"), interleaved run by run."""
    from zswarm import AutoDistributedModelForCausalLM
    from zswarm.models.testing import load_reference_model

    model_ref, source, prompt, swarm = _two_hop_setup(args, "bench-relays-")
    local = load_reference_model(str(source.path))
    runs: dict[str, list] = {"local HF": [], "client relay": [], "push": []}
    tokens = {}
    try:
        for i, (a, b) in enumerate(even_spans(source.num_blocks, 2)):
            swarm.start(f"s{i}", a, b, threads=args.threads)
        swarm.wait_online()
        models = {"local HF": local}
        for name, relay in (("client relay", "client"), ("push", "server")):
            models[name] = AutoDistributedModelForCausalLM.from_pretrained(
                model_ref, initial_peers=swarm.initial_peers, wire_dtype=args.wire_dtype, show_route=False, relay=relay)
        try:
            for model in models.values():
                timed_generate(model, prompt, 2)  # warm up
            for _ in range(args.repeats):  # interleaved: the box's noise falls on all alike
                for name, model in models.items():
                    clock = TokenClock()
                    ids = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                         do_sample=False, stopping_criteria=StoppingCriteriaList([clock]))
                    runs[name].append(clock.per_token_ms())
                    tokens[name] = ids[0, prompt.shape[1]:].tolist()
        finally:
            for name, model in models.items():
                if name != "local HF":
                    model.close()
    finally:
        swarm.close()
    medians = {name: statistics.median(v) for name, v in runs.items()}
    return {"mode": "relays", "model": source.model_id, "num_blocks": source.num_blocks, "hops": 2,
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "threads": args.threads,
            "wire_dtype": args.wire_dtype, "repeats": args.repeats, "per_token_ms": medians, "runs_ms": runs,
            "over_local": {name: m / medians["local HF"] for name, m in medians.items()},
            "same_tokens_as_local": {name: t == tokens["local HF"] for name, t in tokens.items()}}


def print_relays(result: dict) -> None:
    print(f"model {result['model']} ({result['num_blocks']} blocks), 2 servers, prompt {result['prompt_len']}, "
          f"{result['new_tokens']} new tokens, {result['threads']} thread(s) per process, wire {result['wire_dtype']}, "
          f"median of {result['repeats']} interleaved runs")
    print(f"{'way':<14} {'ms/token':>9} {'x local':>8} {'same tokens':>12}")
    for name, ms in result["per_token_ms"].items():
        print(f"{name:<14} {ms:>9.2f} {result['over_local'][name]:>8.3f} {str(result['same_tokens_as_local'][name]):>12}")


def print_spot_checks(result: dict) -> None:
    print(f"model {result['model']} ({result['num_blocks']} blocks), 2 hops x 2 replicas, prompt "
          f"{result['prompt_len']}, {result['new_tokens']} new tokens, {result['threads']} thread(s), wire "
          f"{result['wire_dtype']}, median of {result['repeats']} interleaved runs")
    print(f"{'spot checks':<22} {'ms/token':>9}")
    print(f"{'none':<22} {result['per_token_ms']['unchecked']:>9.2f}")
    print(f"{'rate ' + format(result['rate'], 'g'):<22} {result['per_token_ms']['checked']:>9.2f}")
    print(f"cost of spot checks: {result['cost_percent']:+.1f}% per token ({result['spot_checks']} checks, "
          f"{result['false_alarms']} servers distrusted)")


def print_table(result: dict) -> None:
    print(f"model {result['model']} ({result['num_blocks']} blocks), prompt {result['prompt_len']} tokens, "
          f"{result['new_tokens']} new tokens, {result['threads']} thread(s), wire {result['wire_dtype']}")
    print(f"{'config':<14} {'hops':>4} {'TTFT ms':>9} {'ms/token':>9} {'overhead/hop ms':>16}")
    for row in result["generate"]:
        overhead = f"{row['overhead_per_hop_ms']:.2f}" if "overhead_per_hop_ms" in row else "-"
        print(f"{row['config']:<14} {row['hops']:>4} {row['ttft_ms']:>9.1f} {row['per_token_ms']:>9.2f} {overhead:>16}")
    print(f"cost of one more hop (slope of ms/token over 1, 2, 3, 6 hops): {result['per_hop_slope_ms']:.2f} ms")
    fwd = result["forward"]
    print(f"forward batch {fwd['batch'][0]}x{fwd['batch'][1]}: local {fwd['local_tokens_per_s']:.0f} tokens/s, "
          f"swarm 3 hops {fwd.get('swarm_3_hops_tokens_per_s', float('nan')):.0f} tokens/s")
    rec = result["recovery"]
    if "error" in rec:
        print(f"recovery: {rec['error']}")
    else:
        print(f"recovery after kill -9: noticed in {rec['kill_to_detection_ms']:.0f} ms, next token "
              f"{rec['detection_to_next_token_ms']:.0f} ms later (kill -> next token {rec['kill_to_next_token_ms']:.0f} ms,"
              f" {rec['tokens_replayed']} tokens replayed)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL_ID,
                        help="checkpoint dir or hub id, or 'tiny' for a random 12-block llama")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="forward batch size")
    parser.add_argument("--batch-len", type=int, default=128, help="forward sequence length")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server and for the local model")
    parser.add_argument("--wire-dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"))
    parser.add_argument("--kill-at", type=int, default=8, help="token at which the recovery run kills a server")
    parser.add_argument("--json", help="write the results as JSON to this path")
    parser.add_argument("--mode", default="hops", choices=("hops", "spot-checks", "relays"),
                        help="hops: the runs above; spot-checks: the cost of verification; relays: client relay "
                             "vs server push over 2 hops (see above)")
    args = parser.parse_args(argv)
    if args.new_tokens < 2 or args.kill_at >= args.new_tokens:
        parser.error("need --new-tokens >= 2 and --kill-at < --new-tokens")
    if args.mode == "spot-checks":
        result = run_spot_checks(args)
        print_spot_checks(result)
    elif args.mode == "relays":
        result = run_relays(args)
        print_relays(result)
    else:
        result = run(args)
        print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
