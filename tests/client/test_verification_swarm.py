"""Verification of results on real processes: zswarm-server processes on loopback, a real DHT,
the tiny llama, and test-only lying servers (zswarm.testing.liar) that announce an inflated
record, so every client routes through them until it knows better.

Liars: `nan` on blocks 0:3 (caught by the reply check at its first step; zeros and other junk:
test_verification.py), `perturb`
on 3:6 (plausible in scale: only spot checks catch it). Honest: a 0:3, b and c 3:6. (No false
alarm from honest replicas over 1000 steps: test_verification.py.)
"""
import subprocess
import sys

import pytest
import torch

from conftest import local_swarm
from zswarm import AutoDistributedModelForCausalLM
from zswarm.reports import read_reports
from zswarm.defaults import SPOT_CHECK_RATE
from zswarm.testing.launch import server_env

PROMPT = torch.tensor([[1, 5, 9, 33, 7]])
LIAR = "zswarm.testing.liar"
CLIENT = dict(wire_dtype="float32", ping_timeout=1.0, liveness_interval_s=0.5, step_timeout=20.0, retry_backoff_s=0.1)


def _liar(lie):
    return {"module": LIAR, "extra": ("--lie", lie)}


@pytest.fixture(scope="module")
def lying_swarm(tiny_llama_dir, tmp_path_factory):
    with local_swarm(tiny_llama_dir, tmp_path_factory.mktemp("lying-swarm"), ("a", 0, 3), ("b", 3, 6), ("c", 3, 6),
                     ("nan", 0, 3, _liar("nan")), ("perturb", 3, 6, _liar("perturb"))) as swarm:
        yield swarm


def test_liars_are_caught_banned_reported_and_tokens_equal_local_hf(lying_swarm, tiny_llama_dir, llama_reference,
                                                                     tmp_path):
    peer = {name: server.peer_id for name, server in lying_swarm.servers.items()}
    reports = tmp_path / "reports.jsonl"
    model = AutoDistributedModelForCausalLM.from_pretrained(
        str(tiny_llama_dir), initial_peers=lying_swarm.initial_peers, report_path=str(reports), **CLIENT)
    try:
        manager = model.swarm.manager
        window = round(1 / SPOT_CHECK_RATE)
        # One generation long enough for two windows of spot checks at the default rate.
        new_tokens = 2 * window + 10
        with model.inference_session(max_length=len(PROMPT[0]) + new_tokens) as session:
            out = model.generate(PROMPT, max_new_tokens=new_tokens, session=session)
            assert session.checks.checks >= 1
        assert torch.equal(out, llama_reference.generate(PROMPT, max_new_tokens=new_tokens))
        assert set(manager.distrusted) == {peer["nan"], peer["perturb"]}
        # each found in the first window of its span: the perturbing liar by a spot check
        found = {r.peer_id: r for r in read_reports(str(reports))[0]}
        assert found[peer["nan"]].verdict == "implausible"
        assert found[peer["perturb"]].verdict == "outvoted" and found[peer["perturb"]].position < window
        assert {r.peer_id for r in manager.reports.reports} == set(found) and len(manager.reports.reports) == 2
        shown = subprocess.run([sys.executable, "-m", "zswarm.inspect.cli", "reports", str(reports)],
                               capture_output=True, text=True, timeout=60, env=server_env())
        assert shown.returncode == 0 and shown.stdout.count("\n") == 3 and "outvoted" in shown.stdout
        assert peer["perturb"][:20] in shown.stdout and "implausible" in shown.stdout
        # a second session routes around them from its first step
        with model.inference_session(max_length=32) as session:
            again = model.generate(PROMPT, max_new_tokens=8, session=session)
            assert {s.peer_id for s in session.spans} <= {peer["a"], peer["b"], peer["c"]}
        assert torch.equal(again, llama_reference.generate(PROMPT, max_new_tokens=8))
    finally:
        model.close()


def test_a_forward_through_a_liar_is_caught_and_the_logits_equal_local_hf(lying_swarm, tiny_llama_dir,
                                                                           llama_reference):
    """model(input_ids) with every forward call spot-checked: the perturbing liar on 3:6 (which
    the reply check cannot see) is outvoted by its two honest replicas, distrusted and reported,
    and the forward runs again around it; the nan liar fails its reply check."""
    peer = {name: server.peer_id for name, server in lying_swarm.servers.items()}
    model = AutoDistributedModelForCausalLM.from_pretrained(
        str(tiny_llama_dir), initial_peers=lying_swarm.initial_peers, spot_check_rate=1.0, **CLIENT)
    try:
        manager = model.swarm.manager
        with torch.no_grad():
            expected = llama_reference(PROMPT).logits
            for _ in range(4):  # routes pick among replicas: the liar is met as route server or as checker
                assert torch.allclose(model(PROMPT).logits, expected, atol=1e-4, rtol=0)
        # (with spot_check_rate=0 the same forwards leave the perturbing liar undetected)
        assert peer["perturb"] in manager.distrusted and model.blocks.checks.checks >= 4
        (report,) = [r for r in manager.reports.reports if r.peer_id == peer["perturb"]]
        assert report.verdict == "outvoted" and set(report.witnesses) <= {peer["b"], peer["c"]}
        assert not {peer["a"], peer["b"], peer["c"]} & set(manager.distrusted)  # no false alarm
    finally:
        model.close()
