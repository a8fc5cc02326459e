"""Throughput: measured on the real block, cached in a versioned JSON file keyed by model/device/dtype/quant."""
import json

from zswarm.server.throughput import CACHE_VERSION, Rates, cache_key, get_rates, measure_rates, read_cache, write_cache


def test_measure_rates_times_real_blocks(tiny_span):
    rates = measure_rates(tiny_span.sub(0, 1), inference_steps=4, forward_tokens=16, progress=lambda _: None)
    assert rates.inference_rps > 0 and rates.forward_rps > 0
    assert rates.throughput(4) == rates.forward_rps / 4


def test_cache_file_round_trips_and_skips_measuring(tmp_path):
    path = tmp_path / "tp.json"
    key = cache_key("m", "cpu", "float32", "none")
    write_cache(path, key, Rates(10.0, 200.0))
    assert read_cache(path) == {key: Rates(10.0, 200.0)}
    assert json.loads(path.read_text())["version"] == CACHE_VERSION

    def must_not_load():
        raise AssertionError("measured although the cache had the answer")
    assert get_rates("m", "cpu", "float32", "none", must_not_load, path) == Rates(10.0, 200.0)


def test_other_dtype_or_quant_is_a_different_entry(tmp_path):
    assert cache_key("m", "cpu", "float32", "none") != cache_key("m", "cpu", "bfloat16", "none")
    assert cache_key("m", "cpu", "float32", "none") != cache_key("m", "cpu", "float32", "int8")


def test_foreign_old_or_malformed_cache_files_are_ignored(tmp_path):
    path = tmp_path / "tp.json"
    for text in ("not json", json.dumps({"format": "zswarm-throughput", "version": 0, "entries": {}}),
                 json.dumps({"format": "zswarm-throughput", "version": CACHE_VERSION,
                             "entries": {"k": {"inference_rps": "fast"}, "j": {"inference_rps": -1, "forward_rps": 1}}})):
        path.write_text(text)
        assert read_cache(path) == {}
