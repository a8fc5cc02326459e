"""zswarm-api driven by the real `openai` client against a live local swarm (conftest.py): the
text of a streamed chat completion is the Python client's greedy `model.generate`, concurrent
requests each get their own answer, and bad requests get OpenAI-shaped errors, never a 500."""
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from transformers import AutoTokenizer

from conftest import WAIT_S, get_json
from zswarm import AutoDistributedModelForCausalLM

MODEL, GAP_MODEL = "tiny-chat", "tiny-chat-gap"
NEW_TOKENS = 12


@pytest.fixture(scope="package")
def client(api):
    return openai.OpenAI(base_url=api.url + "/v1", api_key="none", max_retries=0, timeout=WAIT_S)


@pytest.fixture(scope="package")
def tokenizer(chat_dirs):
    return AutoTokenizer.from_pretrained(str(chat_dirs[0]))


@pytest.fixture(scope="package")
def python_model(swarm, chat_dirs):
    model = AutoDistributedModelForCausalLM.from_pretrained(str(chat_dirs[0]), initial_peers=swarm.initial_peers,
                                                            wire_dtype="float32")
    yield model
    model.close()


def _messages(k: int) -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {k}: why {'?' * k}"}]


def _generate_text(model, tokenizer, messages, new_tokens=NEW_TOKENS) -> tuple[str, int]:
    """What the Python API answers, greedy, and how many tokens it made."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


def _stream(client, messages, **kwargs):
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, finish, chunks


def test_openai_client_streams_a_chat_completion_with_the_text_of_model_generate(client, python_model, tokenizer):
    messages = _messages(1)
    want, made = _generate_text(python_model, tokenizer, messages)
    assert want  # random weights still make text

    text, finish, chunks = _stream(client, messages, max_tokens=NEW_TOKENS, temperature=0,
                                   stream_options={"include_usage": True})
    assert text == want
    assert finish == ["stop" if made < NEW_TOKENS else "length"]
    assert chunks[0].choices[0].delta.role == "assistant"
    prompt = len(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
    assert chunks[-1].usage.prompt_tokens == prompt and chunks[-1].usage.completion_tokens == made
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not one lump

    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=NEW_TOKENS, temperature=0)
    assert whole.choices[0].message.content == want and whole.usage.total_tokens == prompt + made


def test_eight_concurrent_requests_each_get_their_own_answer(client, python_model, tokenizer):
    """Six greedy chats (three streamed) and two sampled with one seed, all at once."""
    wants = [_generate_text(python_model, tokenizer, _messages(k))[0] for k in range(6)]

    def greedy(k):
        if k % 2:
            return _stream(client, _messages(k), max_tokens=NEW_TOKENS, temperature=0)[0]
        reply = client.chat.completions.create(model=MODEL, messages=_messages(k), max_tokens=NEW_TOKENS, temperature=0)
        return reply.choices[0].message.content

    def sampled(_):
        reply = client.chat.completions.create(model=MODEL, messages=_messages(0), max_tokens=NEW_TOKENS,
                                               temperature=1.0, top_p=0.9, seed=1234)
        return reply.choices[0].message.content

    jobs = [lambda k=k: greedy(k) for k in range(6)] + [lambda: sampled(0), lambda: sampled(1)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        got = [f.result(timeout=WAIT_S) for f in [pool.submit(job) for job in jobs]]
    assert got[:6] == wants
    assert got[6] == got[7]  # one seed, one text, whatever ran beside it
    assert got[6] != wants[0]  # and it was sampled, not greedy


def test_stop_strings_cut_the_text_and_n_gives_that_many_seeded_choices(client, python_model, tokenizer):
    text, _ = _generate_text(python_model, tokenizer, _messages(2))
    stop = next(text[i:i + 2] for i in range(3, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    reply = client.chat.completions.create(model=MODEL, messages=_messages(2), max_tokens=NEW_TOKENS, temperature=0,
                                           stop=[stop])
    assert reply.choices[0].message.content == text[:text.find(stop)]
    assert reply.choices[0].finish_reason == "stop"
    streamed, finish, _ = _stream(client, _messages(2), max_tokens=NEW_TOKENS, temperature=0, stop=stop)
    assert streamed == text[:text.find(stop)] and finish == ["stop"]

    kwargs = dict(model=MODEL, prompt="once upon", max_tokens=6, temperature=1.0, n=3, seed=7)
    first, again = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1  # three rows drawn apart
    assert first.usage.completion_tokens <= 3 * 6 and first.usage.prompt_tokens == len("once upon")


@pytest.mark.parametrize("kwargs, param", [
    (dict(temperature=5.0), "temperature"),
    (dict(n=99), "n"),
    (dict(max_tokens=10_000), "max_tokens"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(presence_penalty=1.0), "presence_penalty"),
    (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
])
def test_bad_parameters_are_400s_naming_the_parameter(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=_messages(0), **kwargs)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error"


def test_unknown_model_is_404_and_a_model_with_a_gap_is_503(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no/such-model", messages=_messages(0))
    assert caught.value.body["code"] == "model_not_found"
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            reply = client.chat.completions.create(model=GAP_MODEL, messages=_messages(0), max_tokens=4, stream=stream)
            list(reply) if stream else None
        assert caught.value.status_code == 503
        assert "2:6" in caught.value.body["message"] and "served by no one" in caught.value.body["message"]


@pytest.mark.parametrize("body", [b"{not json", b"[]", json.dumps({"model": MODEL}).encode(),
                                  json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}).encode(),
                                  json.dumps({"model": MODEL, "messages": "hi"}).encode()])
def test_malformed_bodies_are_openai_shaped_400s(api, body):
    request = urllib.request.Request(api.url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    error = json.loads(caught.value.read())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_models_lists_both_models_with_their_coverage(client, api):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {MODEL, GAP_MODEL}
    assert models[MODEL].zswarm == {"num_blocks": 6, "blocks_served": 6, "healthy": True, "gaps": [], "servers": 2,
                                    "served_here": True}
    assert models[GAP_MODEL].zswarm["gaps"] == [[2, 6]] and models[GAP_MODEL].zswarm["blocks_served"] == 2
    assert get_json(api.url + f"/v1/models/{GAP_MODEL}")["zswarm"]["healthy"] is False
