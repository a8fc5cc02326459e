"""zswarm-demo: a whole swarm on this machine, then a chat with it.

    zswarm-demo "What is the capital of France?"      # one answer, streamed, then exit
    zswarm-demo --interactive                         # a conversation; an empty line ends it

It starts a bootstrap DHT node (in this process) and N `zswarm-server` processes on loopback,
each hosting a contiguous share of the model's blocks (SmolLM2-135M's 30 blocks over 3 servers:
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
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EXIT_OK, EXIT_FAILED = 0, 1


@dataclass
class DemoConfig:
    """Everything zswarm-demo can be told; the CLI parses into this and writes no default itself."""

    prompt: str | None = None  # one question; None (or --interactive) starts a conversation
    interactive: bool = False  # a prompt loop in one inference session; an empty line ends it
    model: str = DEFAULT_MODEL  # local checkpoint dir, hub id, or the embedded default
    servers: int = 3  # server processes; the blocks are split evenly between them
    max_new_tokens: int = 128  # longest reply, in tokens
    max_length: int = 2048  # tokens one conversation may hold (--interactive)
    temperature: float = 0.0  # 0: greedy (the same answer every time); above 0: sampling with top-p 0.9
    port: int = 0  # base port: bootstrap DHT (UDP) on it, server i on port+1+i (TCP and UDP); 0: free ports
    device: str = "cpu"  # the servers' device: cpu | cuda | auto
    dtype: str = "float32"  # the servers' weights; float32 is faster than bfloat16 on most CPUs
    threads_per_server: int = 1  # torch threads per server: one token at a time uses one core well
    startup_timeout: float = 300.0  # seconds for all servers to come online
    stop_timeout: float = 20.0  # seconds a server gets to leave cleanly before it is killed
    workdir: str | None = None  # where logs and keys go (kept); default a temporary dir, removed at exit
    verbose: bool = False  # show the client's and the DHT's log lines

    def __post_init__(self):
        if self.servers < 1:
            raise ValueError("--servers must be at least 1")
        if self.max_new_tokens < 1 or self.max_length < 2:
            raise ValueError("--max-new-tokens must be at least 1 and --max-length at least 2")
        if not 0 <= self.port <= 65535 - self.servers - 1:
            raise ValueError(f"--port must leave room for {self.servers + 1} ports below 65536")
        if self.temperature < 0:
            raise ValueError("--temperature must be >= 0")


class DemoError(Exception):
    """Something went wrong that the user should read about (the message says what to do)."""


def say(text: str) -> None:
    """A progress line (stderr, so stdout holds only the conversation)."""
    print(f"zswarm-demo: {text}", file=sys.stderr, flush=True)


# ---- pure helpers ------------------------------------------------------------------------------

def split_blocks(num_blocks: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal block ranges: 30 blocks in 3 -> (0, 10), (10, 20), (20, 30)."""
    if not 1 <= parts <= num_blocks:
        raise DemoError(f"cannot split {num_blocks} blocks over {parts} servers")
    bounds = [round(i * num_blocks / parts) for i in range(parts + 1)]
    return list(zip(bounds, bounds[1:]))


def continuation(held: Sequence[int], full: Sequence[int]) -> tuple[int, list[int]]:
    """How to extend a session holding token ids `held` so it holds `full`: (how many of `held` to
    keep, the ids to send). Usually `held` is a prefix of `full`; where the reply re-tokenizes
    differently, the session rolls back to the common prefix."""
    keep = 0
    for a, b in zip(held, full):
        if a != b:
            break
        keep += 1
    if keep == len(full):  # always send at least one token, so there are logits to sample from
        keep -= 1
    return keep, list(full[keep:])


def speed_line(ttft: float | None, tokens: int, decode_seconds: float, route: str = "") -> str:
    if ttft is None or tokens == 0:
        return "no tokens generated"
    rate = (tokens - 1) / decode_seconds if tokens > 1 and decode_seconds > 0 else float("nan")
    text = f"time to first token {ttft:.2f} s, {tokens} tokens, {rate:.1f} tokens/s"
    return text + (f", route {route}" if route else "")


# ---- the swarm -----------------------------------------------------------------------------------

# Run as `python -c LAUNCHER PARENT_PID -m zswarm.server.cli ...`: ask Linux to SIGTERM the server
# when this process dies (PR_SET_PDEATHSIG survives exec), then become the server.
LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "try: ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "except Exception: pass\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(0)\n"
    "os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n"
)


@dataclass
class ServerProcess:
    index: int
    start: int
    end: int
    peer_id: str
    popen: subprocess.Popen
    log: Path
    address: str = ""

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class LocalSwarm:
    """The bootstrap node and the server processes of one demo run."""

    def __init__(self, config: DemoConfig, model_id: str, num_blocks: int, workdir: Path):
        self.config, self.model_id, self.num_blocks, self.workdir = config, model_id, num_blocks, workdir
        self.bootstrap = None
        self.servers: list[ServerProcess] = []

    def start(self) -> None:
        from dht import DHTNode, Identity

        cfg = self.config
        self.bootstrap = DHTNode(host="127.0.0.1", port=cfg.port).start()
        say(f"bootstrap DHT node at {self.bootstrap.address}")
        env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads_per_server), MKL_NUM_THREADS=str(cfg.threads_per_server),
                   PYTHONUNBUFFERED="1")
        for i, (start, end) in enumerate(split_blocks(self.num_blocks, cfg.servers)):
            key = self.workdir / f"server-{i}.key"
            port = cfg.port + 1 + i if cfg.port else 0
            argv = ["-m", "zswarm.server.cli", cfg.model, "--block-indices", f"{start}:{end}",
                    "--initial-peers", self.bootstrap.address, "--identity", str(key), "--host", "127.0.0.1",
                    "--port", str(port), "--dht-port", str(port), "--device", cfg.device, "--dtype", cfg.dtype,
                    "--log-level", "INFO"]
            if sys.platform.startswith("linux"):
                argv = ["-c", LAUNCHER, str(os.getpid()), *argv]
            log = self.workdir / f"server-{i}.log"
            with open(log, "wb") as out:
                popen = subprocess.Popen([sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.servers.append(ServerProcess(i, start, end, Identity.load_or_create(str(key)).peer_id, popen, log))
        say(f"starting {cfg.servers} server{'s' if cfg.servers > 1 else ''} for {self.model_id} "
            f"({', '.join(f'{s.start}:{s.end}' for s in self.servers)}); logs in {self.workdir}")

    def wait_online(self) -> None:
        """Until every server announces ONLINE; DemoError with the log tail when one exits first."""
        from dht import ServerState, fetch_block_servers

        began = time.monotonic()
        deadline = began + self.config.startup_timeout
        waiting = list(self.servers)
        while waiting:
            for server in waiting:
                if server.popen.poll() is not None:
                    raise DemoError(f"server {server.index + 1} (blocks {server.start}:{server.end}) exited with status "
                                    f"{server.popen.returncode} while starting; the end of its log "
                                    f"({server.log}):\n{server.tail()}")
            blocks = fetch_block_servers(self.bootstrap, self.model_id, 0, self.num_blocks)
            for server in list(waiting):
                record = blocks[server.start].get(server.peer_id)
                if record is not None and record.state == ServerState.ONLINE:
                    server.address = record.address
                    waiting.remove(server)
                    say(f"server {server.index + 1}/{len(self.servers)} online: blocks {server.start}:{server.end} "
                        f"at {record.address} ({time.monotonic() - began:.1f} s)")
            if waiting and time.monotonic() > deadline:
                tails = "\n".join(f"--- server {s.index + 1} ({s.log}):\n{s.tail()}" for s in waiting)
                raise DemoError(f"servers not online after {self.config.startup_timeout:.0f} s:\n{tails}")
            if waiting:
                time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM every server (they announce OFFLINE and exit), SIGKILL what is left after
        stop_timeout, then stop the bootstrap node. Safe to call twice."""
        for server in self.servers:
            if server.popen.poll() is None:
                server.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_timeout
        for server in self.servers:
            try:
                server.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                server.popen.kill()
                server.popen.wait(timeout=10)
        if self.bootstrap is not None:
            self.bootstrap.shutdown()
            self.bootstrap = None


# ---- the chat ---------------------------------------------------------------------------------

def make_streamer(tokenizer, out):
    """transformers' TextStreamer, also timing the first token and counting tokens."""
    from transformers import TextStreamer

    class TimedStreamer(TextStreamer):
        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.started = time.perf_counter()
            self.first_at = self.last_at = None
            self.tokens = 0

        def put(self, value):
            if not self.next_tokens_are_prompt:
                now = time.perf_counter()
                self.first_at = self.first_at or now
                self.last_at = now
                self.tokens += value.numel()
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

        def stats(self, route: str = "") -> str:
            ttft = None if self.first_at is None else self.first_at - self.started
            decode = 0.0 if self.first_at is None else self.last_at - self.first_at
            return speed_line(ttft, self.tokens, decode, route)

    return TimedStreamer()


def route_text(session) -> str:
    return " -> ".join(f"{s.start}:{s.end}" for s in getattr(session, "spans", []))


class Chat:
    def __init__(self, config: DemoConfig, initial_peers: list[str]):
        import torch
        from transformers import AutoTokenizer

        from zswarm import AutoDistributedModelForCausalLM
        from zswarm.models import resolve_model

        self.config, self.torch = config, torch
        source = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(str(source.path))
        if not getattr(self.tokenizer, "chat_template", None):
            raise DemoError(f"{config.model} has no chat template; the demo needs a chat (instruct) model")
        self.model = AutoDistributedModelForCausalLM.from_pretrained(config.model, initial_peers=initial_peers,
                                                                     show_route=config.verbose)

    def close(self) -> None:
        self.model.close()

    def _generate(self, ids: list[int], session, out) -> tuple[list[int], object]:
        streamer = make_streamer(self.tokenizer, out)
        kwargs = dict(max_new_tokens=self.config.max_new_tokens, streamer=streamer, session=session,
                      pad_token_id=self.tokenizer.eos_token_id)
        if self.config.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.config.temperature, top_p=0.9)
        else:
            kwargs.update(do_sample=False)
        input_ids = self.torch.tensor([ids])
        out_ids = self.model.generate(input_ids, attention_mask=self.torch.ones_like(input_ids), **kwargs)
        return out_ids[0, len(ids):].tolist(), streamer

    def ask(self, prompt: str, out=sys.stdout) -> str:
        """One question, one streamed answer; returns the answer's text."""
        ids = self._template([{"role": "user", "content": prompt}])
        with self.model.inference_session(max_length=len(ids) + self.config.max_new_tokens) as session:
            reply, streamer = self._generate(ids, session, out)
            route = route_text(session)
        out.write(f"[{streamer.stats(route)}]\n")
        out.flush()
        return self.tokenizer.decode(reply, skip_special_tokens=True)

    def converse(self, read=input, out=sys.stdout) -> int:
        """A prompt loop in one inference session: the servers keep the whole conversation, each
        turn sends only its new tokens. Ends on an empty line or end of input; returns turns."""
        messages: list[dict] = []
        turns = 0
        out.write(f"Chat with {self.config.model} through the swarm; an empty line ends it.\n")
        with self.model.inference_session(max_length=self.config.max_length) as session:
            while True:
                try:
                    line = read("you> ").strip()
                except EOFError:
                    break
                if not line:
                    break
                messages.append({"role": "user", "content": line})
                full = self._template(messages)
                if len(full) + self.config.max_new_tokens > self.config.max_length:
                    out.write(f"(the conversation would outgrow --max-length {self.config.max_length}; ending it)\n")
                    break
                held = [] if session.output_ids is None else session.output_ids[0].tolist()
                keep, new = continuation(held, full)
                if keep < len(held):
                    session.rollback(min(session.position, keep))
                    session.output_ids = session.output_ids[:, :keep] if keep else None
                out.write("assistant> ")
                out.flush()
                reply, streamer = self._generate(new, session, out)
                text = self.tokenizer.decode(reply, skip_special_tokens=True)
                messages.append({"role": "assistant", "content": text})
                out.write(f"[{streamer.stats(route_text(session))}]\n")
                out.flush()
                turns += 1
        return turns

    def _template(self, messages: list[dict]) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return list(ids)


# ---- the command ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """One flag per DemoConfig field; defaults and help come from the dataclass (written once)."""
    import inspect
    import re

    helps = dict(re.findall(r"^    (\w+): [^\n=]+=[^\n#]+#\s*(.+)$", inspect.getsource(DemoConfig), re.MULTILINE))
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


def run(config: DemoConfig) -> int:
    workdir = Path(config.workdir) if config.workdir else Path(tempfile.mkdtemp(prefix="zswarm-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    swarm = chat = None
    status = EXIT_OK
    try:
        began = time.monotonic()
        say(f"preparing {config.model} ...")
        from zswarm.models import resolve_model

        source = resolve_model(config.model)
        say(f"model {source.model_id}: {source.num_blocks} blocks, ready in {time.monotonic() - began:.1f} s")
        swarm = LocalSwarm(config, source.model_id, source.num_blocks, workdir)
        swarm.start()
        swarm.wait_online()
        say("connecting the client ...")
        chat = Chat(config, [swarm.bootstrap.address])
        say(f"swarm ready in {time.monotonic() - began:.1f} s")
        if config.prompt and not config.interactive:
            print(f"you> {config.prompt}\nassistant> ", end="", flush=True)
            chat.ask(config.prompt)
        else:
            chat.converse()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        say("interrupted; shutting down")
    except DemoError as exc:
        say(f"error: {exc}")
        status = EXIT_FAILED
    except Exception as exc:  # the message, not a traceback; the logs hold the details
        say(f"error: {type(exc).__name__}: {exc}")
        if swarm is not None and swarm.servers:
            say(f"server logs are in {workdir}" + ("" if config.workdir else " (kept)"))
            config = dataclasses.replace(config, workdir=str(workdir))  # keep them for reading
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
            swarm.stop()
        if not config.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        say("stopped")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    try:
        config = DemoConfig(**args)
    except ValueError as exc:
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
