"""The shared local Prefect server: one per user, reused by later commands, never one command's child.

Real processes and a real Prefect server throughout (no mocks). Each test keeps the
server's state under its own folder (``GIGASEG_STATE_DIR``) and runs commands
without the test session's ``PREFECT_API_URL``, so they find or start that server.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flows.prefect_server import IDLE_ENV, MODE_ENV, STATE_DIR_ENV, _alive, idle_minutes, read_state
from pipeline.errors import InputError
from tests.conftest import write_raster

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
SEGMENT = ["-m", "arch:conv1x1", "--num-classes", "2", "--tile", "64", "--workers", "0", "--no-track"]


def _env(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "GIGASEG_PREFECT"))}
    env.update({"PYTHONPATH": str(ROOT), STATE_DIR_ENV: str(state), **extra})
    return env


def _gigaseg(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "flows.cli", *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)


def _folder(state: Path) -> Path:
    [folder] = state.glob("prefect-server-*")
    return folder


def _wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _flow_runs(url: str) -> list[str]:
    request = urllib.request.Request(
        f"{url}/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return [run["state_type"] for run in json.loads(response.read())]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One state folder for the module (its database is created once); no server left behind."""
    folder = tmp_path_factory.mktemp("gigaseg-state")
    yield folder
    for found in folder.glob("prefect-server-*"):
        server = read_state(found)
        if server and _alive(server["pid"]):
            os.kill(server["pid"], 15)


def test_idle_minutes_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IDLE_ENV, "0.5")
    assert idle_minutes() == 0.5
    monkeypatch.setenv(IDLE_ENV, "soon")
    with pytest.raises(InputError, match=IDLE_ENV):
        idle_minutes()


def test_the_users_api_and_the_ephemeral_opt_out_start_nothing(tmp_path: Path) -> None:
    probe = "from flows.prefect_server import use_prefect_api; print(use_prefect_api())"
    given = _env(tmp_path, PREFECT_API_URL="http://127.0.0.1:9/api")
    ephemeral = _env(tmp_path, **{MODE_ENV: "ephemeral"})
    for env, expected in ((given, "http://127.0.0.1:9/api"), (ephemeral, "None")):
        command = [sys.executable, "-c", probe]
        result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        assert result.stdout.strip() == expected, result.stderr[-2000:]
    assert not list(tmp_path.iterdir()), "a server was started although the user chose the API"


def test_heartbeats_are_off_on_a_server_gigaseg_picks_unless_the_user_set_them(tmp_path: Path) -> None:
    probe = (
        "from flows.prefect_server import use_prefect_api; use_prefect_api(); "
        "from prefect.settings import get_current_settings as s; print(s().flows.heartbeat_frequency)"
    )
    ephemeral = {MODE_ENV: "ephemeral"}
    cases = (
        # gigaseg picked the API (nobody watches heartbeats there), then the user asked for them
        (_env(tmp_path, **ephemeral), "None"),
        (_env(tmp_path, **ephemeral, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="60"), "60"),
        # the user's own server: Prefect's default, untouched
        (_env(tmp_path, PREFECT_API_URL="http://127.0.0.1:9/api"), "180"),
    )
    for env, expected in cases:
        command = [sys.executable, "-c", probe]
        result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        assert result.stdout.strip() == expected, result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads process states in /proc")
def test_two_commands_share_one_server_that_outlives_them_and_stops_when_idle(state: Path, tmp_path: Path):
    rng = np.random.default_rng(1)
    scene = write_raster(tmp_path / "s.tif", (rng.random((3, 96, 96)) * 3000 + 100).astype(np.uint16))
    env = _env(state, **{IDLE_ENV: "0.1"})  # 6 s

    def segment(out: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "flows.cli", "segment", str(scene), *SEGMENT, "-o", out, "--quiet"]
        return subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE)

    first = segment(str(tmp_path / "a.tif"))
    time.sleep(3)
    second = segment(str(tmp_path / "b.tif"))
    try:
        for proc in (first, second):
            _, err = proc.communicate(timeout=TIMEOUT_S)
            assert proc.returncode == 0, err.decode()[-3000:]
    finally:
        first.kill()
        second.kill()

    server = read_state(_folder(state))
    assert server is not None and _alive(server["pid"]), "the server died with the commands"
    assert os.getsid(server["pid"]) == server["pid"], "the server is not detached in its own session"
    assert _flow_runs(server["url"]) == ["COMPLETED", "COMPLETED"]  # both commands, one server
    assert _wait_until(lambda: not _alive(server["pid"]), 60), "the server did not stop when idle"
    assert read_state(_folder(state)) is None


@pytest.mark.slow
def test_server_stop_refuses_while_a_command_holds_a_lease(state: Path) -> None:
    env = _env(state, **{IDLE_ENV: "0"})  # never stops by itself
    started = _gigaseg("server", "start", env=env)
    assert started.returncode == 0, started.stderr
    folder = _folder(state)
    server = read_state(folder)
    assert server is not None and _alive(server["pid"])
    assert _gigaseg("server", "status", env=env).returncode == 0

    with open(folder / "lease.lock", "a+") as lease:  # what a running command holds
        fcntl.flock(lease, fcntl.LOCK_SH)
        refused = _gigaseg("server", "stop", env=env)
    assert refused.returncode == 2 and "in use" in refused.stderr
    assert _alive(server["pid"])

    stopped = _gigaseg("server", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert _wait_until(lambda: not _alive(server["pid"]), 10)
    assert _gigaseg("server", "status", env=env).returncode == 1
