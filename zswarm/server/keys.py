"""The server's CURVE key pair, derived from its identity (dht.Identity).

One secret to keep, not two: the pair is a function of the identity's ed25519 key (HKDF with a
label of its own, so neither key reveals the other), which is as persistent as the identity is.
With `--identity FILE` (a 0600 file, made on first start) the server keeps its peer id and its
CURVE key across restarts, so clients' connections and bans stay valid; without it both are
ephemeral, new on every start. The public half goes into the server's signed record
(ServerRecord.curve_key), so only the peer id's owner says which key answers for it.
"""
from __future__ import annotations

from dht import Identity
from wire import CurveKeys

__all__ = ["CURVE_KEY_LABEL", "server_curve_keys"]

CURVE_KEY_LABEL = b"zswarm/v1 CURVE server key"


def server_curve_keys(identity: Identity) -> CurveKeys:
    return CurveKeys.from_secret(identity.derive_secret(CURVE_KEY_LABEL))
