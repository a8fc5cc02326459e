"""One live swarm for every zswarm-api test (package-scoped): two tiny chat models (a byte-level
tokenizer with a ChatML template beside random weights, zswarm.testing.chat_model) in one DHT.

- "tiny-chat": blocks 0:3 on server a (public name with HTML in it, to check escaping), 3:6 on b;
  complete.
- "tiny-chat-gap": blocks 0:2 on server c only; blocks 2:6 are served by no one.

and one real `zswarm-api` process (the command a user runs) serving both models, with
hidden states in float32 on the wire so its greedy text equals the Python client's.
"""
import json
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from zswarm.testing.api_process import ApiProcess  # noqa: E402
from zswarm.testing.chat_model import make_tiny_chat_checkpoint  # noqa: E402

A_NAME = "<b>alice</b>"
WAIT_S = 90


@pytest.fixture(scope="package")
def chat_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-models")
    return make_tiny_chat_checkpoint(root / "tiny-chat"), make_tiny_chat_checkpoint(root / "tiny-chat-gap", seed=1)


@pytest.fixture(scope="package")
def live(chat_dirs, tmp_path_factory):
    """(swarm, api): the servers and the API start side by side (the API joins the DHT while the
    servers load), then both are waited for."""
    from zswarm.testing.launch import LocalSwarm

    chat_dir, gap_dir = chat_dirs
    workdir = tmp_path_factory.mktemp("api-swarm")
    with LocalSwarm(chat_dir, "tiny-chat", 6, workdir) as swarm:
        a = swarm.start("a", 0, 3, extra=("--public-name", A_NAME))
        b = swarm.start("b", 3, 6)
        c = swarm.start("c", 0, 2, model_ref=gap_dir)
        # max-retries 1: a request to the model with a gap gets its 503 after one refresh of the
        # DHT view, not after the client's whole retry budget (about 8 s of backoff)
        with ApiProcess(chat_dirs, swarm.initial_peers, workdir,
                        extra=("--wire-dtype", "float32", "--report-cache-s", "0", "--max-retries", "1")) as api:
            swarm.wait_online(a, b, timeout=WAIT_S)
            c.wait_ready(WAIT_S)
            api.wait_ready(WAIT_S)
            yield swarm, api


@pytest.fixture(scope="package")
def swarm(live):
    return live[0]


@pytest.fixture(scope="package")
def api(live):
    return live[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())


def poll(check, what: str, timeout: float = WAIT_S):
    """check() until it returns something truthy (the swarm's records come in as servers announce)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.3)
