import os
import stat

import pytest

from dht import Identity, IdentityError


def test_identity_persists_and_peer_id_is_stable(tmp_path):
    path = tmp_path / "keys" / "server.pem"
    first = Identity.load_or_create(path)
    again = Identity.load_or_create(path)
    assert first.peer_id == again.peer_id and len(first.peer_id) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Identity.generate().peer_id != first.peer_id


def test_unreadable_identity_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.pem"
    path.write_bytes(b"not a key")
    with pytest.raises(IdentityError, match="bad.pem"):
        Identity.load_or_create(path)
