"""zswarm.demo: the `zswarm-demo` command -- a whole swarm on this machine, then a chat with it.

    config.py       DemoConfig (every option and its default, once), DemoError
    local_swarm.py  the bootstrap DHT node and the server processes: start, wait online, stop
    chat.py         the client: chat template, streaming with timings, one-shot and conversation
    cli.py          arguments -> DemoConfig, the run with its clean shutdown, exit status

See cli.py's docstring (or `zswarm-demo --help`) for what the command does.
"""

from zswarm.demo.chat import Chat, continuation, speed_line
from zswarm.demo.cli import build_parser, main, run
from zswarm.demo.config import DemoConfig, DemoError
from zswarm.demo.local_swarm import LocalSwarm, split_blocks

__all__ = ["Chat", "DemoConfig", "DemoError", "LocalSwarm", "build_parser", "continuation", "main", "run",
           "speed_line", "split_blocks"]
