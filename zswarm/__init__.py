"""zswarm: large language models split across a swarm of servers."""

__version__ = "0.1.0"
