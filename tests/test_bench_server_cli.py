"""tools/bench_server.py: its CLI answers --help, and the pure helpers its numbers rest on hold."""
import pickle
import subprocess
import sys
from pathlib import Path

import torch

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))

from benchlib.chain_client import Hop  # noqa: E402
from benchlib.hf_local import left_padded  # noqa: E402
from benchlib.swarm_session import prompt_lengths  # noqa: E402


def test_bench_server_help_lists_every_gpu_part():
    out = subprocess.run([sys.executable, str(TOOLS / "bench_server.py"), "--help"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    for word in ("--gpu-parts", "concurrency", "churn", "ttft", "anchors", "quants", "--client-procs"):
        assert word in out


def test_prompt_lengths_spread_over_the_range_and_one_session_takes_the_low_end():
    assert prompt_lengths(1, 8, 64) == [8]
    assert prompt_lengths(8, 8, 64) == [8, 16, 24, 32, 40, 48, 56, 64]
    lengths = prompt_lengths(32, 8, 64)
    assert lengths[0] == 8 and lengths[-1] == 64 and lengths == sorted(lengths) and len(set(lengths)) > 16


def test_left_padded_batch_keeps_each_prompt_at_the_right_edge_with_its_mask():
    ids, mask = left_padded([torch.tensor([[5, 6]]), torch.tensor([[1, 2, 3, 4]])])
    assert ids.tolist() == [[0, 0, 5, 6], [1, 2, 3, 4]]
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_hops_travel_to_client_processes():
    # what multiprocessing's pipe does to a Hop on its way to the benchmark's own client processes
    # (nothing from the network or disk is unpickled)
    hop = Hop("tcp://127.0.0.1:1", 0, 16)
    assert pickle.loads(pickle.dumps(hop)) == hop
