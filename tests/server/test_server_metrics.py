"""`--metrics-port`: a real server process serves Prometheus' text format at /metrics, and its
counts follow what clients did: sessions, cache, steps, per-method RPC times and error codes."""
import json
import urllib.request

import torch
from prometheus_client.parser import text_string_to_metric_families

from wire import BackgroundLoop, ZmqTransport

HIDDEN = 64  # the tiny model's hidden size


def scrape(url: str) -> dict:
    """{(sample name, sorted labels): value} of one /metrics page."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_of_a_real_server_count_sessions_cache_steps_and_errors(spawn_server, tiny_model_dir):
    server = spawn_server(tiny_model_dir, "--new-swarm", "--block-indices", "0:6", "--device", "cpu",
                          "--throughput", "100", "--attn-cache-tokens", "256", "--metrics-port", "0")
    server.wait_ready(timeout=120)
    url = json.loads(server.ready_file.read_text())["metrics_address"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")

    before = scrape(url)
    assert before[("zswarm_sessions", ())] == 0
    assert before[("zswarm_cache_tokens", (("kind", "left"),))] == 256
    assert before[("zswarm_steps_total", (("kind", "inference"),))] == 0

    loop = BackgroundLoop("metrics-test")
    transport = loop.run(_transport(), timeout=10)

    def call(method, meta, tensors=()):
        return loop.run(transport.call(server.address, method, meta, list(tensors), timeout=30), timeout=40)

    try:
        session = call("open_session", {"start": 0, "end": 6, "max_length": 16, "batch_size": 1}).meta["session_id"]
        for position in range(3):
            call("inference_step", {"session_id": session, "position": position, "tensor_names": ["hidden"]},
                 [torch.randn(1, 1, HIDDEN)])
        during = scrape(url)
        try:  # a step of a session that does not exist: an error reply, counted by its code
            call("inference_step", {"session_id": "nosuch", "position": 0, "tensor_names": ["hidden"]},
                 [torch.randn(1, 1, HIDDEN)])
        except Exception as exc:
            assert getattr(exc, "code", None) == "unknown_session"
        else:
            raise AssertionError("a step of an unknown session succeeded")
        call("close_session", {"session_id": session})
    finally:
        loop.run(transport.close(), timeout=10)
        loop.close()

    after = scrape(url)
    assert during[("zswarm_sessions", ())] == 1
    assert during[("zswarm_cache_tokens", (("kind", "used"),))] == 16
    assert after[("zswarm_sessions", ())] == 0 and after[("zswarm_cache_tokens", (("kind", "left"),))] == 256
    assert after[("zswarm_steps_total", (("kind", "inference"),))] == 3
    assert after[("zswarm_rpc_seconds_count", (("method", "inference_step"),))] == 4  # 3 served, 1 refused
    assert after[("zswarm_rpc_seconds_count", (("method", "open_session"),))] == 1
    assert after[("zswarm_rpc_errors_total", (("code", "unknown_session"), ("method", "inference_step")))] == 1
    assert after[("zswarm_rpc_seconds_sum", (("method", "inference_step"),))] > 0
    info = [labels for (name, labels) in after if name == "zswarm_server_info"]
    assert dict(info[0])["blocks"] == "0:6" and dict(info[0])["dtype"] == "float32"
    assert server.terminate() == 0


async def _transport():
    return ZmqTransport()
