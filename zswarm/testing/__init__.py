"""Launching real zswarm processes on this machine, for tests, benchmarks, examples and zswarm-demo.

    launch.py   ServerProcess (one zswarm-server child, ready when its --ready-file appears) and
                LocalSwarm (a DHT bootstrap node here plus servers on loopback)
"""
