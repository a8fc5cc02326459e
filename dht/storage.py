"""SignedEntryStorage: a kademlia IStorage whose keys hold many signed entries.

A store merges per sub-key (the signer's public key; the later `signed_at` wins) instead of
replacing the whole value; every entry is verified before it is kept; expired entries are dropped
on every read and never returned. Sizes are bounded (keys, entries per key, bytes per entry).
"""

from __future__ import annotations

import time

from kademlia.storage import IStorage

from dht.entry import KEY_DIGEST_BYTES, EntryVerifier, entry_hash
from dht.errors import InvalidEntry

_CULL_EVERY = 1024  # stores between full sweeps of expired entries


class SignedEntryStorage(IStorage):
    def __init__(self, verifier: EntryVerifier, max_keys: int = 100_000, max_entries_per_key: int = 256):
        self.verifier = verifier
        self.max_keys = max_keys
        self.max_entries_per_key = max_entries_per_key
        # dkey -> {public_key: (signed_at, expiration_time, blob, entry_hash(blob))}
        self._data: dict[bytes, dict[bytes, tuple[float, float, bytes, bytes]]] = {}
        self._stores_since_cull = 0

    # -- our interface ------------------------------------------------------------------
    def merge(self, dkey: bytes, blob: bytes, now: float | None = None) -> bool:
        """Verify and keep `blob`. True when it is now the entry held for its signer; False when
        a newer one is already held. Raises InvalidEntry for anything that fails verification."""
        if not isinstance(dkey, bytes) or len(dkey) != KEY_DIGEST_BYTES:
            raise InvalidEntry("key digest must be 20 bytes")
        now = time.time() if now is None else now
        entry = self.verifier.decode(dkey, blob, now)
        self._stores_since_cull += 1
        if self._stores_since_cull >= _CULL_EVERY:
            self.cull(now)
        entries = self._data.get(dkey)
        if entries is None:
            if len(self._data) >= self.max_keys:
                self.cull(now)
                if len(self._data) >= self.max_keys:
                    raise InvalidEntry("storage is full")
            entries = self._data[dkey] = {}
        held = entries.get(entry.public_key)
        if held is not None:
            # Newest wins; on a tie the larger blob, so every replica settles on the same one.
            if (held[0], held[2]) >= (entry.signed_at, blob):
                return held[2] == blob
        elif len(entries) >= self.max_entries_per_key:
            self._cull_key(dkey, now)
            if len(entries) >= self.max_entries_per_key:
                raise InvalidEntry("key holds too many entries")
        entries[entry.public_key] = (entry.signed_at, entry.expiration_time, blob, entry_hash(blob))
        return True

    def blobs(self, dkey: bytes, now: float | None = None) -> list[bytes]:
        """Unexpired entries of `dkey`, ordered by signer public key."""
        entries = self._cull_key(dkey, time.time() if now is None else now)
        return [entries[pk][2] for pk in sorted(entries)] if entries else []

    def page(
        self, dkey: bytes, after: bytes, budget: int, known: frozenset | set = frozenset()
    ) -> tuple[list[bytes], bytes | None, int, list[bytes]]:
        """Entries of `dkey` whose signer key sorts after `after`, as many as fit `budget` bytes
        (each blob costs len + 3 for its msgpack header, each known one 2).

        Entries whose hash is in `known` (the asker already holds those exact bytes) are not
        sent again; their hashes are listed instead. Returns (blobs, cursor for the next page or
        None when complete, bytes used, hashes of known entries held)."""
        entries = self._cull_key(dkey, time.time())
        if not entries:
            return [], None, 0, []
        out, held, used, last = [], [], 0, after
        for pk in sorted(entries):
            if pk <= after:
                continue
            _, _, blob, h = entries[pk]
            cost = 2 if h in known else len(blob) + 3
            if used + cost > budget:
                return out, last, used, held
            if h in known:
                held.append(h)
            else:
                out.append(blob)
            used += cost
            last = pk
        return out, None, used, held

    def keys(self) -> list[bytes]:
        return list(self._data)

    def cull(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for dkey in list(self._data):
            self._cull_key(dkey, now)
        self._stores_since_cull = 0

    def _cull_key(self, dkey: bytes, now: float):
        entries = self._data.get(dkey)
        if entries is None:
            return None
        expired = [pk for pk, held in entries.items() if held[1] <= now]
        for pk in expired:
            del entries[pk]
        if not entries:
            del self._data[dkey]
            return None
        return entries

    # -- kademlia's IStorage ----------------------------------------------------------------
    # kademlia's own paths (rpc_store, set_digest, republish) are overridden in protocol.py and
    # node.py; these keep the interface honest should anything still reach them.
    def __setitem__(self, key, value):
        if not isinstance(value, bytes):
            raise InvalidEntry("stored values are signed entry blobs")
        self.merge(key, value)

    def __getitem__(self, key):
        blobs = self.blobs(key)
        if not blobs:
            raise KeyError(key)
        return blobs

    def get(self, key, default=None):
        return self.blobs(key) or default

    def iter_older_than(self, seconds_old):
        # Owners re-announce their entries before they expire; replicas never republish them.
        return []

    def __iter__(self):
        self.cull()
        return iter([(dkey, self.blobs(dkey)) for dkey in list(self._data)])
