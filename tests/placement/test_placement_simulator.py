"""The simulator in tools/ runs the real placement and routing functions and is deterministic."""

import copy
import json
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

from simulator import ScenarioError, compare, list_scenarios, load_scenario, parse_scenario, run  # noqa: E402
from simulator.bound import least_time_per_token  # noqa: E402


@pytest.fixture(scope="module")
def split_regions():
    """Petals vs latency on the small two-continent scenario (simulated, deterministic numbers)."""
    sc = load_scenario("split-regions")
    return sc, run(sc, "petals"), run(sc, "latency")


def test_latency_placement_beats_petals_where_petals_splits_the_model_across_continents(split_regions):
    sc, petals, latency = split_regions
    c = compare(latency, petals)
    assert c.latency_speedup > 1.5  # each continent gets the whole model: no ocean crossing per token
    assert c.served_ratio >= 0.95 and c.capacity_ratio >= 0.95 and c.coverage_ratio >= 0.95
    # no placement can beat the bound; the latency strategy gets within 10% of it here
    bound = sum(least_time_per_token(sc, r, "client") for r in ("us", "eu")) / 2
    assert 1000 * bound <= latency.mean_ms <= 1.1 * 1000 * bound


def test_simulation_is_deterministic(split_regions):
    sc, petals, _ = split_regions
    again = run(sc, "petals")
    assert again.row() | {"wall_s": 0} == petals.row() | {"wall_s": 0}
    assert again.timeline == petals.timeline


def test_a_server_leaving_shows_in_coverage_and_sessions_fail_over():
    sc = load_scenario("split-regions")
    data = json.loads((TOOLS / "simulator" / "scenarios" / "split-regions.json").read_text())
    data["churn"] = [{"server": 0, "leave_at_s": 300, "return_at_s": 400}]
    data["servers"] = data["servers"][:3]  # the server that leaves is the only one on its blocks... for a while
    sc = parse_scenario(data)
    r = run(sc, "latency")
    assert r.min_coverage < 1.0  # a gap was seen
    assert r.timeline[-1][1] == 1.0  # and closed again (a server moved in, or the leaver came back)
    assert r.reroutes > 0


def test_every_shipped_scenario_loads():
    names = list_scenarios()
    assert {"public-swarm", "lan-cluster", "one-slow-server", "heavy-churn", "many-clients"} <= set(names)
    for name in names:
        sc = load_scenario(name)
        assert sc.servers and sc.clients > 0


def test_bad_scenarios_are_named_errors():
    good = json.loads((TOOLS / "simulator" / "scenarios" / "split-regions.json").read_text())
    for path, value, message in [(("model", "num_blocks"), -3, "num_blocks"), (("servers",), [], "no servers"),
                                 (("network", "relay"), "pigeon", "relay"),
                                 (("servers",), [{"gpu": "nope", "region": "us"}], "unknown gpu")]:
        bad = copy.deepcopy(good)
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(ScenarioError, match=message):
            parse_scenario(bad)
    with pytest.raises(ScenarioError, match="no scenario"):
        load_scenario("does-not-exist")


def test_cli_prints_a_table_and_writes_json(tmp_path, capsys):
    import simulate  # tools/simulate.py, in-process: a second interpreter would only add start-up time

    out = tmp_path / "r.json"
    assert simulate.main(["-s", "split-regions", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "split-regions" in printed and "speedup" in printed
    assert simulate.main(["-s", "no-such-scenario"]) == 2
    payload = json.loads(out.read_text())
    assert {r["strategy"] for r in payload["results"]} == {"petals", "latency"}
    assert payload["results"][0]["timeline"]
