"""MLflow artifacts on object storage (DESIGN.md, invariant 9): the embedded SQLite store with
``GIGASEG_MLFLOW_ARTIFACTS=s3://…``, and a real ``mlflow server --artifacts-destination s3://…
--serve-artifacts``; both against moto's S3 server on loopback (``bucket`` fixture)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from safetensors.torch import load_file

from bench.loopback import free_port
from models.checkpoint import load_checkpoint
from pipeline.errors import InputError
from pipeline.job.config import SegmentConfig
from pipeline.stores.location import ObjectLocation
from pipeline.tracking import model_versions
from pipeline.tracking import runs as tracking
from pipeline.tracking.segment_run import track_segment_run
from tests.tracking.test_mlflow_registry_flows import _stop


def keys(where: ObjectLocation) -> list[str]:
    return sorted(k.split("/", 1)[1] for k in where.fs.find(where.url))


@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bucket: ObjectLocation) -> ObjectLocation:
    """A fresh SQLite store whose experiments keep their artifacts under ``bucket/mlflow``."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(tracking.ENV_ARTIFACTS, f"{bucket}/mlflow/")
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)  # set from AWS_ENDPOINT_URL, restored after
    return bucket / "mlflow"


def _register(checkpoint: Path, name: str) -> str:
    """Register the checkpoint as version 1 of ``name`` (a run of the training experiment); its run id."""
    model, card = load_checkpoint(checkpoint)
    with tracking.run(tracking.TRAIN_EXPERIMENT, f"register {name}") as r:
        model_versions.register_version(model, card, name, r.info.run_id)
    return r.info.run_id


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(bool((x[k] == y[k]).all()) for k in x)


def test_embedded_store_puts_run_and_model_artifacts_on_the_bucket(
    embedded, small_scene, tiny_checkpoint, s3_endpoint, tmp_path
):
    local_runs = Path("mlruns")  # MLflow's own default folder: must get nothing from this run
    before = set(local_runs.rglob("*"))
    tracked = track_segment_run(
        SegmentConfig(
            input=small_scene,
            model=str(tiny_checkpoint),
            output=tmp_path / "labels.tif",
            block=256,
            quiet=True,
        )
    )
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == s3_endpoint
    run = mlflow.MlflowClient().get_run(tracked.run_id)
    prefix = f"mlflow/{tracking.SEGMENT_EXPERIMENT}/{tracked.run_id}/artifacts"
    assert run.info.artifact_uri == f"{embedded.parent}/{prefix}"
    found = keys(embedded)
    assert {f"{prefix}/preview.png", f"{prefix}/regions/labels.regions.csv"} <= set(found)
    assert not (tmp_path / "mlruns").exists() and set(local_runs.rglob("*")) == before

    _register(tiny_checkpoint, "tiny-on-a-bucket")
    assert any(k.startswith(f"mlflow/{tracking.TRAIN_EXPERIMENT}/models/") for k in keys(embedded))
    version = model_versions.resolve("models:/tiny-on-a-bucket/1")
    assert _same_weights(version.checkpoint, tiny_checkpoint)


def test_missing_artifact_bucket_is_one_line_before_any_work(
    monkeypatch, small_scene, tiny_checkpoint, tmp_path, s3_endpoint
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(tracking.ENV_ARTIFACTS, "s3://no-such-gigaseg-bucket/mlflow")
    config = SegmentConfig(
        input=small_scene, model=str(tiny_checkpoint), output=tmp_path / "o.tif", quiet=True
    )
    with pytest.raises(InputError) as err:
        track_segment_run(config)
    message = str(err.value)
    assert "\n" not in message and "s3://no-such-gigaseg-bucket/mlflow" in message
    assert "does not exist" in message
    assert not list(tmp_path.glob("o.tif*"))
    runs = mlflow.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name(tracking.SEGMENT_EXPERIMENT).experiment_id]
    )
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bucket: ObjectLocation, s3_endpoint: str):
    """A real ``mlflow server`` (SQLite backend) proxying artifacts to ``bucket/server``."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (held by the server process)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_S3_ENDPOINT_URL"}  # AWS_ENDPOINT_URL alone
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", f"{bucket}/server", "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv(tracking.ENV_ARTIFACTS, "s3://ignored-with-a-server/x")  # a server decides
        yield bucket / "server"
    finally:
        _stop(proc)


def test_server_with_proxied_s3_artifacts_stores_and_serves_a_model_version(server, tiny_checkpoint):
    run_id = _register(tiny_checkpoint, "tiny-via-server")
    assert mlflow.MlflowClient().get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    found = keys(server)
    assert any(k.startswith("server/") and k.endswith("model.safetensors") for k in found), found
    version = model_versions.resolve("models:/tiny-via-server/1")
    assert _same_weights(version.checkpoint, tiny_checkpoint)
