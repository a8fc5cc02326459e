"""Checkpoint files from the Hugging Face hub: cache first, then download, one file at a time."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

from .errors import CheckpointError, ModelNotFoundError

logger = logging.getLogger(__name__)


def hub_offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(constants.HF_HUB_OFFLINE) or env


class HubFiles:
    """`CheckpointFiles` for a hub repository; files are fetched lazily, shard by shard."""

    def __init__(self, repo_id: str, *, revision: str | None = None, cache_dir: str | None = None):
        self.repo_id = repo_id
        self.revision = revision
        self.cache_dir = cache_dir
        self.description = f"hub model {repo_id}"
        self._listing: set[str] | None = None

    def _cached(self, filename: str) -> Path | None:
        found = try_to_load_from_cache(self.repo_id, filename, cache_dir=self.cache_dir, revision=self.revision)
        return Path(found) if isinstance(found, str) else None

    def _repo_files(self) -> set[str]:
        if self._listing is None:
            try:
                self._listing = set(huggingface_hub.list_repo_files(self.repo_id, revision=self.revision))
            except Exception as exc:  # network or auth errors: say which model and why
                raise ModelNotFoundError(f"cannot list hub model {self.repo_id}: {exc}") from exc
        return self._listing

    def has(self, filename: str) -> bool:
        if self._cached(filename) is not None:
            return True
        if hub_offline():
            return False
        return filename in self._repo_files()

    def fetch(self, filename: str) -> Path:
        cached = self._cached(filename)
        if cached is not None:
            return cached
        if hub_offline():
            raise CheckpointError(f"{filename} of hub model {self.repo_id} is not in the hub cache and "
                                  f"HF_HUB_OFFLINE is set; download it once with network access")
        logger.info("downloading %s from hub model %s", filename, self.repo_id)
        try:
            return Path(hf_hub_download(self.repo_id, filename, revision=self.revision, cache_dir=self.cache_dir))
        except Exception as exc:
            raise CheckpointError(f"cannot download {filename} of hub model {self.repo_id}: {exc}") from exc

    def fetch_optional(self, filename: str) -> Path | None:
        if self._cached(filename) is not None:
            return self._cached(filename)
        if hub_offline() or filename not in self._repo_files():
            return None
        return self.fetch(filename)
