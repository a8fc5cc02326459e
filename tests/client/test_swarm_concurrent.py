"""Many client sessions at once through real server processes, whose decode steps the servers batch
into shared ticks (zswarm/server/batching.py): each session gets exactly what it gets alone.

Servers (the tiny fp32 llama, hidden states in float32 on the wire): a 0-3, and b, b2 3-6
(replicas, so one can be killed), all three serving the LoRA adapter "style". Every session goes
through `a`, so `a`'s `info` counters (load.decode_ticks, load.decode_rows) show how many rows the
ticks carried. Sessions run in threads of this process, each with its own inference session, and
meet at threading gates (no sleeps, no clocks): they start, end and fail at different steps. The
kill test runs last.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from conftest import AtStep, local_swarm
from zswarm import AutoDistributedModelForCausalLM
from zswarm.models.testing import load_reference_peft_model, make_tiny_lora_adapter

PAD = 0
TOL = 1e-4
WAIT_S = 120  # bound on every gate and every thread: a hang fails the test instead of the suite
CONFIG = dict(wire_dtype="float32", ping_timeout=1.0, liveness_interval_s=0.5, step_timeout=20.0, max_retries=3,
              retry_backoff_s=0.1)
PRE_SEQ_LEN = 4
LOCKSTEP = 4  # tokens the mixed sessions make in step with each other (each makes at least 7)
# (prompt, max_new_tokens): different lengths, ending at different steps; [100] is a one-token
# prompt, whose first step is itself a decode step.
SESSIONS = [([1, 5, 9, 33, 7, 2], 14), ([11, 12, 13], 18), ([60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70], 9),
            ([100], 16), ([40, 41, 42, 43, 44], 12), ([200, 3, 3, 7, 90, 11, 8, 19], 20)]
ROWS = [[1, 5, 9, 33, 7, 2, 40], [11, 12], [60, 61, 62, 63]]  # 0, 5 and 3 pads on the left


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama_dir, tmp_path_factory):
    return make_tiny_lora_adapter(tiny_llama_dir, tmp_path_factory.mktemp("concurrent-lora") / "style", seed=1)


@pytest.fixture(scope="module")
def swarm(tiny_llama_dir, adapter_dir, tmp_path_factory):
    adapters = {"extra": ("--adapters", adapter_dir)}
    with local_swarm(tiny_llama_dir, tmp_path_factory.mktemp("concurrent-swarm"), ("a", 0, 3, adapters),
                     ("b", 3, 6, adapters), ("b2", 3, 6, adapters)) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def connect(swarm, tiny_llama_dir):
    made = []

    def make(**kwargs):
        model = AutoDistributedModelForCausalLM.from_pretrained(str(tiny_llama_dir), initial_peers=swarm.initial_peers,
                                                                **CONFIG, **kwargs)
        made.append(model)
        return model

    yield make
    for model in made:
        model.close()


@pytest.fixture(scope="module")
def model(connect):
    return connect()


def _load(model, server):
    """The server's `info` load counters."""
    call = model.swarm.manager.transport.call(server.address, "info", {}, timeout=10)
    return model.swarm.run(call).meta["load"]


def _greedy(model, ids, new_tokens, *, session=None, **kwargs):
    return model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD, session=session,
                          output_logits=True, return_dict_in_generate=True, **kwargs)


def _hf_greedy(reference, ids, new_tokens, attention_mask=None):
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    with torch.no_grad():
        return reference.generate(ids, attention_mask=mask,
                                  max_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD, output_logits=True,
                                  return_dict_in_generate=True)


def _assert_same(got, want, what):
    """Identical tokens, and logits of every generated step within TOL."""
    assert torch.equal(got.sequences, want.sequences), f"{what}: {got.sequences.tolist()} != {want.sequences.tolist()}"
    got_logits, want_logits = torch.stack(got.logits, dim=1), torch.stack(want.logits, dim=1)
    worst = (got_logits - want_logits).abs().max().item()
    assert worst <= TOL, f"{what}: logits differ by {worst}"


def _all(jobs):
    """Run the callables in threads at once; their results in order (an exception re-raised)."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result(timeout=WAIT_S) for future in futures]


def _left_padded(rows):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_six_staggered_concurrent_sessions_get_their_alone_tokens_and_hf_logits_in_shared_ticks(
        model, swarm, llama_reference):
    """Session k starts when session k-1 has made 3 tokens; they end at their own max_new_tokens."""
    started = [threading.Event() for _ in SESSIONS]   # set when that session has made 3 tokens (or ended)
    sessions = [None] * len(SESSIONS)

    def run(k):
        prompt, new_tokens = SESSIONS[k]
        try:
            if k:
                assert started[k - 1].wait(WAIT_S), f"session {k - 1} never got going"
            ids = torch.tensor([prompt])
            with model.inference_session(max_length=len(prompt) + new_tokens) as session:
                sessions[k] = session
                return _greedy(model, ids, new_tokens, session=session,
                               stopping_criteria=StoppingCriteriaList([AtStep(3, started[k].set)]))
        finally:
            started[k].set()

    before = _load(model, swarm.servers["a"])
    together = _all([lambda k=k: run(k) for k in range(len(SESSIONS))])
    after = _load(model, swarm.servers["a"])

    # Every forward of generate but the prompt's is a one-token decode step; a one-token prompt is one too.
    decode_steps = [out.sequences.shape[1] - len(prompt) - (len(prompt) > 1)
                    for out, (prompt, _) in zip(together, SESSIONS)]
    ticks, rows = after["decode_ticks"] - before["decode_ticks"], after["decode_rows"] - before["decode_rows"]
    assert rows == sum(decode_steps), (rows, decode_steps)   # every decode step of every session went in a tick
    assert ticks < rows, (ticks, rows)                      # and ticks carried several sessions' rows
    assert all(s.failovers == 0 for s in sessions)

    for k, ((prompt, new_tokens), out) in enumerate(zip(SESSIONS, together)):
        ids = torch.tensor([prompt])
        alone = _greedy(model, ids, new_tokens)
        assert torch.equal(out.sequences, alone.sequences), f"session {k}: together != alone"
        _assert_same(out, _hf_greedy(llama_reference, ids, new_tokens), f"session {k} vs local HF")
    assert len({out.sequences.shape[1] - len(p) for out, (p, _) in zip(together, SESSIONS)}) > 1  # ended apart


class Lockstep(StoppingCriteria):
    """Never stops generation; for its first `steps` tokens waits until every session of `barrier`
    has made the same token, so that their next steps reach the servers together."""

    def __init__(self, barrier: threading.Barrier, steps: int):
        self.barrier, self.steps, self.calls = barrier, steps, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls <= self.steps:
            self.barrier.wait()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _deep_reference(reference, ids, prompts, deep, new_tokens, eos):
    """Local HF greedy with the tuned prompts: prompts before the ids, deep prompts added before each
    layer to the prompt positions (forward pre-hooks); recomputed for every token, no cache."""
    def adding(prompt):
        def hook(module, args, kwargs):
            def add(hidden):
                k = prompt.shape[0]
                return torch.cat([hidden[:, :k] + prompt, hidden[:, k:]], dim=1)
            if args:
                return (add(args[0]), *args[1:]), kwargs
            return args, dict(kwargs, hidden_states=add(kwargs["hidden_states"]))
        return hook

    hooks = [layer.register_forward_pre_hook(adding(p), with_kwargs=True)
             for layer, p in zip(reference.model.layers, deep)]
    logits = []
    try:
        with torch.no_grad():
            for _ in range(new_tokens):
                embeds = torch.cat([prompts.unsqueeze(0), reference.get_input_embeddings()(ids)], dim=1)
                last = reference(inputs_embeds=embeds, use_cache=False).logits[:, -1]
                logits.append(last)
                ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
                if int(ids[0, -1]) == eos:
                    break
    finally:
        for hook in hooks:
            hook.remove()
    return ids, logits


def test_beams_left_pads_deep_prompts_and_an_adapter_in_one_batch_each_equal_their_run_alone(
        model, connect, swarm, llama_reference, tiny_llama_dir, adapter_dir):
    torch.manual_seed(5)
    tuned = connect(tuning_mode="deep_ptune", pre_seq_len=PRE_SEQ_LEN)
    with torch.no_grad():
        tuned.tuning.deep_prompts.normal_(std=0.5)
    adapted = connect(active_adapter="style")
    prompt = torch.tensor([[1, 5, 9, 33, 7, 2]])
    padded, mask = _left_padded(ROWS)
    beam_args = dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=PAD)

    def beams(session=None, stopping_criteria=None):
        return model.generate(prompt, session=session, **beam_args, stopping_criteria=stopping_criteria)

    def left_pads(session=None, stopping_criteria=None):
        return _greedy(model, padded, 10, attention_mask=mask, session=session, stopping_criteria=stopping_criteria)

    def deep(session=None, stopping_criteria=None):
        return _greedy(tuned, prompt, 8, session=session, stopping_criteria=stopping_criteria)

    def adapter(session=None, stopping_criteria=None):
        return _greedy(adapted, prompt, 8, session=session, stopping_criteria=stopping_criteria)

    jobs = [(beams, model, prompt.shape[1] + 8, 3, prompt.shape[1]),   # runner, model, max_length, rows, prefill
            (left_pads, model, padded.shape[1] + 10, 3, padded.shape[1]),
            (deep, tuned, prompt.shape[1] + 8, 1, PRE_SEQ_LEN + prompt.shape[1]),
            (adapter, adapted, prompt.shape[1] + 8, 1, prompt.shape[1])]
    gate = threading.Barrier(len(jobs), timeout=WAIT_S)
    sessions = []

    def run(job):
        runner, owner, max_length, _, _ = job
        try:
            with owner.inference_session(max_length=max_length) as session:
                sessions.append((job, session))
                gate.wait()   # all four sessions open: their steps now meet at the servers
                return runner(session, StoppingCriteriaList([Lockstep(gate, LOCKSTEP)]))
        except BaseException:
            gate.abort()      # the others fail at once instead of waiting for this one
            raise

    before = _load(model, swarm.servers["a"])
    beam_out, pad_out, deep_out, adapter_out = _all([lambda job=job: run(job) for job in jobs])
    after = _load(model, swarm.servers["a"])

    # a decode step per position past the prefill; the adapter's rows tick in a group of their own
    steps = {id(job): (session.position - job[4], job[3]) for job, session in sessions}
    ticks, rows = after["decode_ticks"] - before["decode_ticks"], after["decode_rows"] - before["decode_rows"]
    assert rows == sum(n * batch for n, batch in steps.values()), (rows, steps)
    assert ticks < sum(n for n, _ in steps.values()), (ticks, steps)   # some ticks carried several sessions

    # beams: alone through the swarm, and local HF's beam search
    assert torch.equal(beam_out, beams())
    with torch.no_grad():
        assert torch.equal(beam_out, llama_reference.generate(prompt, attention_mask=torch.ones_like(prompt),
                                                              **beam_args))
    # left pads: the padded batch alone, local HF's padded batch, and each row alone
    assert torch.equal(pad_out.sequences, left_pads().sequences)
    _assert_same(pad_out, _hf_greedy(llama_reference, padded, 10, attention_mask=mask), "left-padded batch")
    for r, row in enumerate(ROWS):
        alone = model.generate(torch.tensor([row]), max_new_tokens=10, pad_token_id=PAD)
        assert torch.equal(pad_out.sequences[r:r + 1, padded.shape[1] - len(row):], alone), f"row {r}"
    # deep prompts: alone, and local HF with the same prompts
    assert torch.equal(deep_out.sequences, deep().sequences)
    with torch.no_grad():
        want_ids, want_logits = _deep_reference(llama_reference, prompt, tuned.tuning.prompts.clone(),
                                                tuned.tuning.deep_prompts.clone(), 8,
                                                llama_reference.generation_config.eos_token_id)
    assert torch.equal(deep_out.sequences, want_ids)
    worst = (torch.stack(deep_out.logits, 1) - torch.stack(want_logits, 1)).abs().max().item()
    assert worst <= TOL, f"deep prompts: logits differ by {worst}"
    # the adapter: alone, and peft's model; it changes the tokens, so it was applied
    assert torch.equal(adapter_out.sequences, adapter().sequences)
    peft_model = load_reference_peft_model(tiny_llama_dir, adapter_dir)
    _assert_same(adapter_out, _hf_greedy(peft_model, prompt, 8), "adapter vs peft")
    assert not torch.equal(adapter_out.sequences, _hf_greedy(llama_reference, prompt, 8).sequences)


def test_kill_9_of_a_replica_during_concurrent_batched_generation_gives_every_session_its_tokens(
        model, swarm, llama_reference):
    """Four sessions meet after 3 tokens; 2 tokens later, while the others step, the first one's
    server of blocks 3-5 gets kill -9; its replica takes over for everyone who was on it."""
    chosen = SESSIONS[:2] + SESSIONS[4:6]
    new_tokens = 16
    expected = []
    for prompt, _ in chosen:
        ids = torch.tensor([prompt])
        want = _hf_greedy(llama_reference, ids, new_tokens).sequences
        assert want.shape[1] == len(prompt) + new_tokens   # no early end: every session is still going at the kill
        alone = model.generate(ids, max_new_tokens=new_tokens, pad_token_id=PAD)
        assert torch.equal(alone, want)
        expected.append(want)

    gate = threading.Barrier(len(chosen), timeout=WAIT_S)
    sessions, routes = [None] * len(chosen), [None] * len(chosen)
    victims = []

    def kill():
        victims.append(next(s for s in swarm.servers.values() if s.peer_id == sessions[0].spans[1].peer_id))
        swarm.kill(victims[0])

    def run(k):
        prompt, _ = chosen[k]

        def meet():
            routes[k] = sessions[k].spans[1].peer_id
            gate.wait()

        criteria = [AtStep(3, meet)] + ([AtStep(5, kill)] if k == 0 else [])
        try:
            with model.inference_session(max_length=len(prompt) + new_tokens) as session:
                sessions[k] = session
                out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, pad_token_id=PAD,
                                     session=session, stopping_criteria=StoppingCriteriaList(criteria))
                return out, session.spans[1].peer_id
        except BaseException:
            gate.abort()
            raise

    results = _all([lambda k=k: run(k) for k in range(len(chosen))])
    (victim,) = victims
    assert victim.name in ("b", "b2") and not victim.alive
    survivor = swarm.servers["b2" if victim.name == "b" else "b"]
    for k, ((out, now_on), want) in enumerate(zip(results, expected)):
        assert torch.equal(out, want), f"session {k}: {out.tolist()} != {want.tolist()}"
        if routes[k] == victim.peer_id:
            assert sessions[k].failovers >= 1 and now_on == survivor.peer_id, f"session {k}"
    assert sum(route == victim.peer_id for route in routes) >= 1
