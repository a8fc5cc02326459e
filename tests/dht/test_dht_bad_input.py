"""Hostile datagrams: junk, oversize, malformed msgpack, wrong shapes. None may crash a node,
store anything, or flood the log."""

import logging
import os
import socket
import time

import msgpack
import pytest

from dht.server import key_digest


def _request(method, *args) -> bytes:
    return b"\x00" + os.urandom(20) + msgpack.packb([method, list(args)])


NODE_ID = os.urandom(20)
KEY = key_digest("target")
HOSTILE = [
    b"",
    b"x",
    os.urandom(21),
    os.urandom(300),  # random bytes after a plausible header
    b"\x00" + os.urandom(20) + b"\xc1\xc1\xc1",  # msgpack's never-used byte
    b"\x00" + os.urandom(20) + msgpack.packb("not a request"),
    b"\x00" + os.urandom(20) + b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
    b"\x00" + os.urandom(20) + b"\xc6\x7f\xff\xff\xff",  # bin claiming 2 GiB
    b"\x01" + os.urandom(20) + msgpack.packb([True, "reply nobody asked for"]),
    b"\x07" + os.urandom(20) + msgpack.packb([1]),
    _request("no_such_method"),
    _request("__init__"),
    _request("ping"),  # missing argument
    _request("ping", "not-bytes"),
    _request("find_node", NODE_ID, b"short"),
    _request("store", NODE_ID, KEY, b"kademlia-style plain value"),
    _request("store_entries", NODE_ID, "not a list"),
    _request("store_entries", NODE_ID, [[KEY, b"junk entry"], "x", [KEY]]),
    _request("store_entries", NODE_ID, [[KEY, b"\x95" + os.urandom(200)]] * 65),
    _request("find_entries", NODE_ID, [[KEY, b"", []]] * 17, True),
    _request("find_entries", NODE_ID, [[b"k", 5, []]], True),
    _request("find_entries", NODE_ID, [[KEY, b"", [b"short"]]], True),
    _request("find_entries", NODE_ID, [[KEY, b"", [b"12345678"] * 65]], True),
    _request("find_entries", NODE_ID, [[KEY, b""]], True),
    _request("find_entries", NODE_ID, [[KEY, b"", []]], "yes"),
    b"\x00" + os.urandom(20) + b"\x00" * 9000,  # oversize
    b"\x00" * 60000,  # far oversize
]


def test_hostile_datagrams_neither_crash_nor_store_and_are_logged_once(make_swarm, caplog):
    nodes = make_swarm(4)
    target = nodes[1]
    host, port = target.address.rsplit(":", 1)
    caplog.set_level(logging.WARNING, logger="dht")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.2)
        for _ in range(2):  # each twice: the second time must not be logged again
            for datagram in HOSTILE:
                sock.sendto(datagram, (host, int(port)))
        time.sleep(0.3)
        replies = []
        try:
            while True:
                replies.append(sock.recv(65536))
        except socket.timeout:
            pass
    # Only the well-formed store_entries request is answered, with every item refused; the
    # never-seen sender is pinged back once (before it could enter the routing table), no more.
    pings = [r for r in replies if r[0] == 0]
    replies = [r for r in replies if r[0] != 0]
    for reply in replies:
        assert msgpack.unpackb(reply[21:]) == [False, False, False]
    assert len(replies) <= 2
    assert len(pings) <= 1 and all(msgpack.unpackb(p[21:])[0] == "ping" for p in pings)
    assert target._server.storage.keys() == []

    # Still a working node: it stores and serves.
    assert nodes[2].store("after-junk", b"ok", time.time() + 60)
    assert target.get("after-junk")[nodes[2].peer_id].value == b"ok"

    rejections = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejections) == 1, rejections  # once per peer, however much it sends


@pytest.mark.parametrize("value", [b"x" * 10_000])
def test_oversize_value_is_refused_before_sending(make_swarm, value):
    from dht import InvalidEntry

    (node,) = make_swarm(1)
    with pytest.raises(InvalidEntry, match="limit"):
        node.store("big", value, time.time() + 60)
