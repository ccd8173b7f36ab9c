"""A tracked ``gigaseg segment`` writes its MLflow run from a helper process started before its imports.

The helper's run must be the run the library makes in process: same tags, params,
metrics and artifacts; its failures must reach the command as they did (one line,
status 2, before any work); and a command that does not track must not leave it running.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import psutil
import pytest

from flows.cli import main
from pipeline.errors import InputError
from pipeline.job.config import SegmentConfig
from pipeline.tracking import recorder, segment_run
from pipeline.tracking import runs as tracking

ARGS = ["--tile", "64", "--block", "256", "--chunk", "128", "--quiet"]


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> mlflow.MlflowClient:
    """A fresh SQLite store for this test."""
    monkeypatch.setenv(tracking.ENV_URI, f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.MlflowClient()


@pytest.fixture
def helpers_taken(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What each tracked segmentation got from :func:`take_helper` (None: it ran MLflow in process)."""
    taken: list[object] = []

    def spy() -> recorder.HelperRecorder | None:
        taken.append(recorder.take_helper())
        return taken[-1]  # type: ignore[return-value]

    monkeypatch.setattr(segment_run, "take_helper", spy)
    return taken


def _artifacts(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(found)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_command_line_run_is_the_library_run(store, helpers_taken, small_scene, tiny_checkpoint, tmp_path):
    (tmp_path / "cli").mkdir()
    (tmp_path / "lib").mkdir()
    cli_out, lib_out = tmp_path / "cli" / "labels.tif", tmp_path / "lib" / "labels.tif"
    assert main(["segment", str(small_scene), "-m", str(tiny_checkpoint), "-o", str(cli_out), *ARGS]) == 0
    assert isinstance(helpers_taken[0], recorder.HelperRecorder)
    sizes = {"tile": 64, "block": 256, "chunk": 128}  # ARGS
    config = SegmentConfig(input=small_scene, model=str(tiny_checkpoint), output=lib_out, quiet=True, **sizes)
    lib = segment_run.track_segment_run(config)
    assert helpers_taken[1] is None

    runs = store.search_runs([store.get_experiment_by_name(tracking.SEGMENT_EXPERIMENT).experiment_id])
    [cli_run] = [r for r in runs if r.info.run_id != lib.run_id]
    lib_run = store.get_run(lib.run_id)
    assert cli_run.info.status == lib_run.info.status == "FINISHED"
    assert cli_run.data.tags == lib_run.data.tags  # MLflow's source tags too: the helper names the command
    cli_params, lib_params = dict(cli_run.data.params), dict(lib_run.data.params)
    assert cli_params.pop("output") == str(cli_out) and lib_params.pop("output") == str(lib_out)
    assert cli_params == lib_params
    timings = {k for k in lib_run.data.metrics if k.startswith("time_") or k in ("seconds", "mpx_per_s")}
    assert set(cli_run.data.metrics) == set(lib_run.data.metrics)
    for key in set(lib_run.data.metrics) - timings:
        assert cli_run.data.metrics[key] == pytest.approx(lib_run.data.metrics[key]), key
    assert _artifacts(store, cli_run.info.run_id) == _artifacts(store, lib_run.info.run_id) == [
        "preview.png", "regions/labels.regions.csv", "regions/labels.regions.geojson", "regions/regions.json",
    ]  # fmt: skip
    assert (tmp_path / "cli" / "labels.regions.csv").read_bytes() == (
        tmp_path / "lib" / "labels.regions.csv"
    ).read_bytes()


def test_refused_artifact_store_fails_the_command_before_any_work(
    monkeypatch, store, helpers_taken, small_scene, tiny_checkpoint, tmp_path, s3_endpoint, capsys
):
    monkeypatch.setenv(tracking.ENV_ARTIFACTS, "s3://no-such-gigaseg-bucket/mlflow")
    out = tmp_path / "o.tif"
    assert main(["segment", str(small_scene), "-m", str(tiny_checkpoint), "-o", str(out), *ARGS]) == 2
    assert isinstance(helpers_taken[0], recorder.HelperRecorder)
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "s3://no-such-gigaseg-bucket/mlflow" in message
    assert message.startswith("gigaseg: MLflow artifacts at") and "does not exist" in message
    assert not list(tmp_path.glob("o.tif*")) and not list(tmp_path.glob(".o.tif*"))
    runs = store.search_runs([store.get_experiment_by_name(tracking.SEGMENT_EXPERIMENT).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.parametrize("case", ["untracked", "bad input"])
def test_a_command_that_does_not_track_stops_the_helper(monkeypatch, small_scene, tmp_path, case):
    monkeypatch.setenv(tracking.ENV_URI, f"sqlite:///{tmp_path / 'mlflow.db'}")
    scene, extra = (small_scene, ["--no-tr"]) if case == "untracked" else (tmp_path / "missing.tif", [])
    before = _children()
    argv = ["segment", str(scene), "-m", "arch:conv1x1", "--num-classes", "3", "-o", str(tmp_path / "o.tif")]
    assert main([*argv, *ARGS, *extra]) == (0 if case == "untracked" else 2)
    assert _children() <= before
    assert recorder.take_helper() is None
    assert not (tmp_path / "mlflow.db").exists()


def test_helper_reports_failures_and_ends_runs_as_told(store, tmp_path):
    recorder.start_helper()
    helper = recorder.take_helper()
    assert helper is not None
    helper.start(tracking.SEGMENT_EXPERIMENT, "by hand", {"k": "v"}, False)
    (tmp_path / "a.txt").write_text("a")
    helper.log(params={"p": "1"}, metrics={"m": 2.0}, artifacts=[(str(tmp_path / "a.txt"), "files")])
    run_id = helper.sync()
    helper.log(artifacts=[(str(tmp_path / "missing.txt"), None)])
    helper.log(params={"q": "2"})  # skipped: the helper stops logging at its first failure
    with pytest.raises(Exception, match=r"missing\.txt") as failure:
        helper.sync()
    assert any("in the MLflow helper process" in note for note in getattr(failure.value, "__notes__", []))
    helper.end("KILLED")
    run = store.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.params == {"p": "1"} and run.data.metrics == {"m": 2.0} and run.data.tags["k"] == "v"
    assert _artifacts(store, run_id) == ["files/a.txt"]


def test_helper_refusing_to_start_is_the_in_process_error(monkeypatch, tmp_path):
    monkeypatch.setenv(tracking.ENV_URI, "nope://mlflow")
    recorder.start_helper()
    helper = recorder.take_helper()
    assert helper is not None
    with pytest.raises(InputError) as in_helper:
        helper.start(tracking.SEGMENT_EXPERIMENT, "x", {}, False)
    with pytest.raises(InputError) as in_process:
        recorder.LocalRecorder().start(tracking.SEGMENT_EXPERIMENT, "x", {}, False)
    assert str(in_helper.value) == str(in_process.value)
    helper.end("FAILED")  # nothing left to end: a no-op
