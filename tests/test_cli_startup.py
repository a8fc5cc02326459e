"""The commands parse their arguments without importing torch or transformers (so `--help` and a
bad flag answer at once; tools/bench_cli.py times them), and zswarm-bootstrap prints an address
others can reach, never 0.0.0.0."""
import subprocess
import sys
from pathlib import Path

from dht.bootstrap import reachable_host

REPO = Path(__file__).resolve().parents[1]

PARSE_EACH = """
import sys
heavy = lambda: [m for m in ("torch", "transformers") if m in sys.modules]
from zswarm.server.cli import parse_config
parse_config(["--new-swarm", "--num-blocks", "2", "--port", "0"])
print("server", heavy())
from zswarm.inspect.cli import parse_args
parse_args(["--initial-peers", "127.0.0.1:31337", "--no-ping", "swarm"])
print("inspect", heavy())
from zswarm.demo.cli import build_parser
build_parser().parse_args(["--servers", "2", "hello"])
print("demo", heavy())
import dht.bootstrap
print("bootstrap", heavy())
"""


def test_every_command_parses_its_arguments_without_importing_torch_or_transformers():
    done = subprocess.run([sys.executable, "-c", PARSE_EACH], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == ["server []", "inspect []", "demo []", "bootstrap []"]


def test_bootstrap_prints_a_reachable_host_for_a_wildcard_bind():
    assert reachable_host("10.1.2.3", []) == "10.1.2.3"
    assert reachable_host("0.0.0.0", ["127.0.0.1:31337"]) == "127.0.0.1"  # the interface towards the peer
    assert reachable_host("0.0.0.0", []) != "0.0.0.0"
