"""Launching real zswarm processes on this machine, for tests, benchmarks, examples and zswarm-demo.

    launch.py   ServerProcess (one zswarm-server child, ready when its --ready-file appears) and
                LocalSwarm (a DHT bootstrap node here plus servers on loopback)
    liar.py     a lying server (perturbed, zero or NaN outputs, an inflated record), for the
                verification tests; run with LocalSwarm.start(..., module="zswarm.testing.liar")
"""
