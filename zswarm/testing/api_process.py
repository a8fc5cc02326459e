"""Starting `zswarm-api` as a child process, for tests and tools/bench_api.py: the same command a
user runs, on a free port, ready once it has written its ready file (JSON: url, pid).

    with ApiProcess([model_dir], swarm.initial_peers, workdir) as api:
        openai.OpenAI(base_url=api.url + "/v1", api_key="none")

It runs in its own session with the parent-death signal (as LocalSwarm's servers do), and
`close()` ends it by its PID: SIGTERM, then SIGKILL after `stop_grace` seconds.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from zswarm.errors import ServerExitedError, ServersNotOnlineError
from zswarm.testing.launch import LAUNCHER, server_env

__all__ = ["ApiProcess"]


class ApiProcess:
    def __init__(self, models: Sequence, initial_peers: Sequence[str], workdir: str | os.PathLike, *,
                 extra: Sequence = (), threads: int = 1, stop_grace: float = 5.0, name: str = "api"):
        self.name, self.stop_grace = name, stop_grace
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"{name}.log"
        self.ready_file = workdir / f"{name}.ready.json"
        self.ready_file.unlink(missing_ok=True)
        self.start = self.end = None  # what ServerExitedError's message reads of a launched process
        self.url: str | None = None
        args = ["-m", "zswarm.api.cli", "--initial-peers", ",".join(initial_peers), "--port", "0",
                "--ready-file", str(self.ready_file), *[str(a) for a in extra]]
        for model in models:
            args += ["--model", str(model)]
        env = server_env(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
        argv = ["-c", LAUNCHER, str(os.getpid()), *args] if sys.platform.startswith("linux") else args
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen([sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = 120.0) -> "ApiProcess":
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.url = json.loads(self.ready_file.read_text())["url"]
                return self
            except (OSError, ValueError, KeyError):
                pass
            if not self.alive:
                raise ServerExitedError(self)
            if time.monotonic() > deadline:
                raise ServersNotOnlineError([self], timeout)
            time.sleep(0.1)

    def close(self) -> None:
        if not self.alive:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(self.stop_grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)

    def __enter__(self) -> "ApiProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
