#!/usr/bin/env python
"""Benchmark the swarm over emulated distances: per-token latency, time to first token and
tokens/s of greedy generation, with every server behind a delay relay (tools/benchlib/delay_proxy.py).

    python tools/bench_wan.py                                   # the standard scenarios, a tiny Llama
    python tools/bench_wan.py --scenarios uniform-3x100 --repeats 5 --json /tmp/wan.json
    python tools/bench_wan.py --list                            # the scenarios, as data

Scenarios are data (benchlib/wan_swarm.py: `Scenario`): the client's region, each server's region,
and the round trip between regions. Within one scenario, each client mode (--modes, ClientConfig
settings) runs on the same swarm, interleaved repeat by repeat; numbers are medians of --repeats.
Tokens of every mode are compared with the first mode's: a mode that changes them is reported.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, bench_client
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from benchlib.wan_swarm import Scenario, near_servers, two_continents, uniform  # noqa: E402
from bench_client import TokenClock  # noqa: E402

SCENARIOS = {
    "near-3": near_servers(3, 100, 5),      # the bar: client 100 ms from 3 servers 5 ms apart
    "uniform-3x100": uniform(3, 100),       # the bar: everybody 100 ms from everybody
    "uniform-3x20": uniform(3, 20),
    "uniform-2x100": uniform(2, 100),
    "two-continents": two_continents(),
}
DEFAULT_SCENARIOS = ("near-3", "uniform-3x100")

# Client modes compared within a scenario: ClientConfig settings. The first is the baseline.
# "generate": keyword arguments of generate (speculative decoding by prompt lookup).
MODES: dict[str, dict] = {
    "client-relay": {"relay": "client"},
    "push": {"relay": "server"},
    "push+lookup": {"relay": "server", "generate": {"prompt_lookup_num_tokens": 4}},
}
DEFAULT_MODES = ("client-relay", "push")


def available_modes() -> dict[str, dict]:
    """The modes whose settings this checkout's ClientConfig has."""
    from zswarm.client.config import ClientConfig

    fields = set(ClientConfig.__dataclass_fields__) | {"generate"}
    return {name: mode for name, mode in MODES.items() if set(mode) <= fields} or {"default": {}}


def client_settings(mode: dict) -> dict:
    return {k: v for k, v in mode.items() if k != "generate"}


def run_scenario(scenario: Scenario, model_dir: str, args, modes: dict[str, dict]) -> dict:
    from zswarm import AutoDistributedModelForCausalLM
    from zswarm.models import resolve_model
    from benchlib.wan_swarm import WanSwarm

    source = resolve_model(model_dir)
    prompt = make_prompt(args.prompt, args.prompt_len, int(source.config.vocab_size))
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-wan-{scenario.name}-"))
    rows = {name: [] for name in modes}
    tokens = {}
    with WanSwarm(scenario, model_dir, source.model_id, source.num_blocks, workdir, threads=args.threads) as wan:
        models = {name: AutoDistributedModelForCausalLM.from_pretrained(
            model_dir, initial_peers=wan.initial_peers, wire_dtype="float32", show_route=False,
            **client_settings(mode)) for name, mode in modes.items()}
        try:
            for name, model in models.items():  # warm up: connections, RTTs, first-call costs
                timed_tokens(model, prompt, 2, **modes[name].get("generate", {}))
            for _ in range(args.repeats):
                for name, model in models.items():
                    clock, ids = timed_tokens(model, prompt, args.new_tokens, **modes[name].get("generate", {}))
                    rows[name].append((clock.ttft_ms(), clock.per_token_ms()))
                    tokens.setdefault(name, ids)
        finally:
            for model in models.values():
                model.close()
    baseline = next(iter(modes))
    out = {"scenario": scenario.name, "about": scenario.about, "rtt_ms": scenario.rtt_ms, "modes": []}
    for name, samples in rows.items():
        ttft = statistics.median(s[0] for s in samples)
        per_token = statistics.median(s[1] for s in samples)
        out["modes"].append({"mode": name, "settings": modes[name], "ttft_ms": ttft, "per_token_ms": per_token,
                             "tokens_per_s": 1000.0 / per_token, "ttft_over_per_token": ttft / per_token,
                             "same_tokens_as_" + baseline: tokens.get(name) == tokens.get(baseline),
                             "samples": samples})
    base = out["modes"][0]["per_token_ms"]
    for row in out["modes"]:
        row["per_token_vs_" + baseline] = row["per_token_ms"] / base
    return out


class CountingClock(TokenClock):
    """TokenClock that also counts tokens: a speculative step may add several at once."""

    def __init__(self):
        super().__init__()
        self.lengths: list[int] = []

    def __call__(self, input_ids, scores, **kwargs):
        self.lengths.append(int(input_ids.shape[1]))
        return super().__call__(input_ids, scores, **kwargs)

    def per_token_ms(self) -> float:
        tokens = self.lengths[-1] - self.lengths[0]
        return (self.times[-1] - self.times[0]) / max(tokens, 1) * 1000


def timed_tokens(model, prompt, new_tokens: int, **generate):
    """Greedy generate of exactly `new_tokens`: (its clock, the ids it made)."""
    from transformers import StoppingCriteriaList

    clock = CountingClock()
    out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         stopping_criteria=StoppingCriteriaList([clock]), **generate)
    return clock, out[0, prompt.shape[1]:].tolist()


def make_prompt(kind: str, length: int, vocab: int) -> torch.Tensor:
    """"random" ids, or "repetitive": one random stretch of 8 repeated (text being edited, say),
    which is what prompt lookup drafts from."""
    ids = torch.randint(0, vocab, (1, length if kind == "random" else 8), generator=torch.Generator().manual_seed(0))
    return ids if kind == "random" else ids.repeat(1, -(-length // 8))[:, :length]


def run_failover(model_dir: str, args) -> dict:
    """kill -9 of the server in use mid-generation, a replica of its blocks alive, DEFAULT client
    settings, on loopback: seconds from the kill to the next token, and whether the tokens equal an
    undisturbed run's. One swarm; each run starts a fresh victim and client."""
    from zswarm import AutoDistributedModelForCausalLM
    from zswarm.models import resolve_model
    from zswarm.testing.launch import LocalSwarm

    source = resolve_model(model_dir)
    half = source.num_blocks // 2
    prompt = torch.randint(0, int(source.config.vocab_size), (1, args.prompt_len),
                           generator=torch.Generator().manual_seed(1))
    runs = []
    with LocalSwarm(model_dir, source.model_id, source.num_blocks, tempfile.mkdtemp(prefix="bench-wan-kill-")) as swarm:
        first = swarm.start("a", 0, half, threads=args.threads)
        spares = [swarm.start(f"b{i}", half, source.num_blocks, threads=args.threads) for i in range(2)]
        swarm.wait_online()
        reference = AutoDistributedModelForCausalLM.from_pretrained(model_dir, initial_peers=swarm.initial_peers,
                                                                    wire_dtype="float32", show_route=False)
        try:
            _, expected = timed_tokens(reference, prompt, args.new_tokens)
        finally:
            reference.close()
        for run in range(args.failover):
            model = AutoDistributedModelForCausalLM.from_pretrained(model_dir, initial_peers=swarm.initial_peers,
                                                                    wire_dtype="float32", show_route=False)
            killed = {}
            try:
                with model.inference_session(max_length=args.prompt_len + args.new_tokens + 1) as session:
                    def kill(n_tokens, session=session):
                        if n_tokens == args.new_tokens // 2:
                            victim = next(s for s in swarm.servers.values() if s.peer_id == session.spans[-1].peer_id)
                            killed.update(name=victim.name, at=time.perf_counter())
                            swarm.kill(victim)

                    clock = TokenClock(kill)
                    from transformers import StoppingCriteriaList
                    out = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                         do_sample=False, stopping_criteria=StoppingCriteriaList([clock]),
                                         session=session)
                    after = next(t for t in clock.times if t > killed["at"])
                    runs.append({"kill_to_next_token_s": after - killed["at"], "failovers": session.failovers,
                                 "same_tokens": out[0, prompt.shape[1]:].tolist() == expected,
                                 "failure": session.failures[0][2] if session.failures else None})
            except Exception as exc:  # a run that gives up is a result, not the end of the bench
                runs.append({"error": f"{type(exc).__name__}: {exc}"})
            finally:
                model.close()
            # a fresh replica for the next run, so one is always alive beside the one in use
            name = killed.get("name")
            if name:
                server = swarm.servers.pop(name)
                replacement = swarm.start(f"{name}-{run}", server.start, server.end, threads=args.threads)
                swarm.wait_online(replacement)
    times = [r["kill_to_next_token_s"] for r in runs if "kill_to_next_token_s" in r]
    return {"runs": runs, "median_kill_to_next_token_s": statistics.median(times) if times else None,
            "max_kill_to_next_token_s": max(times) if times else None,
            "errors": sum("error" in r for r in runs), "all_tokens_identical": all(r.get("same_tokens") for r in runs)}


def print_table(results: list[dict], args) -> None:
    model = args.model or f"tiny random {args.family} ({args.blocks} blocks)"
    print(f"{model}, {args.prompt} prompt {args.prompt_len}, {args.new_tokens} new tokens, {args.threads} thread(s) per "
          f"process, medians of {args.repeats}")
    print(f"{'scenario':<30} {'mode':<14} {'TTFT ms':>9} {'ms/token':>9} {'tokens/s':>9} {'TTFT/tok':>9} "
          f"{'vs base':>8} {'same':>5}")
    for result in results:
        for row in result["modes"]:
            same = next(v for k, v in row.items() if k.startswith("same_tokens_as_"))
            ratio = next(v for k, v in row.items() if k.startswith("per_token_vs_"))
            print(f"{result['scenario']:<30} {row['mode']:<14} {row['ttft_ms']:>9.1f} {row['per_token_ms']:>9.1f} "
                  f"{row['tokens_per_s']:>9.2f} {row['ttft_over_per_token']:>9.2f} {ratio:>8.2f} {str(same):>5}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="*", default=list(DEFAULT_SCENARIOS), choices=sorted(SCENARIOS),
                        help="scenarios to run (none: only --failover)")
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), help="client modes (default: all available)")
    parser.add_argument("--model", help="checkpoint dir (default: a tiny random Llama of --blocks blocks)")
    parser.add_argument("--blocks", type=int, default=6, help="blocks of the tiny model")
    parser.add_argument("--family", default="llama", help="family of the tiny random model (llama, mistral, qwen2, "
                        "mixtral, bloom, falcon)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--prompt", choices=("random", "repetitive"), default="random",
                        help="prompt ids: random, or a stretch of 8 repeated (for push+lookup)")
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server")
    parser.add_argument("--failover", type=int, default=0, metavar="N",
                        help="also N kill -9 runs on loopback with default client settings (0: none)")
    parser.add_argument("--list", action="store_true", help="print the scenarios as JSON and exit")
    parser.add_argument("--json", help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    if args.list:
        print(json.dumps({name: vars(s) for name, s in SCENARIOS.items()}, indent=1))
        return 0
    torch.set_num_threads(args.threads)
    modes = available_modes()
    if args.modes:
        missing = set(args.modes) - set(modes)
        if missing:
            parser.error(f"this checkout's ClientConfig lacks the settings of {sorted(missing)}")
        modes = {name: modes[name] for name in args.modes}
    else:
        modes = {name: mode for name, mode in modes.items() if name in DEFAULT_MODES} or modes
    model_dir = args.model
    if model_dir is None:
        from zswarm.models.testing import make_tiny_checkpoint

        model_dir = str(make_tiny_checkpoint(args.family, Path(tempfile.mkdtemp(prefix="bench-wan-model-")),
                                             num_layers=args.blocks))
    results = [run_scenario(SCENARIOS[name], model_dir, args, modes) for name in args.scenarios]
    print_table(results, args)
    failover = run_failover(model_dir, args) if args.failover else None
    if failover:
        print(f"kill -9 of the server in use, replica alive, default client settings, {args.failover} runs: "
              f"kill -> next token median {failover['median_kill_to_next_token_s']:.3f} s, max "
              f"{failover['max_kill_to_next_token_s']:.3f} s, errors {failover['errors']}, tokens identical "
              f"{failover['all_tokens_identical']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "failover": failover},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
