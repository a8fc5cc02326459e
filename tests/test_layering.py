"""The layers of docs/architecture.md, pinned: what each package may import directly.

wire and dht import nothing of zswarm (nor each other); zswarm.models, and the pure algorithms
(routing, placement, defaults, the swarm vocabulary in swarm_info and blocks), import no network code: not zmq, wire's transport or server,
dht, nor zswarm's client, server or tools. (zswarm.errors, which every layer may import, reads
wire.errors for the error replies' base class; that module is plain exception classes. The swarm
vocabulary reads wire.endpoint, the one definition of an address that names a CURVE key: pure
string code, no zmq.)
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NETWORK = ("zmq", "wire", "dht", "zswarm.client", "zswarm.server", "zswarm.inspect", "zswarm.demo", "kademlia")
ALLOWED_EVERYWHERE = ("zswarm.errors", "zswarm.defaults", "zswarm.dtypes", "zswarm.blocks", "zswarm.swarm_info",
                      "wire.endpoint")


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def offending(files, forbidden, allowed=()):
    return sorted(f"{path.relative_to(ROOT)}: {name}" for path in files for name in imports_of(path)
                  if _under(name, forbidden) and not _under(name, allowed))


def test_wire_imports_nothing_of_zswarm_or_dht():
    assert offending((ROOT / "wire").rglob("*.py"), ("zswarm", "dht")) == []


def test_wire_endpoint_is_pure_string_code():
    assert offending([ROOT / "wire" / "endpoint.py"], ("zmq",)) == []
    assert imports_of(ROOT / "wire" / "endpoint.py") <= {"__future__", "base64", "binascii", "errors"}


def test_dht_imports_nothing_of_zswarm_or_wire():
    assert offending((ROOT / "dht").rglob("*.py"), ("zswarm", "wire")) == []


@pytest.mark.parametrize("part", ["models", "placement", "routing.py", "defaults.py", "swarm_info.py", "blocks.py"])
def test_models_and_the_pure_algorithms_import_no_network_code(part):
    target = ROOT / "zswarm" / part
    files = [target] if target.is_file() else list(target.rglob("*.py"))
    assert files
    assert offending(files, NETWORK, ALLOWED_EVERYWHERE) == []
