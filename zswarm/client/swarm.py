"""`SwarmConnection`: the client's link to one model's swarm -- an event loop in a thread, a
transport, a DHT node and the sequence manager -- shared by the model, its sessions and its
remote blocks. Tests pass their own `transport` and `fetch_records` (a synthetic swarm)."""
from __future__ import annotations

import logging
from typing import Coroutine, TypeVar

from dht import DHTConfig, DHTNode
from zswarm.records import afetch_block_servers
from dht.node import listen_host_for
from wire import BackgroundLoop, Transport, ZmqTransport
from zswarm.client.config import ClientConfig
from zswarm.errors import ConfigError
from zswarm.client.failures import public_errors
from zswarm.client.sequence_manager import RecordsFetcher, SequenceManager

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SwarmConnection:
    def __init__(self, config: ClientConfig, *, model_id: str, num_blocks: int,
                 transport: Transport | None = None, fetch_records: RecordsFetcher | None = None):
        self.config = config
        self.model_id = model_id
        self.num_blocks = num_blocks
        self.loop = BackgroundLoop("zswarm-client")
        self.dht: DHTNode | None = None
        try:
            self._connect(transport, fetch_records)
        except BaseException:
            self.close()
            raise

    def _connect(self, transport: Transport | None, fetch_records: RecordsFetcher | None) -> None:
        config, model_id, num_blocks = self.config, self.model_id, self.num_blocks
        with public_errors():
            if fetch_records is None:
                if not config.initial_peers:
                    raise ConfigError("initial_peers is empty: give the DHT address of a swarm (host:port)")
                self.dht = DHTNode(host=listen_host_for(config.initial_peers), initial_peers=config.initial_peers,
                                   config=DHTConfig(client_only=True)).start()
                dht = self.dht

                async def fetch_records():
                    return await afetch_block_servers(dht, model_id, 0, num_blocks)

            self.transport = (transport if transport is not None
                              else ZmqTransport(insecure_plaintext=config.insecure_plaintext))
            self.manager = SequenceManager(config, model_id=model_id, num_blocks=num_blocks,
                                           transport=self.transport, fetch_records=fetch_records)
        self.run(self.manager.start())

    def run(self, coro: Coroutine[object, object, T]) -> T:
        """Run `coro` on the client's loop and wait for it (every wait inside is bounded); wire's
        and dht's errors come out mapped into zswarm's tree (`failures.public_errors`)."""
        with public_errors():
            return self.loop.run(coro)

    def close(self) -> None:
        manager = getattr(self, "manager", None)
        transport = getattr(self, "transport", None)
        try:
            if manager is not None:
                self.run(manager.close())
            if transport is not None:
                self.run(transport.close())
        except Exception as exc:  # closing must not raise over the error that made us close
            logger.debug("closing the swarm connection: %s", exc)
        self.loop.close()
        if self.dht is not None:
            self.dht.shutdown()
            self.dht = None
