"""docs/packaging: the systemd unit and the Dockerfile start the server the way its CLI reads,
with the example config; ports agree across the three. (No Docker daemon here: the image is not
built in CI; systemd-analyze checks the unit where the machine has it.)"""
import configparser
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from zswarm.server.cli import parse_config, read_config_file

PACKAGING = Path(__file__).resolve().parents[1] / "docs" / "packaging"
EXAMPLE = PACKAGING / "server.toml"


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)  # systemd repeats keys (Environment=)
    unit.optionxform = str
    unit.read(PACKAGING / "zswarm-server.service")
    return unit


def test_the_systemd_unit_runs_zswarm_server_with_the_example_config_and_stops_it_with_sigterm():
    unit = _unit()
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    binary, *args = shlex.split(service["ExecStart"])
    assert binary.endswith("/zswarm-server") and args == ["--config", "/etc/zswarm/server.toml"]
    assert parse_config(["--config", str(EXAMPLE)]).host == "0.0.0.0"  # what ExecStart reads, as installed
    assert service["KillSignal"] == "SIGTERM" and service["RestartPreventExitStatus"] == "2"  # 2: cannot start
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_finds_nothing_wrong_with_the_unit_but_the_absent_install():
    if shutil.which("systemd-analyze") is None:
        return  # checked by the parse above only
    done = subprocess.run(["systemd-analyze", "verify", str(PACKAGING / "zswarm-server.service")],
                          capture_output=True, text=True, timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "is not executable" not in line]  # /opt/zswarm is not installed here
    assert problems == []


def test_the_dockerfile_runs_the_server_on_the_ports_the_example_config_uses():
    text = (PACKAGING / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    assert entrypoint == ["zswarm-server"] and cmd == ["--config", "/etc/zswarm/server.toml"]
    exposed = set(re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split())
    settings = read_config_file(str(EXAMPLE))
    assert {f"{settings['port']}/tcp", f"{settings['dht_port']}/udp", f"{settings['metrics_port']}/tcp"} <= exposed
    assert "STOPSIGNAL SIGTERM" in text
