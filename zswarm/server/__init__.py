"""zswarm.server: the daemon that hosts a range of blocks and serves them over wire/.

    config = ServerConfig(model="path/to/model", num_blocks=4, new_swarm=True)
    exit_code = run_server(config)         # what `zswarm-server` runs after parsing its flags

See docs/architecture.md ("The RPC protocol") for the methods a server answers.
"""

from zswarm.server.config import ConfigError, ServerConfig

__all__ = ["ConfigError", "ServerConfig", "Server", "run_server"]


def __getattr__(name):  # Server pulls in torch and transformers: import it only when used
    if name in ("Server", "run_server"):
        from zswarm.server import server

        return getattr(server, name)
    raise AttributeError(name)
