"""Reading only the tensors a caller needs from a safetensors checkpoint.

A checkpoint is either sharded (`model.safetensors.index.json` + shards) or one
`model.safetensors`. Files come from a `CheckpointFiles` provider: a local directory, or the
Hugging Face hub (where a shard is downloaded only when one of its tensors is asked for).
Pickle checkpoints (`*.bin`, `*.pt`, ...) are refused, never opened.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Protocol

import torch
from safetensors import safe_open

from .errors import CheckpointError, ConfigMismatchError, MissingTensorError, UnsafeCheckpointError

logger = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_NAMES = ("pytorch_model.bin.index.json", "pytorch_model.bin", "model.bin", "model.pt", "model.pth",
                "model.ckpt", "consolidated.00.pth")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_INDEX_BYTES = 64 << 20  # an index lists tensor names; anything bigger is not an index


class CheckpointFiles(Protocol):
    """Where a checkpoint's files come from."""

    description: str

    def fetch(self, filename: str) -> Path:
        """A local path of `filename` (downloading it first if needed); raises CheckpointError if absent."""

    def has(self, filename: str) -> bool:
        """Whether `filename` is known to exist (without downloading big files)."""


class LocalFiles:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.description = str(self.root)

    def has(self, filename: str) -> bool:
        return (self.root / filename).is_file()

    def fetch(self, filename: str) -> Path:
        path = self.root / filename
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {filename!r} is missing from {self.root}")
        return path

    def pickle_files(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.suffix in PICKLE_SUFFIXES or p.name in PICKLE_NAMES)


def refuse_pickle(description: str, names: Iterable[str]) -> None:
    names = list(names)
    raise UnsafeCheckpointError(
        f"{description} holds only pickle weights ({', '.join(names[:3])}); zswarm never unpickles "
        f"checkpoints. Convert it to safetensors first, e.g. load it once in a trusted environment and "
        f"call model.save_pretrained(dir, safe_serialization=True)."
    )


def read_json(path: Path, max_bytes: int, label: str, error: type[CheckpointError] = CheckpointError):
    """A small JSON file of an untrusted checkpoint or adapter; `error` (naming `label`) when it is
    larger than `max_bytes` or not JSON."""
    if path.stat().st_size > max_bytes:
        raise error(f"{label} is larger than {max_bytes} bytes")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{label} is not valid JSON: {exc}") from exc


def _check_shard_name(filename: object, description: str) -> str:
    if (not isinstance(filename, str) or not filename.endswith(".safetensors") or filename.startswith(("/", "\\"))
            or ".." in filename.split("/") or "\\" in filename):
        raise CheckpointError(f"{description}: index names an unacceptable shard file {filename!r}")
    return filename


class WeightIndex:
    """Tensor name -> shard file, and reads of chosen tensors that open only the shards holding them."""

    def __init__(self, files: CheckpointFiles, weight_map: dict[str, str]):
        self.files = files
        self.weight_map = weight_map
        self.opened_files: list[str] = []  # every shard opened so far, in order (diagnostics and tests)
        self.memo: dict[str, object] = {}  # facts derived once from the names (e.g. a family's base prefix)

    @classmethod
    def open(cls, files: CheckpointFiles) -> "WeightIndex":
        if files.has(INDEX_NAME):
            index = read_json(files.fetch(INDEX_NAME), MAX_INDEX_BYTES, f"{files.description}: {INDEX_NAME}")
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{files.description}: {INDEX_NAME} has no 'weight_map'")
            checked = {}
            for name, filename in weight_map.items():
                if not isinstance(name, str):
                    raise CheckpointError(f"{files.description}: {INDEX_NAME} has a non-string tensor name")
                checked[name] = _check_shard_name(filename, files.description)
            return cls(files, checked)
        if files.has(SINGLE_NAME):
            with safe_open(str(files.fetch(SINGLE_NAME)), framework="pt") as f:
                names = list(f.keys())
            return cls(files, {name: SINGLE_NAME for name in names})
        pickles = [n for n in PICKLE_NAMES if files.has(n)]
        if not pickles and isinstance(files, LocalFiles) and files.root.is_dir():
            pickles = files.pickle_files()
        if pickles:
            refuse_pickle(files.description, pickles)
        raise CheckpointError(f"{files.description} has neither {INDEX_NAME} nor {SINGLE_NAME}")

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def names_with_prefix(self, prefix: str) -> list[str]:
        return [n for n in self.weight_map if n.startswith(prefix)]

    def load(self, expected: dict[str, torch.Size | None], *, dtype: torch.dtype | None,
             device: torch.device | str) -> dict[str, torch.Tensor]:
        """Read the named tensors (checking shapes where given), opening each needed shard once.

        Floating tensors are cast to `dtype` one at a time, so peak memory stays about the bytes of
        the tensors asked for.
        """
        by_file: dict[str, list[str]] = defaultdict(list)
        for name in expected:
            if name not in self.weight_map:
                raise MissingTensorError(f"{self.files.description}: tensor {name!r} is not in the checkpoint")
            by_file[self.weight_map[name]].append(name)
        out: dict[str, torch.Tensor] = {}
        for filename, names in by_file.items():
            path = self.files.fetch(filename)
            self.opened_files.append(filename)
            logger.debug("reading %d tensors from %s", len(names), path)
            try:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    present = set(f.keys())
                    for name in names:
                        if name not in present:
                            raise MissingTensorError(f"{self.files.description}: tensor {name!r} is not in {filename}")
                        want = expected[name]
                        got = tuple(f.get_slice(name).get_shape())
                        if want is not None and tuple(want) != got:
                            raise ConfigMismatchError(
                                f"{self.files.description}: tensor {name!r} in {filename} has shape {list(got)} but the "
                                f"config implies {list(want)}; does config.json belong to these weights?")
                        tensor = f.get_tensor(name)
                        if dtype is not None and tensor.is_floating_point():
                            tensor = tensor.to(device=device, dtype=dtype)
                        else:
                            tensor = tensor.to(device=device)
                        out[name] = tensor
            except (CheckpointError, OSError):
                raise
            except Exception as exc:  # safetensors raises its own error types for corrupt headers
                raise CheckpointError(f"{self.files.description}: cannot read {filename}: {exc}") from exc
        return out
