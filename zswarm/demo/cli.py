"""zswarm-demo: a whole swarm on this machine, then a chat with it.

    zswarm-demo "What is the capital of France?"      # one answer, streamed, then exit
    zswarm-demo --interactive                         # a conversation; an empty line ends it

It starts a bootstrap DHT node (in this process) and N `zswarm-server` processes on loopback,
each hosting a contiguous share of the model's blocks (the default SmolLM2-135M's 30 blocks over 3 servers:
0:10, 10:20, 20:30), waits until each announces itself ONLINE, then runs the client: the prompt
goes through the chat template, the reply streams token by token through all servers, and the
time to first token and the decoding speed are printed. Everything it started is stopped on the
way out: after the answer, on an empty line, on Ctrl-C, on SIGTERM, and when a server fails to
start (then with that server's log tail). Servers live in their own session, so Ctrl-C reaches
only this process, which closes the chat before stopping them; each also gets SIGTERM should this
process die without cleaning up (Linux's parent-death signal).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from zswarm.blocks import format_blocks
from zswarm.demo.chat import Chat
from zswarm.demo.config import EXIT_FAILED, EXIT_OK, DemoConfig, DemoError, say

if TYPE_CHECKING:  # imported when a run starts: zswarm.client imports torch, and --help should not wait for it
    from zswarm.testing.launch import LocalSwarm


def build_parser() -> argparse.ArgumentParser:
    """One flag per DemoConfig field; defaults and help come from the dataclass (written once)."""
    from zswarm.field_help import field_help

    helps = field_help(DemoConfig)
    parser = argparse.ArgumentParser(prog="zswarm-demo", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("prompt", nargs="?", help=helps["prompt"])
    for f in dataclasses.fields(DemoConfig):
        if f.name == "prompt":
            continue
        flag = "--" + f.name.replace("_", "-")
        text = helps.get(f.name, "").replace("%", "%%")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=text)
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            shown = f" (default: {f.default})" if f.default not in (None, "") else ""
            parser.add_argument(flag, type=kind, help=text + shown)
    return parser


def _stop_on_signal(signum, frame):
    raise KeyboardInterrupt  # SIGTERM / SIGHUP: leave through the same clean path as Ctrl-C


def start_servers(swarm: LocalSwarm, config: DemoConfig) -> None:
    """The model's blocks split evenly over config.servers servers; server i on port+1+i when a base port is given."""
    from zswarm.testing.launch import split_blocks

    try:
        spans = split_blocks(swarm.num_blocks, config.servers)
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    for i, (start, end) in enumerate(spans):
        swarm.start(f"server-{i}", start, end, throughput=None, threads=config.threads_per_server,
                    port=config.port + 1 + i if config.port else 0)
    say(f"starting {config.servers} server{'s' if config.servers > 1 else ''} for {swarm.model_id} "
        f"({', '.join(format_blocks(s.start, s.end) for s in swarm.servers.values())}); logs in {swarm.workdir}")


def wait_online(swarm: LocalSwarm, config: DemoConfig) -> None:
    """Until every server is ONLINE, a line as each comes; DemoError with the log's end when one fails."""
    from zswarm.testing.launch import ServerExitedError, ServersNotOnlineError

    def online(server, seconds):
        say(f"server {server.index + 1}/{len(swarm.servers)} online: blocks {format_blocks(server.start, server.end)} "
            f"at {server.address} ({seconds:.1f} s)")

    try:
        swarm.wait_online(timeout=config.startup_timeout, on_online=online)
    except ServerExitedError as exc:
        s = exc.server
        raise DemoError(f"server {s.index + 1} (blocks {format_blocks(s.start, s.end)}) exited with status {s.popen.returncode} "
                        f"while starting; the end of its log ({s.log}):\n{s.tail(25)}") from None
    except ServersNotOnlineError as exc:
        tails = "\n".join(f"--- server {s.index + 1} ({s.log}):\n{s.tail(25)}" for s in exc.servers)
        raise DemoError(f"servers not online after {config.startup_timeout:.0f} s:\n{tails}") from None


def check_servers_fit(config: DemoConfig) -> None:
    """--servers beyond the model's blocks, found before the model is prepared where the block
    count can be known without it (the default model, a local checkpoint directory)."""
    from zswarm.defaults import DEFAULT_MODEL_ID, DEFAULT_MODEL_NUM_BLOCKS

    blocks = DEFAULT_MODEL_NUM_BLOCKS if config.model == DEFAULT_MODEL_ID else None
    config_file = Path(config.model).expanduser() / "config.json"
    if blocks is None and config_file.is_file():
        try:
            raw = json.loads(config_file.read_text())
            blocks = raw.get("num_hidden_layers") or raw.get("n_layer")
        except (OSError, ValueError):
            blocks = None  # resolve_model will say what is wrong with it
    if isinstance(blocks, int) and config.servers > blocks:
        raise DemoError(f"--servers {config.servers}, but {config.model} has {blocks} blocks: "
                        f"give --servers {blocks} or fewer (each server hosts at least one block)")


def run(config: DemoConfig) -> int:
    workdir = Path(config.workdir) if config.workdir else Path(tempfile.mkdtemp(prefix="zswarm-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    swarm = chat = None
    status = EXIT_OK
    try:
        began = time.monotonic()
        say(f"preparing {config.model} ...")
        from zswarm.testing.launch import LocalSwarm
        from zswarm.models import resolve_model

        source = resolve_model(config.model)
        say(f"model {source.model_id}: {source.num_blocks} blocks, ready in {time.monotonic() - began:.1f} s")
        # Bound before any server starts, so a Ctrl-C from here on stops what was started.
        swarm = LocalSwarm(config.model, source.model_id, source.num_blocks, workdir, device=config.device,
                           dtype=config.dtype, bootstrap_port=config.port, offline=False)
        say(f"bootstrap DHT node at {swarm.bootstrap.address}")
        start_servers(swarm, config)
        wait_online(swarm, config)
        say("connecting the client ...")
        chat = Chat(config, swarm.initial_peers)
        say(f"swarm ready in {time.monotonic() - began:.1f} s")
        if config.prompt and not config.interactive:
            print(f"you> {config.prompt}\nassistant> ", end="", flush=True)
            chat.ask(config.prompt)
        else:
            chat.converse(first=config.prompt)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        say("interrupted; shutting down")
    except DemoError as exc:
        say(f"error: {exc}")
        status = EXIT_FAILED
    except Exception as exc:  # the message, not a traceback; the logs hold the details
        say(f"error: {type(exc).__name__}: {exc}")
        status = EXIT_FAILED
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave servers behind.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if chat is not None:
            try:
                chat.close()
            except Exception as exc:
                logging.getLogger(__name__).debug("closing the client: %s", exc)
        if swarm is not None:
            say("stopping the servers ...")
            swarm.close(stop_timeout=config.stop_timeout)
        if config.workdir or (status != EXIT_OK and swarm is not None and swarm.servers):
            say(f"stopped; server logs are in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            say("stopped")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    try:
        config = DemoConfig(**args)
        check_servers_fit(config)
    except (ValueError, DemoError) as exc:  # a bad argument: exit 2 before any slow work
        print(f"zswarm-demo: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if config.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not config.verbose:
        for name in ("kademlia", "transformers", "dht"):
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    code = run(config)
    # Like zswarm-server: everything is closed; skip the slow teardown of torch at interpreter exit.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
