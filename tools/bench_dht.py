#!/usr/bin/env python
"""Benchmark dht/ on loopback: join time, announcing 80 blocks, and concurrent lookups of 80 keys.

For each swarm size N, N-3 nodes run in worker processes (as they would on other machines; one
process holding all nodes would measure the GIL, not the DHT), joined through the first one. The
measuring process holds one announcing server, 5 more servers announcing the same blocks (so a
lookup returns 6 records per block, as a well-replicated model would), and one reader.

  bootstrap    : start + join of a fresh node into the running swarm
  announce     : one server announcing its record under 80 block keys + the model index
  lookup       : fetch_block_servers for 80 blocks, p50 / p95 over --repeats runs
  join dead    : start + join of a fresh node right after --dead-fraction of the worker nodes
                 are killed (the survivors still list them: the joiner is the first to ask)
  lookup dead  : the same after --dead-fraction of the worker nodes are killed (first run
                 included, which pays the RPC timeouts; later ones skip dead contacts)

Bar on 100 nodes: announce < 1 s, lookup p50 < 100 ms.

    python tools/bench_dht.py                       # 20 and 100 nodes, table
    python tools/bench_dht.py --nodes 100 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dht import DHTConfig, DHTNode  # noqa: E402
from zswarm.records import announce_blocks, fetch_block_servers  # noqa: E402
from zswarm.swarm_info import ServerRecord  # noqa: E402

BLOCKS = 80
MODEL = "bench/model-80"
ANNOUNCE_BAR_S = 1.0
LOOKUP_BAR_S = 0.100


def _worker(first_address, count, config, conn):
    """Host `count` nodes (first_address None: the first node of a new swarm), report their
    addresses, then serve until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.ERROR)
    nodes = []
    try:
        for _ in range(count):
            peers = [first_address] if first_address else ([nodes[0].address] if nodes else [])
            nodes.append(DHTNode(initial_peers=peers, config=config).start())
        conn.send([n.address for n in nodes])
        while True:
            command = conn.recv()  # ("kill", count) or "stop"
            if command == "stop":
                break
            for n in nodes[len(nodes) - command[1]:]:
                n.shutdown()  # its socket closes: to the swarm it is simply gone
            nodes = nodes[: len(nodes) - command[1]]
            conn.send("killed")
    finally:
        for n in nodes:
            n.shutdown()


def _record(node, i):
    return ServerRecord(peer_id=node.peer_id, address=f"tcp://127.0.0.1:{5000 + i}", model_id=MODEL,
                        start=0, end=BLOCKS, throughput=100.0 + i, inference_rps=30.0, forward_rps=1000.0,
                        cache_tokens_left=16384, version="bench", public_name=f"server-{i}",
                        next_pings={f"{j:032d}": 0.01 * j for j in range(4)})


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def bench(n_nodes: int, repeats: int, workers: int, dead_fraction: float, config: DHTConfig) -> dict:
    ctx = mp.get_context("spawn")
    remote = n_nodes - 8  # the measuring process holds the announcer, a helper, the reader and 5 servers
    procs, conns, local = [], [], []
    try:
        # The first worker starts the swarm with one node, the rest join through it.
        per = [remote // workers + (1 if i < remote % workers else 0) for i in range(workers)]
        first_address = None
        for i, count in enumerate(c for c in per if c):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(first_address, count, config, child), daemon=True)
            p.start()
            procs.append(p)
            conns.append(parent)
            if first_address is None:
                if not parent.poll(120):
                    raise RuntimeError("first worker did not start")
                addrs = parent.recv()
                first_address = addrs[0]
                worker_addrs = [addrs]
        for parent in conns[1:]:
            if not parent.poll(120):
                raise RuntimeError("a worker did not start")
            worker_addrs.append(parent.recv())

        announcer = DHTNode(initial_peers=[first_address], config=config).start()
        helper = DHTNode(initial_peers=[first_address], config=config).start()
        local += [announcer, helper]
        t0 = time.perf_counter()
        reader = DHTNode(initial_peers=[first_address], config=config).start()
        bootstrap_s = time.perf_counter() - t0
        local.append(reader)

        # Five more servers' records on every block.
        extra = [DHTNode(initial_peers=[first_address], config=config).start() for _ in range(5)]
        local += extra
        for i, s in enumerate(extra):
            assert announce_blocks(s, _record(s, i + 1), ttl=600), "extra server announce failed"

        announce_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            ok = announce_blocks(announcer, _record(announcer, 0), ttl=600, num_blocks=BLOCKS)
            announce_times.append(time.perf_counter() - t0)
            assert ok, "announce failed"

        def lookups(count, phase="healthy"):
            times, complete = [], True
            for _ in range(count):
                t0 = time.perf_counter()
                per_block = fetch_block_servers(reader, MODEL, 0, BLOCKS)
                times.append(time.perf_counter() - t0)
                missing = sum(6 - len(b) for b in per_block)
                if missing:
                    print(f"  {n_nodes} nodes, {phase}: {missing} of {6 * BLOCKS} records not found", file=sys.stderr)
                complete &= not missing
            return times, complete

        lookups(2)  # warm up: routing table and signature cache, as a client's steady state
        times, complete = lookups(repeats)
        result = {
            "nodes": n_nodes, "worker_processes": len(procs),
            "bootstrap_s": bootstrap_s,
            "announce_s": statistics.median(announce_times),
            "lookup_p50_s": _pct(times, 0.5), "lookup_p95_s": _pct(times, 0.95),
            "lookup_complete": complete,
        }
        if dead_fraction > 0:
            # Stop the same share of every worker's nodes (never the swarm's first node), without
            # telling anyone: the others find out through timeouts, as after a crash.
            target = int(n_nodes * dead_fraction)
            quota = [len(a) - (1 if i == 0 else 0) for i, a in enumerate(worker_addrs)]
            shares = [target * q // sum(quota) for q in quota]
            for i in range(target - sum(shares)):
                shares[i % len(shares)] += 1
            for conn, share in zip(conns, shares):
                conn.send(("kill", share))
            for conn in conns:
                conn.recv()
            killed = sum(shares)
            t0 = time.perf_counter()
            local.append(DHTNode(initial_peers=[first_address], config=config).start())
            join_dead_s = time.perf_counter() - t0
            first_s, first_complete = lookups(1, "first after deaths")
            times, complete = lookups(repeats, "after deaths")
            result.update({
                "dead_nodes": killed, "join_dead_s": join_dead_s, "lookup_dead_first_s": first_s[0],
                "lookup_dead_p50_s": _pct(times, 0.5), "lookup_dead_p95_s": _pct(times, 0.95),
                "lookup_dead_complete": complete and first_complete,
            })
        return result
    finally:
        for node in local:
            node.shutdown()
        for parent, p in zip(conns, procs):
            if p.is_alive():
                try:
                    parent.send("stop")
                except (BrokenPipeError, OSError):
                    pass
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--nodes", type=int, nargs="+", default=[20, 100], help="swarm sizes (default 20 100)")
    ap.add_argument("--repeats", type=int, default=30, help="lookups timed per swarm (default 30)")
    ap.add_argument("--workers", type=int, default=4, help="worker processes holding the nodes (default 4)")
    ap.add_argument("--dead-fraction", type=float, default=0.25,
                    help="fraction of nodes killed before the second lookup series (default 0.25; 0 skips)")
    ap.add_argument("--rpc-timeout", type=float, default=DHTConfig.rpc_timeout, help="DHTConfig.rpc_timeout")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if min(args.nodes) < 8 or args.workers < 1:
        ap.error("need at least 8 nodes and 1 worker")
    logging.basicConfig(level=logging.ERROR)
    config = DHTConfig(rpc_timeout=args.rpc_timeout)

    rows = [bench(n, args.repeats, args.workers, args.dead_fraction, config) for n in args.nodes]
    ms = lambda s: f"{s * 1000:8.1f}"  # noqa: E731
    print(f"{'nodes':>5} {'boot ms':>8} {'announce ms':>11} {'lookup p50':>10} {'p95':>8}"
          + (f" {'dead':>4} {'join ms':>8} {'1st ms':>8} {'dead p50':>8} {'p95':>8}" if args.dead_fraction > 0 else ""))
    for r in rows:
        line = (f"{r['nodes']:5d} {ms(r['bootstrap_s'])} {ms(r['announce_s']):>11} {ms(r['lookup_p50_s']):>10}"
                f" {ms(r['lookup_p95_s'])}")
        if "dead_nodes" in r:
            line += (f" {r['dead_nodes']:4d} {ms(r['join_dead_s'])} {ms(r['lookup_dead_first_s'])} {ms(r['lookup_dead_p50_s'])}"
                     f" {ms(r['lookup_dead_p95_s'])}")
        if not r["lookup_complete"] or not r.get("lookup_dead_complete", True):
            line += "  INCOMPLETE LOOKUPS"
        print(line)
    big = [r for r in rows if r["nodes"] >= 100]
    for r in big:
        verdict = "PASS" if r["announce_s"] < ANNOUNCE_BAR_S and r["lookup_p50_s"] < LOOKUP_BAR_S else "FAIL"
        print(f"bar ({r['nodes']} nodes: announce < {ANNOUNCE_BAR_S * 1000:.0f} ms, "
              f"lookup p50 < {LOOKUP_BAR_S * 1000:.0f} ms): {verdict}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"blocks": BLOCKS, "config": vars(config), "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
