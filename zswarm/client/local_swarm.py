"""Moved: `LocalSwarm` and the server launcher live in zswarm.testing.launch. These names stay
importable from here for the code that imported them from the client package."""
from zswarm.testing.launch import (LAUNCHER, REPO, LocalSwarm, ServerExitedError, ServerProcess,  # noqa: F401
                                   ServersNotOnlineError, split_blocks)

__all__ = ["LocalSwarm", "ServerProcess", "split_blocks", "ServerExitedError", "ServersNotOnlineError"]
