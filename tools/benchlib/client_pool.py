"""ClientPool: N concurrent client sessions spread over K client processes, each with its own
event loop, connections and client parts, all decoding at once.

Why processes: every real user is its own process on its own machine. One Python loop stepping 32
sessions through 2 hops would spend more per token on its own RPCs than a batched server does, and
the benchmark would measure the client. Sessions go round-robin to the processes; each opens its
sessions and runs their prefills, then all wait for one "go" so the decode phases start together.
With device "none" the sessions are headless (swarm_session.HeadlessSession: no client parts, no
GPU work in the client processes), which measures what the servers can serve.
Aggregate tokens/s is all decode tokens over the wall time from the first session's first decode
step to the last session's last one (perf_counter is one monotonic clock for all processes).
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
import traceback

import torch

HEADLESS = "none"  # the device of client processes that do no device work


def _worker(conn, model_dir: str, servers: list, device: str) -> None:
    try:
        _serve(conn, model_dir, servers, device)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


def _serve(conn, model_dir: str, servers: list, device: str) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)  # a client's own math is small; leave the cores to the servers
    from zswarm.models import load_client_parts, resolve_model

    from .swarm_session import GreedySession, HeadlessSession

    source = resolve_model(model_dir)
    if device == HEADLESS:
        def new_session(index):
            return HeadlessSession(source.config.hidden_size, servers, seed=index)
    else:
        parts = load_client_parts(source, dtype=torch.float16, device=device)

        def new_session(index):
            return GreedySession(parts, servers, device)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    conn.send("loaded")
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            break
        _, jobs, new_tokens = msg  # jobs: [(session index, prompt ids as a list)]

        async def prepare():
            sessions = [await new_session(i).open(len(ids) + new_tokens + 1) for i, ids in jobs]
            prefill = await asyncio.gather(*(s.prefill(torch.tensor([ids])) for s, (_, ids) in zip(sessions, jobs)))
            return sessions, prefill

        async def decode(session):
            began = time.perf_counter()
            times = await session.decode(new_tokens)
            return began, time.perf_counter(), times

        async def decode_all(sessions):
            return await asyncio.gather(*(decode(s) for s in sessions))

        async def close(sessions):
            await asyncio.gather(*(s.close() for s in sessions))

        with torch.inference_mode():
            sessions, prefill = loop.run_until_complete(prepare())
            conn.send("ready")
            if conn.recv()[0] != "go":  # the run was called off (another process failed)
                loop.run_until_complete(close(sessions))
                break
            decoded = loop.run_until_complete(decode_all(sessions))
        loop.run_until_complete(close(sessions))
        conn.send([{"index": i, "prompt_tokens": len(ids), "open_s": s.open_s, "prefill_s": p,
                    "began": b, "ended": e, "times": t, "tokens": s.tokens}
                   for (i, ids), s, p, (b, e, t) in zip(jobs, sessions, prefill, decoded)])
    loop.close()


class ClientPool:
    def __init__(self, processes: int, model_dir: str, servers: list, device: str):
        ctx = mp.get_context("spawn")  # no CUDA state forked from this process
        self.conns, self.procs = [], []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, model_dir, servers, device), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        try:
            for conn in self.conns:
                self._expect(conn, "loaded")
        except BaseException:
            self.close()
            raise

    def _expect(self, conn, what: str, timeout: float = 600.0):
        """The next message of a client process ('' : any); its traceback if it failed."""
        proc = self.procs[self.conns.index(conn)]
        deadline = time.monotonic() + timeout
        while not conn.poll(0.5):
            if not proc.is_alive() and not conn.poll(0):
                raise RuntimeError(f"a client process died (exit code {proc.exitcode}) before answering {what!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"a client process did not answer {what!r} within {timeout:.0f}s")
        msg = conn.recv()
        if isinstance(msg, tuple) and msg and msg[0] == "error":
            raise RuntimeError(f"a client process failed:\n{msg[1]}")
        if what and msg != what:
            raise RuntimeError(f"a client process answered {msg!r}, expected {what!r}")
        return msg

    def run(self, prompts: list, new_tokens: int) -> dict:
        """Each prompt (a list of ids) is one session; all decode new_tokens tokens at once."""
        used = self.conns[:min(len(self.conns), len(prompts))]
        jobs = [[] for _ in used]
        for i, ids in enumerate(prompts):
            jobs[i % len(used)].append((i, list(ids)))
        for conn, job in zip(used, jobs):
            conn.send(("run", job, new_tokens))
        for conn in used:
            self._expect(conn, "ready")
        for conn in used:
            conn.send(("go",))
        sessions = sorted((r for conn in used for r in self._expect(conn, "")), key=lambda r: r["index"])
        wall = max(r["ended"] for r in sessions) - min(r["began"] for r in sessions)
        return {"sessions": sessions, "wall_s": wall, "processes": len(used)}

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs):
            if proc.is_alive():
                try:
                    conn.send(("stop",))
                except (BrokenPipeError, OSError):
                    pass
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
