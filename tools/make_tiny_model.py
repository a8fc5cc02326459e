#!/usr/bin/env python
"""Make tiny random-weight sharded safetensors checkpoints of each supported family (for tests).

    python tools/make_tiny_model.py --family llama --out /tmp/tiny-llama --layers 6
    python tools/make_tiny_model.py --family all --out /tmp/tiny --json /tmp/tiny.json

The functions live in zswarm.models.testing (make_tiny_checkpoint, populate_hub_cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zswarm.models.testing import FAMILY_NAMES, make_tiny_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="llama", choices=(*FAMILY_NAMES, "all"))
    parser.add_argument("--out", required=True, help="output directory (with --family all: a parent directory)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-bytes", type=int, default=100_000)
    parser.add_argument("--json", help="write the table as JSON to this path")
    args = parser.parse_args(argv)

    families = FAMILY_NAMES if args.family == "all" else (args.family,)
    rows = []
    for family in families:
        out = Path(args.out) / f"tiny-{family}" if args.family == "all" else Path(args.out)
        began = time.monotonic()
        make_tiny_checkpoint(family, out, num_layers=args.layers, seed=args.seed, max_shard_size=args.max_shard_bytes)
        shards = sorted(out.glob("*.safetensors"))
        rows.append({"family": family, "path": str(out), "layers": args.layers, "shards": len(shards),
                     "bytes": sum(p.stat().st_size for p in shards), "seconds": round(time.monotonic() - began, 2)})
    print(f"{'family':<8} {'layers':>6} {'shards':>6} {'bytes':>10} {'s':>5}  path")
    for r in rows:
        print(f"{r['family']:<8} {r['layers']:>6} {r['shards']:>6} {r['bytes']:>10} {r['seconds']:>5}  {r['path']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
