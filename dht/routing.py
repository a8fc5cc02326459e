"""BoundedRoutingTable: kademlia's routing table (Kademlia section 2.4) with address diversity.

A contact joins a bucket -- or its replacement list -- only if the bucket then still holds at most
`per_ip` contacts of its public IP and `per_subnet` of its /24 (diversity.py), and only if no other
id already stands for its ip:port anywhere in the table: the first id heard from an endpoint keeps
it (Kademlia prefers old contacts), so a socket that claims thousands of ids takes one slot.
"""

from __future__ import annotations

from kademlia.routing import RoutingTable

from dht.diversity import AddressLimits, fits, groups_of


class BoundedRoutingTable(RoutingTable):
    def __init__(self, protocol, ksize: int, node, limits: AddressLimits):
        self.limits = limits
        super().__init__(protocol, ksize, node)

    def contact(self, node):
        """The table's contact with node's id (in its bucket or replacement list), or None."""
        bucket = self.buckets[self.get_bucket_for(node)]
        return bucket.nodes.get(node.id) or bucket.replacement_nodes.get(node.id)

    def endpoint_taken(self, node) -> bool:
        """Does another id already stand for node's ip:port in this table?"""
        groups = groups_of(node)
        if not groups:
            return False
        endpoint = groups[0]
        for bucket in self.buckets:
            for other in (*bucket.nodes.values(), *bucket.replacement_nodes.values()):
                if other.id != node.id and groups_of(other)[:1] == (endpoint,):
                    return True
        return False

    def admits(self, node) -> bool:
        bucket = self.buckets[self.get_bucket_for(node)]
        if node.id in bucket.nodes or node.id in bucket.replacement_nodes:
            return True
        if self.endpoint_taken(node):
            return False
        return fits(node, (*bucket.nodes.values(), *bucket.replacement_nodes.values()), self.limits)

    def add_contact(self, node):
        if self.admits(node):
            super().add_contact(node)
