"""Signed entries: what a key holds, one per server.

A key (a 20-byte kademlia digest) holds many entries; the sub-key of each is the signer's
ed25519 public key, so only the owner of a key pair can write or replace its entry. On the wire
an entry is one msgpack blob, kept as-is by storage so it can be forwarded without re-encoding:

    [public_key: bin 32, signed_at: float, expiration_time: float, value: bin, signature: bin 64]

The signature covers a domain tag, the key digest (so an entry cannot be replayed under another
key), both times and the value. Between two entries of one signer, the later `signed_at` wins.
Fixed overhead is ~120 bytes, so a key with 30 servers of ~150-byte records fits one datagram;
larger answers are paged (see protocol.py).
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from collections import OrderedDict
from functools import lru_cache
from dataclasses import dataclass

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dht.errors import ExpiredEntry, InvalidEntry
from dht.identity import PUBLIC_KEY_BYTES, Identity, peer_id_from_public_key

MAX_ENTRY_BYTES = 4000  # one entry plus a store request's framing always fits an 8 KiB datagram
_ENTRY_OVERHEAD = 128
MAX_VALUE_BYTES = MAX_ENTRY_BYTES - _ENTRY_OVERHEAD
SIGNATURE_BYTES = 64
KEY_DIGEST_BYTES = 20
_DOMAIN = b"zswarm-dht-entry-v1\x00"
ENTRY_HASH_BYTES = 8


def entry_hash(blob: bytes) -> bytes:
    """Short name of an entry's exact bytes. Readers send the hashes of entries they hold, and
    replicas answer "held" instead of resending them. 64 bits: forging a collision with a given
    entry costs 2**64 work, and would only hide the forger's own entry from that reader."""
    return hashlib.blake2b(blob, digest_size=ENTRY_HASH_BYTES).digest()


@dataclass(frozen=True)
class Entry:
    """One verified entry as readers see it."""

    peer_id: str
    value: bytes
    expiration_time: float
    signed_at: float
    public_key: bytes


def _signed_message(dkey: bytes, signed_at: float, expiration_time: float, value: bytes) -> bytes:
    return _DOMAIN + dkey + struct.pack(">dd", signed_at, expiration_time) + value


def sign_entry(
    identity: Identity, dkey: bytes, value: bytes, expiration_time: float, signed_at: float | None = None
) -> bytes:
    """Encode and sign `value` for key digest `dkey`; raises InvalidEntry on a value we would refuse."""
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"DHT values are bytes, got {type(value).__name__}")
    value = bytes(value)
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidEntry(f"value of {len(value)} bytes exceeds the {MAX_VALUE_BYTES}-byte limit")
    signed_at = time.time() if signed_at is None else float(signed_at)
    expiration_time = float(expiration_time)
    signature = identity.sign(_signed_message(dkey, signed_at, expiration_time, value))
    return msgpack.packb(
        [identity.public_key_bytes, signed_at, expiration_time, value, signature], use_bin_type=True
    )


def _as_time(x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise InvalidEntry("times must be numbers")
    x = float(x)
    if not math.isfinite(x):
        raise InvalidEntry("times must be finite")
    return x


_peer_id = lru_cache(maxsize=65536)(peer_id_from_public_key)


class EntryVerifier:
    """Decodes and checks entries. A signature is verified once per distinct (key, blob): replicas
    return identical blobs and readers look keys up on every route refresh. Expiry is checked on
    every call, never cached."""

    def __init__(self, max_ttl: float, max_clock_skew: float, cache_size: int = 8192):
        self.max_ttl = max_ttl
        self.max_clock_skew = max_clock_skew
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size

    def decode(self, dkey: bytes, blob: bytes, now: float | None = None) -> Entry:
        if not isinstance(blob, bytes) or len(blob) > MAX_ENTRY_BYTES:
            raise InvalidEntry("entry is not bytes or is too large")
        try:
            fields = msgpack.unpackb(
                blob, raw=False, max_bin_len=MAX_ENTRY_BYTES, max_str_len=0, max_array_len=5,
                max_map_len=0, max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises several unrelated types on junk
            raise InvalidEntry(f"entry is not valid msgpack ({type(exc).__name__})") from None
        if not isinstance(fields, list) or len(fields) != 5:
            raise InvalidEntry("entry is not a 5-field array")
        public_key, signed_at, expiration_time, value, signature = fields
        if not (isinstance(public_key, bytes) and len(public_key) == PUBLIC_KEY_BYTES):
            raise InvalidEntry("bad public key")
        if not (isinstance(signature, bytes) and len(signature) == SIGNATURE_BYTES):
            raise InvalidEntry("bad signature field")
        if not isinstance(value, bytes) or len(value) > MAX_VALUE_BYTES:
            raise InvalidEntry("value is not bytes or is too large")
        signed_at, expiration_time = _as_time(signed_at), _as_time(expiration_time)
        now = time.time() if now is None else now
        if expiration_time <= now:
            raise ExpiredEntry("entry has expired")
        if expiration_time > now + self.max_ttl + self.max_clock_skew:
            raise InvalidEntry(f"expiry {expiration_time - now:.0f} s ahead exceeds the {self.max_ttl:.0f} s limit")
        if signed_at > now + self.max_clock_skew:
            raise InvalidEntry("entry is signed in the future")
        cache_key = hashlib.blake2b(dkey + blob, digest_size=16).digest()
        if cache_key in self._verified:
            self._verified.move_to_end(cache_key)
        else:
            try:
                Ed25519PublicKey.from_public_bytes(public_key).verify(
                    signature, _signed_message(dkey, signed_at, expiration_time, value)
                )
            except (InvalidSignature, ValueError):
                raise InvalidEntry("bad signature") from None
            self._verified[cache_key] = None
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        return Entry(_peer_id(public_key), value, expiration_time, signed_at, public_key)
