"""Socket options shared by the ROUTER server and the DEALER client."""
from __future__ import annotations

import zmq

from .limits import Limits

__all__ = ["configure_socket", "HWM_MESSAGES"]

# Messages queued per peer before a DEALER send waits / a ROUTER reply is dropped; well above
# the thousand requests one client may keep in flight.
HWM_MESSAGES = 10_000


def configure_socket(sock: zmq.Socket, limits: Limits) -> None:
    sock.setsockopt(zmq.LINGER, 0)  # close never blocks on unsent messages
    # libzmq drops a peer that sends any single frame above this, before we allocate for it
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
    sock.setsockopt(zmq.SNDHWM, HWM_MESSAGES)
    sock.setsockopt(zmq.RCVHWM, HWM_MESSAGES)
    # reconnect fast after a server restart, then back off to 1 s
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    # notice a peer that vanished without closing TCP (power loss, NAT drop)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
