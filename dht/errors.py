"""Errors raised by dht/, one tree:

    DHTError
    ├── IdentityError       an identity file that cannot be read or is not an ed25519 key
    ├── InvalidEntry        a signed entry that fails decoding, size, expiry or signature checks
    │   └── ExpiredEntry    an entry whose expiration time has passed (routine, not an attack)
    ├── BadRequest          a DHT datagram or RPC argument that is malformed
    ├── BootstrapError      none of the initial peers answered
    └── AddressError (ValueError)  a peer address that is not "host:port"
"""


class DHTError(Exception):
    """Base of every error dht/ raises on purpose."""


class IdentityError(DHTError):
    pass


class InvalidEntry(DHTError):
    pass


class ExpiredEntry(InvalidEntry):
    pass


class BadRequest(DHTError):
    pass


class BootstrapError(DHTError):
    pass


class AddressError(DHTError, ValueError):
    """A peer address that is not "host:port" (or "[v6]:port") with a port in 1..65535."""
