"""DHTConfig: every tunable of a DHT node, with its default written once, here."""

from dataclasses import dataclass


@dataclass(frozen=True)
class DHTConfig:
    # A client-only node (clients, zswarm-inspect) reads and stores through the DHT but enters no
    # routing table and holds no one's entries: it leaves no dead contact behind when it exits.
    client_only: bool = False
    # How many of the closest nodes hold each key. Reads ask all of them and union the answers;
    # 8 keeps a key alive with a quarter of the nodes dead (0.25**8 ~ 2e-5) while keeping an
    # 80-block lookup to a few hundred small datagrams.
    replicas: int = 8
    # Kademlia's k (bucket size) and alpha; kademlia's own refresh crawls use them.
    ksize: int = 20
    alpha: int = 3
    # kademlia waits a fixed 5 s for a dead contact; a shorter wait keeps lookups fast under churn.
    rpc_timeout: float = 2.0
    # Bulk requests (find_entries, store_entries) in flight at once: their replies must fit the
    # socket's receive buffer (Linux default ~200 KB, replies up to 8 KB each).
    max_inflight: int = 24
    # A contact that timed out is skipped for this long, even when other peers still list it.
    dead_contact_ttl: float = 60.0
    # Entries expiring further ahead than this are rejected: a record cannot pin itself forever.
    max_ttl: float = 24 * 3600.0
    # Tolerated clock difference between signer and verifier, seconds.
    max_clock_skew: float = 60.0
    # Bounds on what one node stores for others.
    max_keys: int = 100_000
    max_entries_per_key: int = 256
    # Wall-clock bounds for start() and for sync calls made from other threads.
    start_timeout: float = 30.0
    call_timeout: float = 60.0
    # A lookup gives up after max_lookup_rounds * rpc_timeout seconds in all.
    max_lookup_rounds: int = 12
    # A lookup asks the next closest node as well once a node is slower than straggler_factor x
    # the median reply time seen so far (at least min_straggler_s), and stops waiting for it
    # after give_up_factor x that median (at least min_give_up_s); see lookup.py.
    straggler_factor: float = 4.0
    min_straggler_s: float = 0.05
    give_up_factor: float = 16.0
    min_give_up_s: float = 0.3
    # Address diversity (diversity.py): ids one ip:port, one public IP and one public /24 (v6: /64)
    # may hold in a routing-table bucket and in a lookup's closest set of a key.
    max_ids_per_endpoint: int = 1
    max_ids_per_ip: int = 2
    max_ids_per_subnet: int = 4
    # Requests answered per source (a public IP, or a loopback/private ip:port) per second, and
    # the burst: well above one peer's lookups (a few datagrams per lookup per node), far below a flood.
    requests_per_source_s: float = 200.0
    request_burst: float = 400.0
    # New contacts being checked at once (a ping back before they enter the table; protocol.py).
    max_verifying: int = 256
