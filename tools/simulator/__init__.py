"""A fast, pure-Python swarm simulator for comparing block placement strategies.

It runs the same `zswarm.placement` and `zswarm.routing` functions as the server and the
client. Entry points: `load_scenario(name)`, `run(scenario, strategy)`, `compare(ours, theirs)`;
the CLI is tools/simulate.py.
"""

from .results import Comparison, RunResult, compare, run
from .scenario import Scenario, ScenarioError, list_scenarios, load_scenario, parse_scenario

__all__ = ["Scenario", "ScenarioError", "RunResult", "Comparison", "load_scenario", "parse_scenario",
           "list_scenarios", "run", "compare"]
