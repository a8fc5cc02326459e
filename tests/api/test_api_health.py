"""The health page and its JSON, fetched from the live swarm of conftest.py (one model complete,
one with blocks 2:6 served by no one): the gap, the servers and their spans are found, network
strings are escaped; and, where Debian's headless chromium is installed, it renders the page."""
import shutil
import struct
import subprocess
import urllib.request

import pytest

from conftest import A_NAME, get_json, poll

CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")


def _report(api):
    """health.json once it holds both models and all three servers."""
    def ready():
        data = get_json(api.url + "/health.json")
        models = {m["model_id"]: m for m in data["models"]}
        if set(models) == {"tiny-chat", "tiny-chat-gap"} and sum(len(m["servers"]) for m in models.values()) == 3:
            return models
    return poll(ready, "both models and three servers in health.json")


def test_health_json_finds_the_gap_the_servers_and_their_spans(api, swarm):
    models = _report(api)
    chat, gap = models["tiny-chat"], models["tiny-chat-gap"]
    assert chat["healthy"] and chat["gaps"] == []
    assert not gap["healthy"] and gap["status"] == "broken" and gap["gaps"] == [[2, 6]]
    assert gap["gaps_text"] == "blocks 2:6 of tiny-chat-gap are served by no one"
    spans = {s["peer_id"]: (s["start"], s["end"], s["public_name"]) for m in models.values() for s in m["servers"]}
    a, b, c = (swarm.servers[n].peer_id for n in "abc")
    assert spans == {a: (0, 3, A_NAME), b: (3, 6, ""), c: (0, 2, "")}
    assert chat["block_servers"] == [[a]] * 3 + [[b]] * 3
    assert gap["block_servers"] == [[c], [c], [], [], [], []]
    row = next(s for s in chat["servers"] if s["peer_id"] == a)
    assert row["dtype"] == "float32" and row["quant"] == "none" and row["rtt"] is not None and row["serving"]


def test_health_page_shows_the_gap_the_spans_and_escapes_server_names(api, swarm):
    _report(api)
    with urllib.request.urlopen(api.url + "/health", timeout=30) as reply:
        assert reply.headers["Content-Type"].startswith("text/html")
        page = reply.read().decode()
    assert '<meta http-equiv="refresh"' in page
    assert 'data-model="tiny-chat-gap" data-status="broken"' in page and 'data-model="tiny-chat" data-status="healthy"' in page
    assert "blocks 2:6 of tiny-chat-gap are served by no one" in page
    assert page.count('class="cell gap"') == 4  # blocks 2, 3, 4, 5 of the broken model
    for name, (start, end) in {"a": (0, 3), "b": (3, 6), "c": (0, 2)}.items():
        peer = swarm.servers[name].peer_id
        assert f'data-peer="{peer}" data-start="{start}" data-end="{end}"' in page
    assert A_NAME not in page and "&lt;b&gt;alice&lt;/b&gt;" in page


@pytest.mark.skipif(CHROMIUM is None, reason="no headless chromium here (apt-get install chromium-headless-shell)")
def test_headless_chromium_renders_the_health_page(api, tmp_path):
    _report(api)
    shot = tmp_path / "health.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,900", f"--screenshot={shot}", api.url + "/health"],
                   check=True, timeout=90, capture_output=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 900) and len(data) > 20_000  # a drawn page, not a blank one
