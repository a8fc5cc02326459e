"""A server's CURVE key: as lasting as its identity, distinct per identity, and carried in its
record (validated on the way in)."""
import os
import stat

import pytest

from dht import Identity
from zswarm.errors import RecordError
from zswarm.server.cli import parse_config
from zswarm.server.keys import server_curve_keys
from zswarm.swarm_info import ServerRecord


def test_the_key_pair_follows_the_identity_file(tmp_path):
    path = tmp_path / "server.key"
    first = server_curve_keys(Identity.load_or_create(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # the one secret to keep
    assert server_curve_keys(Identity.load_or_create(path)) == first  # a restart keeps it
    assert server_curve_keys(Identity.generate()).public != first.public
    identity = Identity.load_or_create(path)
    assert first.secret != identity.derive_secret(b"another use")  # labels keep uses apart


def test_the_record_carries_the_key_and_refuses_a_malformed_one():
    key = server_curve_keys(Identity.generate()).public
    record = ServerRecord(peer_id="p" * 32, address="tcp://10.0.0.1:5000", model_id="m", start=0, end=2,
                          curve_key=key)
    back = ServerRecord.from_bytes(record.to_bytes())
    assert back.curve_key == key and back.endpoint == record.endpoint and back.endpoint.startswith(record.address)
    plain = ServerRecord(peer_id="p" * 32, address="tcp://10.0.0.1:5000", model_id="m", start=0, end=2)
    assert ServerRecord.from_bytes(plain.to_bytes()).endpoint == "tcp://10.0.0.1:5000"
    for bad in (b"\0" * 31, "k" * 32, 7):
        plain.curve_key = bad
        with pytest.raises(RecordError, match="curve_key"):
            ServerRecord.from_bytes(plain.to_bytes())
    # an address may not smuggle in a key (another server's) past curve_key
    smuggler = ServerRecord(peer_id="p" * 32, address=record.endpoint, model_id="m", start=0, end=2)
    with pytest.raises(RecordError, match="address"):
        ServerRecord.from_bytes(smuggler.to_bytes())


def test_insecure_plaintext_is_off_unless_asked_for():
    assert parse_config(["--new-swarm"]).insecure_plaintext is False
    assert parse_config(["--new-swarm", "--insecure-plaintext"]).insecure_plaintext is True
