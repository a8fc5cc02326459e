"""zswarm-demo: the pure helpers, then the real command as a user runs it -- a bootstrap node and
three `zswarm-server` processes on loopback hosting the real SmolLM2-135M-Instruct -- answering
"What is the capital of France?", holding a conversation, failing cleanly when a server cannot
start, and stopping cleanly on Ctrl-C. Every run must leave no process behind: each is started
with a marker in its environment that its servers inherit, and no process may carry it afterwards.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from zswarm.demo import DemoConfig, build_parser, continuation, speed_line, split_blocks

REPO = Path(__file__).resolve().parents[1]
MARK = "ZSWARM_DEMO_TEST_MARK"


# ---- pure helpers --------------------------------------------------------------------------------

def test_blocks_are_split_into_contiguous_near_equal_ranges():
    assert split_blocks(30, 3) == [(0, 10), (10, 20), (20, 30)]
    assert split_blocks(6, 4) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    ranges = split_blocks(7, 7)
    assert ranges[0] == (0, 1) and ranges[-1] == (6, 7) and all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:]))


def test_continuation_sends_only_new_tokens_and_rolls_back_to_the_common_prefix():
    assert continuation([], [1, 2, 3]) == (0, [1, 2, 3])
    assert continuation([1, 2, 3], [1, 2, 3, 4, 5]) == (3, [4, 5])
    assert continuation([1, 2, 9, 9], [1, 2, 3, 4]) == (2, [3, 4])  # a reply that re-tokenized differently
    assert continuation([1, 2, 3], [1, 2, 3]) == (2, [3])  # always at least one token to compute logits from


def test_speed_line_reports_first_token_time_and_decoding_rate():
    assert speed_line(0.5, 11, 2.0, "0:10 -> 10:20") == \
        "time to first token 0.50 s, 11 tokens, 5.0 tokens/s, route 0:10 -> 10:20"
    assert speed_line(None, 0, 0.0) == "no tokens generated"


def test_command_line_defaults_are_the_dataclass_defaults():
    assert DemoConfig(**vars(build_parser().parse_args([]))) == DemoConfig()
    parsed = DemoConfig(**vars(build_parser().parse_args(["hi", "--servers", "2", "--interactive", "--port", "4000"])))
    assert (parsed.prompt, parsed.servers, parsed.interactive, parsed.port) == ("hi", 2, True, 4000)
    with pytest.raises(ValueError):
        DemoConfig(servers=0)
    with pytest.raises(ValueError):
        DemoConfig(port=65534)


# ---- the command, end to end ----------------------------------------------------------------------

def _marked_processes(mark: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get(MARK) == mark:
                found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])[:200]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _demo_env(mark: str) -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **{MARK: mark})


def run_demo(*args: str, stdin: str = "", timeout: float = 240) -> tuple[subprocess.CompletedProcess, list[str]]:
    """zswarm-demo ARGS to its end; returns the result and any process it left behind."""
    mark = uuid.uuid4().hex
    done = subprocess.run([sys.executable, "-m", "zswarm.demo", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=_demo_env(mark), cwd=REPO)
    return done, _marked_processes(mark)


def test_demo_answers_that_paris_is_the_capital_of_france_and_leaves_no_process():
    done, left = run_demo("What is the capital of France?", "--max-new-tokens", "24")
    assert done.returncode == 0, done.stderr[-3000:]
    answer = done.stdout.split("assistant> ", 1)[1]
    assert "Paris" in answer, done.stdout
    assert re.search(r"\[time to first token \d+\.\d+ s, \d+ tokens, [\d.]+ tokens/s, route 0:10 -> 10:20 -> 20:30\]",
                     done.stdout), done.stdout
    for line in ("server 1/3 online: blocks 0:10", "server 2/3 online: blocks 10:20", "server 3/3 online: blocks 20:30",
                 "stopped"):
        assert line in done.stderr, done.stderr
    assert left == []


def test_interactive_demo_keeps_the_conversation_in_one_session():
    done, left = run_demo("--interactive", "--max-new-tokens", "24",
                          stdin="What is the capital of France?\nAnd of Italy?\n\n")
    assert done.returncode == 0, done.stderr[-3000:]
    turns = done.stdout.split("assistant> ")[1:]
    assert len(turns) == 2 and "Paris" in turns[0], done.stdout
    # "And of Italy?" only makes sense with the first turn in the servers' caches.
    assert "Rome" in turns[1], done.stdout
    sizes = [int(n) for n in re.findall(r"conversation (\d+) tokens", done.stdout)]
    assert len(sizes) == 2 and sizes[1] > sizes[0]
    assert left == []


def _free_port_run(count: int) -> int:
    """A base port with `count` consecutive ports free for TCP and UDP on loopback."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count >= 65536:
            continue
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports")


def test_a_server_that_cannot_start_is_reported_with_its_log_and_nothing_is_left(tiny_llama_dir):
    base = _free_port_run(5)
    with socket.socket() as taken:  # server 2's RPC port is in use
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", base + 2))
        taken.listen()
        done, left = run_demo("hi", "--model", str(tiny_llama_dir), "--port", str(base), timeout=180)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "error: server 2 (blocks 2:4) exited with status" in done.stderr, done.stderr[-3000:]
    assert "the end of its log" in done.stderr and "in use" in done.stderr.lower(), done.stderr[-3000:]
    assert "stopped" in done.stderr
    assert left == []


def test_ctrl_c_while_servers_start_stops_everything_and_exits_0(tiny_llama_dir):
    mark = uuid.uuid4().hex
    demo = subprocess.Popen([sys.executable, "-m", "zswarm.demo", "hi", "--model", str(tiny_llama_dir)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_demo_env(mark), cwd=REPO)
    try:
        seen, deadline = b"", time.monotonic() + 120
        while b"starting 3 servers" not in seen:
            assert time.monotonic() < deadline and demo.poll() is None, seen.decode(errors="replace")
            if select.select([demo.stderr], [], [], 1.0)[0]:
                seen += os.read(demo.stderr.fileno(), 65536)
        time.sleep(1.0)  # the servers are importing torch now
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    err = (seen + err).decode(errors="replace")
    assert demo.returncode == 0, err[-3000:]
    assert "interrupted; shutting down" in err and "stopped" in err
    assert _marked_processes(mark) == []


@pytest.mark.parametrize("model, blocks", [(None, 30), ("tiny", 6)])
def test_more_servers_than_blocks_is_refused_at_once_with_what_to_pass(tiny_llama_dir, capsys, model, blocks):
    from zswarm.demo.cli import main

    argv = ["--servers", str(blocks + 1), "hi"] + (["--model", str(tiny_llama_dir)] if model else [])
    assert main(argv) == 2  # returns before any slow work (the full run ends in os._exit)
    err = capsys.readouterr().err
    assert f"has {blocks} blocks: give --servers {blocks} or fewer" in err and "preparing" not in err
