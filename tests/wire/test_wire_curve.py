"""CURVE on the wire: addresses that name a key, key pairs, and what a wrong key or a missing
one gets (typed errors at once, not timeouts)."""
import asyncio

import pytest
import zmq

from wire import (BackgroundLoop, CurveKeys, HandshakeFailed, PlaintextRefused, RequestTimeout, RpcServer,
                  ZmqTransport)
from wire.endpoint import endpoint, format_key, parse_key, split_endpoint
from wire.errors import BadAddress

# Far above a loopback handshake: a call that got this far would have failed as a timeout.
TIMEOUT = 30.0


def test_libzmq_has_curve():
    assert zmq.has("curve")


def test_an_address_names_its_key_and_gives_it_back():
    keys = CurveKeys.generate()
    text = endpoint("tcp://10.0.0.5:31337", keys.public)
    assert text.startswith("tcp://10.0.0.5:31337#curve=") and "/" not in text[len("tcp://"):]
    assert split_endpoint(text) == ("tcp://10.0.0.5:31337", keys.public)
    assert split_endpoint("tcp://10.0.0.5:31337") == ("tcp://10.0.0.5:31337", None)
    assert endpoint("tcp://h:1", b"") == "tcp://h:1"
    assert parse_key(format_key(keys.public)) == keys.public


@pytest.mark.parametrize("key", ["", "abc", "A" * 52, "1" * 52, "a" * 53])
def test_a_malformed_key_in_an_address_is_a_bad_address(key):
    with pytest.raises(BadAddress):
        split_endpoint(f"tcp://h:1#curve={key}")


def test_a_key_pair_from_a_secret_is_that_secrets_pair_and_never_prints_it():
    keys = CurveKeys.generate()
    assert CurveKeys.from_secret(keys.secret) == keys
    assert format_key(keys.secret) not in repr(keys) and format_key(keys.public) in repr(keys)


def _serve_and_call(server_kwargs, address_of, transport_kwargs=None):
    """Start an RpcServer, call `address_of(server)` with a fresh transport; the exception (or
    None) and the methods that reached the server."""
    seen = []

    async def ping(request):
        seen.append(request.method)
        return {}, []

    async def main():
        server = RpcServer({"ping": ping}, **server_kwargs)
        await server.start()
        try:
            async with ZmqTransport(**(transport_kwargs or {})) as transport:
                try:
                    await transport.call(address_of(server), "ping", timeout=TIMEOUT)
                except Exception as exc:
                    return exc, seen
                return None, seen
        finally:
            await server.stop()

    return asyncio.run(asyncio.wait_for(main(), 2 * TIMEOUT))


def test_the_right_key_is_served():
    assert _serve_and_call({}, lambda s: s.address) == (None, ["ping"])


def test_a_server_without_the_key_named_is_refused_at_once_and_hears_nothing():
    wrong = CurveKeys.generate().public
    exc, seen = _serve_and_call({}, lambda s: endpoint(split_endpoint(s.address)[0], wrong))
    assert isinstance(exc, HandshakeFailed) and not isinstance(exc, RequestTimeout), exc
    assert seen == []


def test_dialling_a_curve_server_in_clear_fails_the_handshake():
    exc, seen = _serve_and_call({}, lambda s: split_endpoint(s.address)[0], {"insecure_plaintext": True})
    assert isinstance(exc, HandshakeFailed) and seen == []


def test_a_keyless_address_is_refused_unless_plaintext_is_allowed():
    exc, seen = _serve_and_call({"insecure_plaintext": True}, lambda s: s.address)
    assert isinstance(exc, PlaintextRefused) and seen == []
    assert _serve_and_call({"insecure_plaintext": True}, lambda s: s.address, {"insecure_plaintext": True}) \
        == (None, ["ping"])


def test_calls_after_a_failed_handshake_fail_at_once_until_one_succeeds():
    wrong = CurveKeys.generate().public
    loop = BackgroundLoop("curve-test")

    async def ping(request):
        return {}, []

    async def main():
        server = RpcServer({"ping": ping})
        await server.start()
        address = endpoint(split_endpoint(server.address)[0], wrong)
        try:
            async with ZmqTransport() as transport:
                errors = []
                for _ in range(3):
                    try:
                        await transport.call(address, "ping", timeout=TIMEOUT)
                    except HandshakeFailed as exc:
                        errors.append(exc)
                await transport.call(server.address, "ping", timeout=TIMEOUT)  # its own key: served
                return errors, len(transport._connections)
        finally:
            await server.stop()

    try:
        errors, connections = loop.run(main(), timeout=2 * TIMEOUT)
    finally:
        loop.close()
    assert len(errors) == 3
    assert connections == 2  # one address, two keys: two servers to this transport
