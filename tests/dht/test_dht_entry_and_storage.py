"""Signed entries and the storage that merges them, without the network."""

import time

import msgpack
import pytest

from dht.entry import MAX_VALUE_BYTES, EntryVerifier, sign_entry
from dht.errors import ExpiredEntry, InvalidEntry
from dht.identity import Identity
from dht.server import key_digest
from dht.storage import SignedEntryStorage

KEY = key_digest("zswarm/v1/m/block/0")
OTHER_KEY = key_digest("zswarm/v1/m/block/1")


@pytest.fixture
def verifier():
    return EntryVerifier(max_ttl=3600, max_clock_skew=60)


@pytest.fixture
def storage(verifier):
    return SignedEntryStorage(verifier, max_keys=16, max_entries_per_key=4)


def test_signed_entry_round_trips_with_peer_id_of_signer(verifier):
    me = Identity.generate()
    exp = time.time() + 60
    entry = verifier.decode(KEY, sign_entry(me, KEY, b"hello", exp))
    assert (entry.peer_id, entry.value, entry.expiration_time) == (me.peer_id, b"hello", exp)


def _tamper(blob, index, value):
    fields = msgpack.unpackb(blob)
    fields[index] = value
    return msgpack.packb(fields)


def test_forged_entries_are_rejected_by_verifier(verifier):
    me, mallory = Identity.generate(), Identity.generate()
    good = sign_entry(me, KEY, b"v", time.time() + 60)
    forged = {
        "value changed": _tamper(good, 3, b"evil"),
        "other signer's key": _tamper(good, 0, mallory.public_key_bytes),
        "signature flipped": _tamper(good, 4, bytes(64)),
        "expiry extended": _tamper(good, 2, time.time() + 120),
        "junk": b"\xc1\xff\x00",
        "wrong shape": msgpack.packb({"a": 1}),
        "oversize": b"\x00" * 5000,
    }
    for name, blob in forged.items():
        with pytest.raises(InvalidEntry):
            verifier.decode(KEY, blob)
    with pytest.raises(InvalidEntry, match="signature"):
        verifier.decode(OTHER_KEY, good)  # replayed under another key


def test_expiry_far_ahead_or_past_is_rejected(verifier):
    me = Identity.generate()
    with pytest.raises(InvalidEntry, match="ahead"):
        verifier.decode(KEY, sign_entry(me, KEY, b"v", time.time() + 10 * 86400))
    with pytest.raises(ExpiredEntry):
        verifier.decode(KEY, sign_entry(me, KEY, b"v", time.time() - 1))
    with pytest.raises(InvalidEntry):
        sign_entry(me, KEY, b"x" * (MAX_VALUE_BYTES + 1), time.time() + 60)


def test_storage_merges_per_signer_and_newest_wins(storage, verifier):
    a, b = Identity.generate(), Identity.generate()
    exp = time.time() + 60
    assert storage.merge(KEY, sign_entry(a, KEY, b"a1", exp, signed_at=time.time() - 2))
    assert storage.merge(KEY, sign_entry(b, KEY, b"b1", exp))
    assert storage.merge(KEY, sign_entry(a, KEY, b"a2", exp, signed_at=time.time() - 1))
    stale = sign_entry(a, KEY, b"a0", exp, signed_at=time.time() - 10)
    assert not storage.merge(KEY, stale)
    values = sorted(verifier.decode(KEY, blob).value for blob in storage.blobs(KEY))
    assert values == [b"a2", b"b1"]


def test_storage_never_returns_expired_entries(storage):
    me = Identity.generate()
    now = time.time()
    storage.merge(KEY, sign_entry(me, KEY, b"v", now + 0.2), now=now)
    assert storage.blobs(KEY, now=now + 0.1)
    assert storage.blobs(KEY, now=now + 0.3) == []


def test_storage_rejects_forgeries_and_bounds_its_size(storage):
    me = Identity.generate()
    good = sign_entry(me, KEY, b"v", time.time() + 60)
    with pytest.raises(InvalidEntry):
        storage.merge(KEY, _tamper(good, 3, b"evil"))
    with pytest.raises(InvalidEntry):
        storage["short key"] = good
    assert storage.blobs(KEY) == []
    for _ in range(4):
        storage.merge(KEY, sign_entry(Identity.generate(), KEY, b"v", time.time() + 60))
    with pytest.raises(InvalidEntry, match="too many"):
        storage.merge(KEY, good)


def test_storage_pages_a_crowded_key_without_losing_entries(verifier):
    storage = SignedEntryStorage(verifier, max_entries_per_key=64)
    signers = [Identity.generate() for _ in range(40)]
    for s in signers:
        storage.merge(KEY, sign_entry(s, KEY, b"r" * 300, time.time() + 60))
    seen, cursor, pages = [], b"", 0
    while cursor is not None:
        blobs, cursor, used, _ = storage.page(KEY, cursor, 2000)
        assert used <= 2000
        seen += blobs
        pages += 1
    assert len(seen) == 40 and len(set(seen)) == 40 and pages > 1
