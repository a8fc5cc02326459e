#!/usr/bin/env python
"""How long `--help` takes for each zswarm command: the wall time of a fresh process, from exec
to exit, as a user typing `zswarm-server --help` waits for it. Bar (issue 15): under 1 s each.

Commands are interleaved (one run of each, then the next round) so a noisy moment hits all of
them alike; the table gives median and worst of the rounds, and whether the process imported
torch or transformers (it should not: arguments are parsed before the heavy imports).

    python tools/bench_cli.py                    # table, 7 rounds
    python tools/bench_cli.py --rounds 15 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {  # console script -> its module (run with -m so this checkout is what runs)
    "zswarm-server": "zswarm.server.cli",
    "zswarm-inspect": "zswarm.inspect.cli",
    "zswarm-demo": "zswarm.demo",
    "zswarm-bootstrap": "dht.bootstrap",
}
# Runs the command's main with --help, then reports which heavy modules it had imported.
_PROBE = """
import runpy, sys
sys.argv = [{name!r}, "--help"]
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
sys.stderr.write("HEAVY=" + ",".join(m for m in ("torch", "transformers") if m in sys.modules))
"""
BAR_S = 1.0


def time_help(module: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - began


def heavy_imports(name: str, module: str) -> str:
    done = subprocess.run([sys.executable, "-c", _PROBE.format(name=name, module=module)], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return done.stderr.rpartition("HEAVY=")[2].strip() or "none"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="runs of each command, interleaved (default 7)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    time_help("dht.bootstrap")  # warm the page cache once, so round 1 is not an outlier
    for _ in range(args.rounds):
        for name, module in COMMANDS.items():
            samples[name].append(time_help(module))
    rows = []
    for name, module in COMMANDS.items():
        median = statistics.median(samples[name])
        rows.append({"command": f"{name} --help", "median_s": median, "max_s": max(samples[name]),
                     "rounds": args.rounds, "heavy_imports": heavy_imports(name, module), "under_1s": median < BAR_S})
    print(f"{'command':<26} {'median s':>9} {'max s':>7}  {'torch/transformers':<19} < 1 s")
    for r in rows:
        print(f"{r['command']:<26} {r['median_s']:>9.2f} {r['max_s']:>7.2f}  {r['heavy_imports']:<19} "
              f"{'yes' if r['under_1s'] else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"python": sys.version.split()[0], "rows": rows}, indent=2))
    return 0 if all(r["under_1s"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
