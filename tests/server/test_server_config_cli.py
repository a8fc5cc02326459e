"""ServerConfig holds every default; the CLI only parses into it."""
import dataclasses

import pytest
import torch

from zswarm.server.cli import build_parser, field_help, parse_config
from zswarm.server.config import ConfigError, ServerConfig


def test_no_flags_gives_exactly_the_dataclass_defaults():
    assert parse_config([]) == ServerConfig()


def test_every_config_field_has_a_flag_and_a_help_text():
    parser = build_parser()
    dests = {action.dest for action in parser._actions}
    helps = field_help()
    for f in dataclasses.fields(ServerConfig):
        assert f.name in dests, f"no command-line flag for ServerConfig.{f.name}"
        assert helps.get(f.name), f"ServerConfig.{f.name} has no comment to serve as --help"


def test_flags_parse_into_the_fields_of_the_same_name():
    config = parse_config([
        "some/model", "--block-indices", "2:5", "--initial-peers", "10.0.0.1:31337", "h:1",
        "--device", "cpu", "--dtype", "bfloat16", "--throughput", "12.5", "--attn-cache-tokens", "4096",
        "--placement", "petals", "--no-rebalance", "--identity", "/tmp/key", "--log-level", "debug",
    ])
    assert config.model == "some/model"
    assert config.block_indices == (2, 5)
    assert config.initial_peers == ("10.0.0.1:31337", "h:1")
    assert (config.device, config.dtype, config.throughput) == ("cpu", "bfloat16", 12.5)
    assert (config.attn_cache_tokens, config.placement, config.rebalance) == (4096, "petals", False)
    assert config.identity == "/tmp/key" and config.log_level == "DEBUG"


@pytest.mark.parametrize("argv, fragment", [
    (["--num-blocks", "2", "--block-indices", "0:2"], "not both"),
    (["--block-indices", "3:3"], "start < end"),
    (["--block-indices", "x"], "expected A:B"),
    (["--new-swarm", "--initial-peers", "a:1"], "not both"),
    (["--initial-peers", "nohost"], "HOST:PORT"),
    (["--balance-quality", "1.5"], "balance_quality"),
    (["--num-blocks", "0"], "num_blocks"),
    (["--throughput", "-1"], "throughput"),
    (["--quant", "int8", "--device", "cpu"], "cuda"),
    (["--update-period", "0"], "update_period"),
])
def test_bad_flags_exit_with_a_message_naming_the_problem(argv, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(argv)
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_rebalancing_defaults_to_on_unless_blocks_are_pinned():
    assert ServerConfig(num_blocks=2).rebalance_enabled
    assert not ServerConfig(block_indices=(0, 2)).rebalance_enabled
    assert ServerConfig(block_indices=(0, 2), rebalance=True).rebalance_enabled


def test_config_refuses_bad_values_directly_too():
    with pytest.raises(ConfigError, match="dtype"):
        ServerConfig(dtype="float8")
    assert ServerConfig(update_period=10, expiration_periods=3).record_ttl == 30


def test_cuda_graphs_default_on_and_can_be_turned_off(tiny_llama_dir):
    from zswarm.models import resolve_model
    from zswarm.server.loading import load_blocks

    assert parse_config(["m", "--num-blocks", "1"]).cuda_graphs
    assert not parse_config(["m", "--num-blocks", "1", "--no-cuda-graphs"]).cuda_graphs
    source = resolve_model(tiny_llama_dir)
    span = load_blocks(source, 0, 2, dtype=torch.float32, device="cpu", cuda_graphs=False)
    assert not span.graphs.enabled and not span.sub(1, 2).graphs.enabled


def test_a_config_file_sets_fields_by_their_flag_names_and_flags_override_it(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text('model = "some/model"\nnum-blocks = 4\ninitial_peers = ["10.0.0.1:31337"]\n'
                    'public_name = "alice"\nmetrics_port = 9100\n')
    config = parse_config(["--config", str(path), "--num-blocks", "2"])
    assert (config.model, config.num_blocks, config.initial_peers) == ("some/model", 2, ("10.0.0.1:31337",))
    assert (config.public_name, config.metrics_port) == ("alice", 9100)
    path.write_text('block_indices = "3:5"\nnew_swarm = true\n')
    assert parse_config(["--config", str(path)]).block_indices == (3, 5)


@pytest.mark.parametrize("text, fragment", [
    ("num_blokcs = 4\n", "unknown setting 'num_blokcs'"),
    ("num_blocks = \n", "not valid TOML"),
    ("num_blocks = -1\n", "num_blocks must be a positive integer"),
    ("block_indices = \"3\"\n", "expected A:B"),
])
def test_a_bad_config_file_is_a_usage_error_naming_the_setting(tmp_path, capsys, text, fragment):
    path = tmp_path / "server.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        parse_config(["--config", str(path)])
    assert exit_.value.code == 2 and fragment in capsys.readouterr().err


def test_the_example_config_in_docs_parses(tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "docs" / "packaging" / "server.toml"
    config = parse_config(["--config", str(example)])
    assert config.initial_peers and config.host == "0.0.0.0" and config.metrics_port
