"""Codec: every wire dtype and shape round-trips bit-exactly; bad descriptors are typed errors."""
import lz4.block
import pytest
import torch
from hypothesis import given, settings, strategies as st

from wire.codec import (AUTO_MIN_BYTES, DTYPES, check_descriptor, decode_tensor, encode_tensor,
                        plan_compression, to_wire_dtype)
from wire.errors import BadTensor, CorruptPayload
from wire.limits import Limits

_SAME_SIZE_INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def random_tensor(dtype: torch.dtype, shape: list[int], seed: int) -> torch.Tensor:
    """Random bit patterns (NaNs, infs and subnormals included) for floats."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype in _SAME_SIZE_INT:
        bits = _SAME_SIZE_INT[dtype]
        info = torch.iinfo(bits)
        return torch.randint(info.min, info.max, shape, generator=g, dtype=bits).view(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=dtype)


def assert_bit_exact(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype in _SAME_SIZE_INT:
        a, b = a.view(_SAME_SIZE_INT[a.dtype]), b.view(_SAME_SIZE_INT[b.dtype])
    assert torch.equal(a, b)


@settings(max_examples=150, deadline=None)
@given(dtype=st.sampled_from(sorted(DTYPES)), shape=st.lists(st.integers(0, 7), max_size=4),
       compression=st.sampled_from(["none", "lz4", "auto"]), seed=st.integers(0, 2**31))
def test_any_dtype_and_shape_round_trips_bit_exact(dtype, shape, compression, seed):
    t = random_tensor(DTYPES[dtype], shape, seed)
    desc, payload = encode_tensor(t, compression=compression)
    assert_bit_exact(decode_tensor(desc, bytes(payload)), t)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_large_tensor_round_trips_compressed_and_raw(dtype):
    t = random_tensor(DTYPES[dtype], [3, 50_001], seed=1)
    for compression in ("none", "lz4", "auto"):
        desc, payload = encode_tensor(t, compression=compression)
        assert_bit_exact(decode_tensor(desc, bytearray(payload)), t)


def test_non_contiguous_and_zero_dim_tensors_round_trip():
    t = torch.arange(24, dtype=torch.float32).view(4, 6).t()[1:, ::2]
    for x in (t, torch.tensor(3.5, dtype=torch.bfloat16), torch.tensor(True)):
        desc, payload = encode_tensor(x)
        assert_bit_exact(decode_tensor(desc, payload), x.contiguous())


def test_auto_compresses_redundant_tensors_and_skips_noise_and_small_ones():
    zeros = torch.zeros(AUTO_MIN_BYTES, dtype=torch.bfloat16)
    assert encode_tensor(zeros)[0]["codec"] == "lz4s"
    noise = torch.randn(AUTO_MIN_BYTES).half()
    assert encode_tensor(noise)[0]["codec"] == "none"
    assert encode_tensor(torch.zeros(16, dtype=torch.bfloat16))[0]["codec"] == "none"
    assert encode_tensor(torch.zeros(16, dtype=torch.bfloat16), compression="lz4")[0]["codec"] == "lz4s"
    assert encode_tensor(zeros, compression="none")[0]["codec"] == "none"


def test_auto_sends_fp16_raw_without_probing_and_lz4_still_compresses_it():
    # fp16 activations never compress (bench_wire: ratio 1.00), so auto decides from the dtype
    zeros = torch.zeros(AUTO_MIN_BYTES, dtype=torch.float16)
    assert encode_tensor(zeros)[0]["codec"] == "none"
    desc, payload = encode_tensor(zeros, compression="lz4")
    assert desc["codec"] == "lz4s" and len(payload) < zeros.nbytes // 10
    assert_bit_exact(decode_tensor(desc, payload), zeros)


def test_plan_says_what_encoding_will_do():
    zeros_bf16 = torch.zeros(AUTO_MIN_BYTES, dtype=torch.bfloat16)
    noise_fp32 = torch.randn(AUTO_MIN_BYTES)
    assert plan_compression(zeros_bf16) == "lz4" and encode_tensor(zeros_bf16)[0]["codec"] == "lz4s"
    assert plan_compression(noise_fp32) == encode_tensor(noise_fp32)[0]["codec"] == "none"
    assert plan_compression(torch.zeros(AUTO_MIN_BYTES, dtype=torch.float16)) == "none"
    assert plan_compression(torch.zeros(16), "lz4") == "lz4"
    assert plan_compression(zeros_bf16, "none") == "none"


def test_uncompressed_encode_shares_the_tensor_memory():
    t = torch.randn(1, 512, 64).half()
    desc, payload = encode_tensor(t, compression="auto")
    assert desc["codec"] == "none"
    t[0, 0, 0] = 7.0
    assert decode_tensor(desc, payload)[0, 0, 0].item() == 7.0


def test_uncompressed_decode_shares_the_receive_buffer():
    buf = bytearray(torch.arange(4, dtype=torch.int32).numpy().tobytes())
    t = decode_tensor({"dtype": "int32", "shape": [4], "codec": "none"}, buf)
    buf[0] = 9
    assert t[0].item() == 9


def test_to_wire_dtype_clamps_to_fp16_range_and_keeps_nan():
    x = torch.tensor([1e6, -1e6, float("inf"), -float("inf"), float("nan"), 1.5])
    y = to_wire_dtype(x, torch.float16)
    assert y.dtype == torch.float16
    assert y[:4].tolist() == [65504.0, -65504.0, 65504.0, -65504.0]
    assert torch.isnan(y[4]) and y[5].item() == 1.5
    assert to_wire_dtype(x, torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("desc, payload, error", [
    ({"dtype": "complex64", "shape": [1], "codec": "none"}, b"\0" * 8, BadTensor),
    ({"dtype": "float16", "shape": [3], "codec": "none"}, b"\0" * 4, BadTensor),
    ({"dtype": "float16", "shape": [-1], "codec": "none"}, b"", BadTensor),
    ({"dtype": "float16", "shape": [2**40, 2**40], "codec": "none"}, b"", BadTensor),
    ({"dtype": "float16", "shape": [1] * 9, "codec": "none"}, b"\0\0", BadTensor),
    ({"dtype": "float16", "shape": ["2"], "codec": "none"}, b"\0" * 4, BadTensor),
    ({"dtype": "float16", "shape": [2], "codec": "zstd"}, b"\0" * 4, BadTensor),
    (["float16", [2]], b"\0" * 4, BadTensor),
    ({"dtype": "float32", "shape": [1024], "codec": "lz4"}, b"\xff" * 64, CorruptPayload),
    ({"dtype": "float32", "shape": [1024], "codec": "lz4"},
     lz4.block.compress(b"\0" * 4096, store_size=False)[:-3], CorruptPayload),
    ({"dtype": "float32", "shape": [1024], "codec": "lz4"},  # decodes, but to too few bytes
     lz4.block.compress(b"\0" * 4000, store_size=False), CorruptPayload),
    ({"dtype": "float32", "shape": [4], "codec": "lz4"}, b"\0" * 5000, CorruptPayload),
])
def test_bad_descriptor_or_payload_is_a_typed_error(desc, payload, error):
    with pytest.raises(error):
        decode_tensor(desc, payload, limits=Limits(max_elements=1 << 20))


def test_descriptor_check_reports_decoded_size_before_any_allocation():
    assert check_descriptor({"dtype": "bfloat16", "shape": [2, 3], "codec": "lz4s"})[3] == 12
    with pytest.raises(BadTensor):
        check_descriptor({"dtype": "int64", "shape": [1 << 20]}, Limits(max_elements=1 << 10))


def test_unsupported_dtype_cannot_be_encoded():
    with pytest.raises(BadTensor):
        encode_tensor(torch.zeros(2, dtype=torch.complex64))
