"""Deployments: ``infra/prefect.yaml`` is valid for our flows, and a served deployment runs on a real
Prefect server process started here on loopback, triggered through the API."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from bench.loopback import free_port
from tests.conftest import write_raster

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_deployments_point_at_real_flows_with_valid_parameters() -> None:
    spec = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        file, name = dep["entrypoint"].split(":")
        module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        if dep.get("parameters"):
            flow.validate_parameters(dep["parameters"])
        for schedule in dep.get("schedules", []):
            from prefect.client.schemas.schedules import CronSchedule

            CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))


def test_segment_flow_takes_its_config_as_plain_json() -> None:
    """A deployment run passes parameters as JSON: they become the same SegmentConfig the CLI builds."""
    from flows.segment_scene import segment_scene_flow
    from pipeline.job.config import SegmentConfig

    given = {"input": "/data/a.tif", "model": "arch:conv1x1", "output": "/out/a.tif", "tile": 256}
    params = segment_scene_flow.validate_parameters({"config": given})
    assert params["config"] == SegmentConfig(**given)


def test_segment_flow_parameter_schema_holds_every_config_field() -> None:
    """Prefect's parameter schema is built from SegmentConfig itself: no field is lost or renamed."""
    import dataclasses

    from flows.segment_scene import segment_scene_flow
    from pipeline.job.config import SegmentConfig

    schema = segment_scene_flow.parameters.model_dump()
    assert schema["properties"]["config"]["$ref"].endswith("/SegmentConfig")
    fields = {f.name for f in dataclasses.fields(SegmentConfig)}
    assert set(schema["definitions"]["SegmentConfig"]["properties"]) == fields


def test_deployed_watch_options_are_segment_config_engine_options() -> None:
    from flows.arguments import ENGINE_OPTIONS

    spec = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    options = [
        dep["parameters"]["options"] for dep in spec["deployments"] if "options" in dep.get("parameters", {})
    ]
    assert options
    for given in options:
        assert set(given) <= set(ENGINE_OPTIONS), set(given) - set(ENGINE_OPTIONS)


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError("prefect server did not become healthy")


def _stderr_of(proc: subprocess.Popen) -> str:
    _stop(proc)
    return proc.stderr.read().decode(errors="replace")[-4000:] if proc.stderr else ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


TRIGGER = """
import sys, time
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
name = sys.argv[1]
deadline = time.monotonic() + 300
while True:
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(2)
run = run_deployment(name, timeout=600, poll_interval=2)
print("STATE", run.state.type.value)
"""


@pytest.mark.slow
def test_served_watch_deployment_runs_when_triggered_through_the_api(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    out.mkdir()
    rng = np.random.default_rng(0)
    write_raster(inbox / "scene.tif", (rng.random((3, 160, 200)) * 3000 + 100).astype(np.uint16), nodata=0)

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    serve = None
    try:
        _wait_healthy(api, server, 240)
        client_env = dict(env, PREFECT_API_URL=api, PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="INFO")
        serve = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "watch", str(inbox), "--output-dir", str(out),
             "-m", str(tiny_checkpoint), "--tile", "64", "--every", "86400", "--name", "ci", "--quiet"],
            cwd=ROOT,
            env=client_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        trigger = subprocess.run(
            [sys.executable, "-c", TRIGGER, "watch-imagery/ci"],
            cwd=ROOT,
            env=client_env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert "STATE COMPLETED" in trigger.stdout, trigger.stdout + trigger.stderr[-3000:]
        outputs = list(out.glob("scene.*.labels.tif"))
        assert len(outputs) == 1, _stderr_of(serve)
        with rasterio.open(outputs[0]) as dst, rasterio.open(inbox / "scene.tif") as src:
            assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
    finally:
        if serve is not None:
            _stop(serve)
        _stop(server)
