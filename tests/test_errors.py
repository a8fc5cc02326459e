"""One exception tree: every exception class zswarm defines is a ZswarmError, and wire's and
dht's errors reach a caller of the client's public API mapped into it, chained."""
import importlib
import inspect
import pkgutil

import pytest

import zswarm
from dht.errors import BootstrapError
from wire.errors import RemoteError, RequestTimeout, SocketError, WireError
from zswarm.errors import NoRouteError, ServerError, SwarmUnreachable, TransportError, ZswarmError

# Classes the tree cannot hold yet, each with the reason.
NOT_YET: set = set()  # none left


def _exception_classes():
    for info in pkgutil.walk_packages(zswarm.__path__, "zswarm."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                yield f"{cls.__module__}.{cls.__qualname__}", cls


def test_every_exception_class_under_zswarm_derives_from_zswarm_error():
    found = dict(_exception_classes())
    assert "zswarm.models.errors.ModelError" in found and "zswarm.errors.NoRouteError" in found
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, ZswarmError) and name not in NOT_YET)
    assert outside == []


def test_the_old_import_places_still_name_the_same_classes():
    from zswarm.client.failures import ServerUnavailable, SpanFailed
    from zswarm.client.local_swarm import ServerExitedError, ServersNotOnlineError
    from zswarm.demo import DemoError
    from zswarm.inspect import InspectError
    from zswarm.server import ConfigError
    from zswarm.server.addresses import BindError
    from zswarm.server.cache_budget import BudgetTimeout
    from zswarm.server.memory import InsufficientMemoryError
    from zswarm.server.quant import QuantizationUnavailable
    import zswarm.errors as errors

    for cls in (ServerUnavailable, SpanFailed, ServerExitedError, ServersNotOnlineError, DemoError, InspectError,
                ConfigError, BindError, BudgetTimeout, InsufficientMemoryError, QuantizationUnavailable):
        assert getattr(errors, cls.__name__) is cls
    assert issubclass(ConfigError, ValueError) and issubclass(ServersNotOnlineError, TimeoutError)


def test_no_route_error_takes_its_adapter_in_the_constructor():
    assert NoRouteError([(0, 2)], "m").adapter is None
    assert NoRouteError([(0, 2)], "m", "why", adapter="style").adapter == "style"


@pytest.mark.parametrize("lower, mapped", [
    (RequestTimeout("ping to tcp://x:1: no reply within 1 s"), TransportError),
    (SocketError("boom"), TransportError),
    (RemoteError("some_new_code", "why"), ServerError),
    (BootstrapError("none of the initial peers answered"), SwarmUnreachable),
])
def test_wire_and_dht_errors_reach_a_public_api_caller_mapped_and_chained(lower, mapped):
    from zswarm.client.failures import public_errors

    with pytest.raises(mapped) as caught:
        with public_errors():
            raise lower
    assert caught.value.__cause__ is lower and isinstance(caught.value, ZswarmError)
    if isinstance(lower, RemoteError):
        assert caught.value.code == "some_new_code"


def test_zswarm_errors_pass_the_mapping_untouched():
    from zswarm.client.failures import public_errors

    error = NoRouteError([(0, 1)], "m")
    with pytest.raises(NoRouteError) as caught:
        with public_errors():
            raise error
    assert caught.value is error
    assert issubclass(ServerError, WireError)  # a registered error reply is both: wire re-raises it as such


def test_a_peer_address_without_a_port_is_a_config_error_for_client_and_server():
    from zswarm.client.config import ClientConfig
    from zswarm.errors import ConfigError
    from zswarm.server.config import ServerConfig

    for make in (lambda: ClientConfig(initial_peers=["10.0.0.1"]), lambda: ServerConfig(initial_peers=("10.0.0.1",))):
        with pytest.raises(ConfigError, match="10.0.0.1"):
            make()
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, ZswarmError)
