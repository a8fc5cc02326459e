"""Each default is written once: the modules that need one read it from where it is written."""
import dataclasses

import torch

from zswarm import defaults
from zswarm.dtypes import as_torch_dtype, dtype_name
from zswarm.field_help import field_help


def test_server_limits_default_to_the_server_configs():
    from zswarm.server.config import SERVER_LIMITS, ServerConfig
    from zswarm.server.handlers import ServingState

    state = ServingState(model_id="m", num_blocks=1, hidden_size=8, dtype="float32", quant="none", peer_id="p",
                         version="v")
    config = ServerConfig()
    assert {name: getattr(state, name) for name in SERVER_LIMITS} == {name: getattr(config, name) for name in SERVER_LIMITS}


def test_client_placement_and_routing_read_the_same_routing_defaults():
    from zswarm.client.config import ClientConfig
    from zswarm.placement import LatencyModel

    client = ClientConfig()
    assert (client.hop_overhead_s, client.no_cache_penalty_s, client.unknown_rtt_s) == (
        defaults.HOP_OVERHEAD_S, defaults.NO_CACHE_PENALTY_S, defaults.UNKNOWN_RTT_S)
    assert LatencyModel().hop_overhead == defaults.HOP_OVERHEAD_S


def test_the_default_model_is_the_embedded_one():
    from zswarm.demo.config import DemoConfig
    from zswarm.models.default_model import DEFAULT_MODEL_ID  # zswarm.models keeps its own copy for now
    from zswarm.server.config import ServerConfig

    assert ServerConfig().model == DemoConfig().model == defaults.DEFAULT_MODEL_ID == DEFAULT_MODEL_ID


def test_dtype_names_round_trip():
    assert dtype_name(torch.bfloat16) == dtype_name("torch.bfloat16") == "bfloat16"
    assert as_torch_dtype("float16") is as_torch_dtype("torch.float16") is torch.float16
    assert as_torch_dtype("nonsense") is None and as_torch_dtype("nn") is None


def test_field_help_reads_the_comment_beside_each_field():
    @dataclasses.dataclass
    class Config:
        size: int = 3  # how big
        name: str = "x"

    assert field_help(Config) == {"size": "how big"}
