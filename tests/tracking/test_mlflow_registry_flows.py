"""Training → registration → promotion → rollback → ``-m models:/NAME@champion``, on the embedded
SQLite store and on a real ``mlflow server`` process (loopback, SQLite backend, proxied artifacts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest
import rasterio

from bench.loopback import free_port
from flows.cli import main
from flows.promote_model import promote_model
from flows.train_model import train_model
from pipeline.demos.sample_scene import CLASS_NAMES, write_sample_scene
from pipeline.tracking import model_versions
from pipeline.training.settings import TrainSettings

TINY = {"width": 6, "depth": 2, "padding": "same", "batch_norm": True}
GOOD_FLOOR_MIOU = 0.45  # 3 × 10 steps of a 6-wide U-Net on the sample scene; v1 (2 steps) stays far below


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and every process it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module", params=["sqlite", "server"])
def backend(request, tmp_path_factory: pytest.TempPathFactory):
    """MLFLOW_TRACKING_URI for this module: a fresh SQLite file, or a server process started here."""
    folder = tmp_path_factory.mktemp(f"mlflow-{request.param}")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    proc = None
    if request.param == "sqlite":
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    else:
        port = free_port()
        log = open(folder / "server.log", "w")  # noqa: SIM115 (held by the server process)
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                "--artifacts-destination", str(folder / "artifacts"),
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            ],
            stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
            # no background job runner (7 processes of ~250 MB): nothing here uses MLflow server jobs
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        os.environ["MLFLOW_TRACKING_URI"] = url
    yield request.param
    if proc is not None:
        _stop(proc)
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory):
    return write_sample_scene(tmp_path_factory.mktemp("sample"), 192, 0)


@pytest.fixture(scope="module")
def trained(backend, scene, tmp_path_factory: pytest.TempPathFactory):
    """Version 1: barely trained (2 steps). Version 2: trained for 3 epochs."""
    work = tmp_path_factory.mktemp("train")
    name = f"landcover-{backend}"
    reports = []
    for i, (epochs, steps) in enumerate([(1, 2), (3, 10)]):
        settings = TrainSettings(
            arch="unet", arch_config=TINY, tile=64, batch_size=4, epochs=epochs, steps_per_epoch=steps,
            loss="ce+dice", balanced=True, device="cpu",
        )  # fmt: skip
        reports.append(
            train_model([str(scene.image)], [str(scene.labels)], name, settings, work_dir=work / f"v{i + 1}")
        )
    return name, reports


def test_training_registers_versions_with_inference_metadata(trained):
    name, (weak, good) = trained
    assert (weak.version.version, good.version.version) == (1, 2)
    assert good.outcome.best.miou > GOOD_FLOOR_MIOU > weak.outcome.best.miou
    assert good.outcome.best.miou > good.outcome.history[0].miou  # it learned over the epochs
    client = mlflow.MlflowClient()
    mv = client.get_model_version(name, "2")
    assert mv.run_id == good.run_id and float(mv.tags["val_miou"]) == pytest.approx(good.outcome.best.miou)
    run = client.get_run(good.run_id)
    assert run.data.params["arch"] == "unet" and run.data.params["class_names"] == ",".join(CLASS_NAMES)
    history = client.get_metric_history(good.run_id, "val_miou")
    assert [m.step for m in history] == [1, 2, 3]
    arts = {a.path for a in client.list_artifacts(good.run_id, "validation")}
    assert {"validation/preview.png", "validation/confusion_matrix.json"} <= arts

    found = model_versions.resolve(f"models:/{name}/2")
    folder = found.checkpoint.parent
    mlmodel = (folder / "MLmodel").read_text()
    assert "gigaseg" in mlmodel and "signature" in mlmodel and (folder / "input_example.json").exists()
    assert not list(folder.rglob("*.pkl"))
    card = json.loads((folder / "card.json").read_text())
    assert card["arch"] == "unet" and card["class_names"] == CLASS_NAMES
    assert card["normalization"]["kind"] == "meanstd" and len(card["normalization"]["mean"]) == 4
    assert card["tile_size"] and len(card["class_colors"]) == 5 and card["config"]["in_channels"] == 4


def test_promotion_rollback_and_champion_resolution(trained, scene, tmp_path):
    name, _ = trained
    first = promote_model(name, 1, scene.image, scene.labels)
    assert first.action == "first" and first.champion == 1
    better = promote_model(name, 2, scene.image, scene.labels, margin=0.0)
    assert better.action == "promoted" and better.champion == 2
    assert better.candidate_score > better.champion_score
    worse = promote_model(name, 1, scene.image, scene.labels)
    assert worse.action == "kept" and worse.champion == 2
    assert worse.candidate_score < worse.champion_score
    back = promote_model(name, None, rollback_champion=True)
    assert back.action == "rolled_back" and back.champion == 1
    client = mlflow.MlflowClient()
    assert int(client.get_model_version_by_alias(name, "champion").version) == 1

    runs = mlflow.search_runs(
        experiment_names=["gigaseg-promotion"],
        filter_string=f"tags.`gigaseg.kind` = 'promotion' and tags.`gigaseg.model_name` = '{name}'",
        order_by=["start_time ASC"],
        output_format="list",
    )
    assert [r.data.tags["gigaseg.decision"] for r in runs] == ["first", "promoted", "kept", "rolled_back"]
    assert runs[2].data.metrics["candidate_score"] == pytest.approx(worse.candidate_score)
    assert runs[2].data.metrics["champion_score"] == pytest.approx(worse.champion_score)
    assert client.get_model_version(name, "2").tags["gigaseg.decision"] == "rolled_back"  # the demoted one

    out = tmp_path / "classes.tif"
    rc = main(["segment", str(scene.image), "-m", f"models:/{name}@champion", "-o", str(out), "--quiet"])
    assert rc == 0 and out.exists() and (tmp_path / "classes.regions.csv").exists()
    with rasterio.open(out) as src:
        assert src.tags()["GIGASEG_MODEL"] == f"models:/{name}@champion"
    seg = mlflow.search_runs(
        experiment_names=["gigaseg-segment"],
        filter_string=f"tags.`gigaseg.model_name` = '{name}'",
        output_format="list",
    )
    assert seg and seg[0].data.tags["gigaseg.model_version"] == "1"


def test_unknown_registry_model_is_a_one_line_error(backend, scene, tmp_path, capsys):
    rc = main(["segment", str(scene.image), "-m", "models:/nope@champion", "-o", str(tmp_path / "x.tif")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "models:/nope@champion" in err[0]
