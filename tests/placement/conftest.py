"""Real-server fixtures for placement tests: the ones tests/server/conftest.py defines, reused as they are.

pytest only sees a conftest's fixtures below its own folder, so this loads that file under
another module name and re-exports what placement tests need (one definition, no copy).
"""

import importlib.util
from pathlib import Path

_path = Path(__file__).resolve().parents[1] / "server" / "conftest.py"
_spec = importlib.util.spec_from_file_location("zswarm_tests_server_fixtures", _path)
_server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_server)

tiny_model_dir = _server.tiny_model_dir
tiny_model_id = _server.tiny_model_id
spawn_server = _server.spawn_server
dht_client = _server.dht_client
