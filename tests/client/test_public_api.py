"""The public API is exactly what README shows: a short, deliberate list."""
import zswarm


def test_zswarm_exports_exactly_the_public_api():
    assert sorted(zswarm.__all__) == [
        "AutoDistributedModelForCausalLM", "AutoDistributedModelForSequenceClassification", "ClientConfig", "NoRouteError", "ServerError",
        "SessionClosedError", "SessionLengthError", "ZswarmError",
    ]
    for name in zswarm.__all__:
        assert getattr(zswarm, name) is not None


def test_client_config_splits_its_fields_from_other_keyword_arguments():
    config, rest = zswarm.ClientConfig.from_kwargs({"max_retries": 2, "initial_peers": ["h:1"], "foo": 1})
    assert config.max_retries == 2 and config.initial_peers == ("h:1",) and rest == {"foo": 1}


def test_client_config_rejects_an_unknown_wire_dtype():
    import pytest

    with pytest.raises(ValueError, match="wire_dtype"):
        zswarm.ClientConfig(wire_dtype="int8")


def test_auto_wire_dtype_follows_the_models_dtype_so_float32_models_stay_exact():
    import torch

    from zswarm.client.model import choose_wire_dtype

    assert choose_wire_dtype("auto", torch.bfloat16) is torch.bfloat16
    assert choose_wire_dtype("auto", torch.float32) is torch.float32
    assert choose_wire_dtype("auto", None) is torch.float32  # transformers loads such a checkpoint as float32
    assert choose_wire_dtype("auto", torch.float16) is torch.float16
    assert choose_wire_dtype("float32", torch.bfloat16) is torch.float32
