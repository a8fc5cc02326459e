"""`zswarm-server`: parse the command line into a `ServerConfig` and run the server.

Exit status, the convention of every zswarm command (0 done; 1 what was asked failed; 2 cannot
start): 0 after a clean stop (SIGTERM, Ctrl-C); 2 when it cannot start (a bad argument or
setting, a port in use, a model that cannot be found or loaded), with one line saying why. Arguments and settings are all checked
before the slow work (preparing the model, joining the DHT).

Every flag maps to one `ServerConfig` field of the same name. Flags default to "not given"
(`argparse.SUPPRESS`), so the only defaults are the dataclass's; help texts are the comments
written beside the fields in config.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Optional, Sequence

from zswarm.server.config import (
    DEVICES,
    DTYPES,
    LOG_LEVELS,
    PLACEMENTS,
    QUANTS,
    ConfigError,
    ServerConfig,
)
from zswarm.cli_logging import setup_logging
from zswarm.field_help import field_help as comments_beside_fields

_CHOICES = {"device": DEVICES, "dtype": DTYPES, "quant": QUANTS, "placement": PLACEMENTS}
_FLOATS = {"balance_quality", "rebalance_period", "min_move_interval", "throughput", "session_idle_timeout",
           "max_wait_timeout", "client_cache_share", "update_period", "expiration_periods", "drain_timeout"}
_INTS = {"num_blocks", "port", "dht_port", "attn_cache_tokens", "max_session_length", "max_batch_size",
         "max_request_tokens", "prefill_chunk_tokens", "max_client_sessions", "metrics_port"}
_STRINGS = {"host", "public_host", "identity", "public_name", "throughput_cache", "ready_file"}


def field_help() -> dict[str, str]:
    """The comment beside each field of ServerConfig, keyed by field name."""
    return comments_beside_fields(ServerConfig)


def _block_range(text: str) -> tuple[int, int]:
    start, sep, end = text.partition(":")
    if not sep or not start.strip().isdigit() or not end.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected A:B (block range [A, B)), got {text!r}")
    return int(start), int(end)


def build_parser() -> argparse.ArgumentParser:
    helps = field_help()
    defaults = {f.name: f.default for f in dataclasses.fields(ServerConfig)}

    def described(name: str) -> str:
        text = helps.get(name, "").replace("%", "%%")  # argparse formats help with %
        default = defaults.get(name)
        return f"{text} (default: {default})" if default not in (None, (), "", False) else text

    parser = argparse.ArgumentParser(
        prog="zswarm-server",
        description="Host a range of transformer blocks of MODEL in a zswarm swarm.",
        argument_default=argparse.SUPPRESS,
    )
    special = {
        "model": dict(nargs="?"),
        "block_indices": dict(type=_block_range, metavar="A:B"),
        "initial_peers": dict(nargs="+", metavar="HOST:PORT"),
        "adapters": dict(nargs="+", metavar="PATH"),
        "new_swarm": dict(action="store_true"),
        "insecure_plaintext": dict(action="store_true"),
        "rebalance": dict(action=argparse.BooleanOptionalAction),
        "cuda_graphs": dict(action=argparse.BooleanOptionalAction),
        "reachability_check": dict(action=argparse.BooleanOptionalAction),
        "log_level": dict(type=str.upper, choices=LOG_LEVELS),
    }
    parser.add_argument("--config", metavar="FILE",
                        help="a TOML file of these settings by name (num_blocks = 4, initial_peers = [...]); "
                             "flags given as well override it")
    for f in dataclasses.fields(ServerConfig):  # in the dataclass's order, so --help reads like config.py
        name = f.name
        if name in special:
            kwargs = special[name]
        elif name in _CHOICES:
            kwargs = dict(choices=_CHOICES[name])
        elif name in _INTS or name in _FLOATS or name in _STRINGS:
            kwargs = dict(type=int if name in _INTS else float if name in _FLOATS else str)
        else:
            raise TypeError(f"ServerConfig.{name} has no command-line flag")  # a new field needs one here
        flag = name if name == "model" else "--" + name.replace("_", "-")
        parser.add_argument(flag, help=described(name), **kwargs)
    return parser


def read_config_file(path: str) -> dict:
    """A TOML file of ServerConfig fields (`num_blocks = 4` or `num-blocks = 4`, as the flags are
    named) -> {field: value}; ConfigError naming the file for anything else."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the same parser, before it joined the standard library
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
    names = {f.name for f in dataclasses.fields(ServerConfig)}
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ConfigError(f"--config {path}: unknown setting {key!r} (settings are the flags' names, "
                              f"e.g. num_blocks or initial_peers)")
        if name == "block_indices" and isinstance(value, str):
            try:
                value = _block_range(value)
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"--config {path}: block_indices: {exc}") from None
        if name in ("initial_peers", "adapters") and isinstance(value, str):
            value = (value,)
        values[name] = value
    return values


def parse_config(argv: Optional[Sequence[str]] = None) -> ServerConfig:
    """Command line (and --config FILE, which flags override) -> ServerConfig; exits with a usage
    error for anything the config refuses."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    config_file = given.pop("config", None)
    try:
        if config_file:
            given = {**read_config_file(config_file), **given}
        for name in ("initial_peers", "adapters", "block_indices"):
            if isinstance(given.get(name), list):
                given[name] = tuple(given[name])
        return ServerConfig(**given)
    except (ConfigError, TypeError) as exc:  # TypeError: a value of the wrong kind in the file
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def main(argv: Optional[Sequence[str]] = None, *, hard_exit: bool = True, server_class: Optional[type] = None) -> int:
    """Entry point of `zswarm-server`. With `hard_exit`, the process ends right after the server
    has closed everything itself: tearing down torch and transformers at interpreter exit takes
    seconds and does nothing useful for a process that is leaving anyway. `server_class`: a
    subclass of Server to run (test-only servers, zswarm.testing.liar)."""
    config = parse_config(argv)
    # Before torch loads OpenMP: its worker threads otherwise spin for a while after every op,
    # and on a busy CPU they starve the event-loop thread that answers the network (measured on
    # 2 cores: a 1-token step through a server took 104 ms median with spinning, 4 ms without).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    setup_logging(config.log_level)
    from zswarm.server.server import Server, run_server  # heavy imports (torch) only after parsing

    code = run_server(config, server_class or Server)
    if hard_exit:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
