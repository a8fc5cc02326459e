"""A server's persistent identity: an ed25519 key pair; its peer id is derived from the public key.

We use `cryptography` (OpenSSL-backed) rather than PyNaCl: it is already a dependency of the
project, ships wheels everywhere, and reads/writes standard PKCS#8 PEM files.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dht.errors import IdentityError

PUBLIC_KEY_BYTES = 32
_MAX_KEY_FILE_BYTES = 4096


def peer_id_from_public_key(public_key: bytes) -> str:
    """32 lowercase base32 characters of sha256(public key): short enough for records that list
    many peers (next_pings), long enough (160 bits) that nobody can find a second key for an id."""
    digest = hashlib.sha256(public_key).digest()[:20]
    return base64.b32encode(digest).decode("ascii").lower()


class Identity:
    def __init__(self, private_key: Ed25519PrivateKey):
        self._private_key = private_key
        self.public_key_bytes: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.peer_id: str = peer_id_from_public_key(self.public_key_bytes)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> "Identity":
        """Read the PEM key at `path`, or create one there (mode 0600) when the file is absent."""
        path = Path(path)
        if path.exists():
            return cls._load(path)
        identity = cls.generate()
        pem = identity._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(tmp, path)
        return identity

    @classmethod
    def _load(cls, path: Path) -> "Identity":
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE_BYTES + 1)
        if len(data) > _MAX_KEY_FILE_BYTES:
            raise IdentityError(f"{path}: too large to be an ed25519 key file")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{path}: holds a {type(key).__name__}, not an ed25519 key")
        return cls(key)

    def sign(self, message: bytes) -> bytes:
        return self._private_key.sign(message)

    def derive_secret(self, label: bytes) -> bytes:
        """32 secret bytes for `label` (HKDF-SHA256 of the private key): key material for another
        use, as lasting as this identity, that never reuses the signing key itself."""
        seed = self._private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                               serialization.NoEncryption())
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(seed)

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id!r})"
