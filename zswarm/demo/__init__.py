"""zswarm.demo: the `zswarm-demo` command -- a whole swarm on this machine, then a chat with it.

    config.py       DemoConfig (every option and its default, once), DemoError
    chat.py         the client: chat template, streaming with timings, one-shot and conversation
    cli.py          arguments -> DemoConfig; the run: a LocalSwarm (zswarm.testing.launch) with the
                    blocks split over its servers, the chat, the clean shutdown, the exit status

See cli.py's docstring (or `zswarm-demo --help`) for what the command does.
"""

from zswarm.demo.chat import Chat, continuation, speed_line
from zswarm.demo.cli import build_parser, main, run
from zswarm.demo.config import DemoConfig, DemoError

__all__ = ["Chat", "DemoConfig", "DemoError", "LocalSwarm", "build_parser", "continuation", "main", "run",
           "speed_line", "split_blocks"]


def __getattr__(name):  # LocalSwarm and split_blocks live in zswarm.testing.launch (the DHT node): only on use
    if name in ("LocalSwarm", "split_blocks"):
        from zswarm.testing import launch

        return getattr(launch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
