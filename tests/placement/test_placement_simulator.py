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


def test_placement_that_sees_only_measured_rtts_still_gives_each_continent_the_whole_model(split_regions):
    sc, petals, _ = split_regions
    blind = run(sc, "latency", regions_known=False)  # no region labels: only what a server can measure
    assert compare(blind, petals).latency_speedup > 1.5


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


def test_reshuffled_instances_keep_the_servers_and_change_only_seed_and_join_order():
    from simulator.scenario import reshuffled

    sc = load_scenario("public-swarm")
    assert reshuffled(sc, 0) is sc
    other = reshuffled(sc, 3)
    assert [(s.name, s.blocks, s.region) for s in other.servers] == [(s.name, s.blocks, s.region) for s in sc.servers]
    assert sorted(s.join_at_s for s in other.servers) == sorted(s.join_at_s for s in sc.servers)
    assert [s.join_at_s for s in other.servers] != [s.join_at_s for s in sc.servers]
    assert other.seed != sc.seed and sc.servers[0].join_at_s == 0  # the original is untouched
    assert [s.join_at_s for s in reshuffled(sc, 3).servers] == [s.join_at_s for s in other.servers]


def test_bound_parts_add_up_and_no_placement_could_be_twice_as_fast_as_petals_on_the_public_swarm():
    from simulator.bound import client_weighted_bound, least_time_breakdown

    sc = load_scenario("public-swarm")
    floor = least_time_breakdown(sc, "eu", "client")
    # three 24 GB cards (38 blocks each) per route; each span pays a 30 ms round trip and 8 ms overhead
    assert floor.spans == 3 and floor.network == pytest.approx(0.09) and floor.overhead == pytest.approx(0.024)
    assert floor.total == pytest.approx(floor.compute + floor.network + floor.overhead)
    assert least_time_per_token(sc, "eu", "client") == pytest.approx(floor.total)
    petals = run(sc, "petals")
    assert petals.mean_ms < 2 * 1000 * client_weighted_bound(sc, "client")


def test_what_if_variants_recompute_what_follows_from_the_edit():
    from simulator.whatif import VARIANTS, variant

    assert {s.blocks for s in variant("public-swarm", "half-kv").servers if s.gpu.memory_gb == 24} == {40}
    assert {s.blocks for s in variant("public-swarm", "double-memory").servers if s.gpu.name == "rtx4090"} == {76}
    assert variant("public-swarm", "server-relay").relay == "server"
    assert set(variant("public-swarm", "far-clients").client_regions) == {"elsewhere"}
    for name in VARIANTS:
        assert variant("split-regions", name).servers


def test_cli_reports_instances_and_what_if(tmp_path, capsys):
    import simulate

    assert simulate.main(["-s", "split-regions", "--instances", "2"]) == 0
    printed = capsys.readouterr().out
    assert "mean speedup" in printed and "instances" in printed
    out = tmp_path / "w.json"
    assert simulate.main(["--what-if", "split-regions", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "petals/bound" in printed and "half-kv" in printed
    assert {v["variant"] for v in json.loads(out.read_text())["what_if"]} >= {"as-modelled", "server-relay"}
