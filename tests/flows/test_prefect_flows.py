"""The Prefect flows on Prefect's test harness (see the ``prefect_api`` fixture in conftest)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.cli import main
from flows.segment_scene import segment_scene_flow
from flows.watch_imagery import process_new_imagery
from models.checkpoint import load_checkpoint, save_checkpoint
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import segment
from pipeline.watch.ledger import LEDGER_NAME, SceneLedger
from tests._varying_models import label_spread
from tests.conftest import write_raster

ENGINE = {"tile": 64, "block": 256, "chunk": 128, "quiet": True}


def _labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _scene(path: Path, seed: int, size: tuple[int, int] = (200, 300)) -> Path:
    rng = np.random.default_rng(seed)
    return write_raster(path, (rng.random((3, *size)) * 3000 + 100).astype(np.uint16), nodata=0)


def _probabilities(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_flow_result_equals_library_call(small_scene: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Same options, same pixels: every engine option below differs from its default, so a flow
    that dropped or altered one would change the probabilities (the model's labels vary)."""
    options = {**ENGINE, "overlap": 0.5, "blend": "constant"}

    def config(name: str) -> SegmentConfig:
        out = tmp_path / f"{name}.tif"
        probs = tmp_path / f"{name}.probs.tif"
        return SegmentConfig(
            input=small_scene, model=str(tiny_checkpoint), output=out, probabilities=probs, **options
        )

    via_flow = segment_scene_flow(config("flow"))
    direct = segment(config("lib"))
    label_spread(_labels(direct.output)).check(min_classes=4, min_share=0.15)
    np.testing.assert_array_equal(
        _probabilities(tmp_path / "flow.probs.tif"), _probabilities(tmp_path / "lib.probs.tif")
    )
    np.testing.assert_array_equal(_labels(via_flow.output), _labels(direct.output))
    assert via_flow.class_fractions == direct.class_fractions
    assert (via_flow.pixels, via_flow.valid_pixels, via_flow.blocks_run) == (
        direct.pixels,
        direct.valid_pixels,
        direct.blocks_run,
    )


def _task_runs(flow_run_id) -> dict[str, list[str]]:
    """Task name → states of its runs, for one flow run, read back from the Prefect API."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
        )
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(r.name.rsplit("-", 1)[0], []).append(r.state.type.value)
    return out


def test_input_error_fails_the_named_stage_once_without_retry(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A GeoTIFF whose header reads but whose pixels are cut off fails in ``ingest``, not retried."""
    good = _scene(tmp_path / "good.tif", 0, (600, 600))
    data = good.read_bytes()
    bad = tmp_path / "cut.tif"
    bad.write_bytes(data[: len(data) // 2])
    config = SegmentConfig(input=bad, model=str(tiny_checkpoint), output=tmp_path / "o.tif", **ENGINE)
    state = segment_scene_flow(config, return_state=True)
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        run = client.read_flow_runs(flow_run_filter=run_filter)[0]
    tasks = _task_runs(run.id)
    assert tasks["check"] == ["COMPLETED"]
    assert tasks["ingest"] == ["FAILED"], "an input error must not be retried"
    assert "infer" not in tasks and "export" not in tasks
    assert "cut.tif" in state.message
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "o.tif.gigaseg-work").exists()


@pytest.mark.parametrize("native", [True, False])
def test_resample_and_map_back_run_as_tasks_only_when_the_scene_is_resampled(
    tiny_checkpoint: Path, tmp_path: Path, native: bool
) -> None:
    model, card = load_checkpoint(tiny_checkpoint)
    at_20m = save_checkpoint(tmp_path / "20m.safetensors", model, dataclasses.replace(card, gsd=20.0))
    config = SegmentConfig(  # the scene is at 10 m/px
        input=_scene(tmp_path / "s.tif", 1, (128, 128)), model=str(at_20m), output=tmp_path / "o.tif",
        native_resolution=native, **ENGINE,
    )  # fmt: skip
    state = segment_scene_flow(config, track=False, return_state=True)
    assert state.is_completed()

    tasks = _task_runs(state.state_details.flow_run_id)
    stages = ["check", "ingest", "plan", "infer", "export", "metrics", "publish"]
    if not native:
        stages += ["resample", "map-back"]
    assert sorted(tasks) == sorted(stages)
    assert all(states == ["COMPLETED"] for states in tasks.values())


def test_watch_segments_new_scenes_once_and_isolates_a_corrupt_one(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    out.mkdir()
    params = {
        "input_url": str(inbox),
        "output_dir": str(out),
        "model": str(tiny_checkpoint),
        "max_concurrent": 2,
        "options": {"tile": 64, "block": 256, "chunk": 128},
    }
    _scene(inbox / "earlier.tif", 1)
    first = process_new_imagery(**params)
    assert len(first.processed) == 1 and not first.failed
    earlier_output = Path(first.processed[0][1])
    earlier_mtime = earlier_output.stat().st_mtime_ns

    _scene(inbox / "a.tif", 2)
    _scene(inbox / "b.tif", 3)
    (inbox / "corrupt.tif").write_bytes(b"II*\x00 this is not really a tiff")
    second = process_new_imagery(**params)
    assert sorted(Path(s).name for s, _ in second.processed) == ["a.tif", "b.tif"]
    assert [Path(s).name for s, _ in second.failed] == ["corrupt.tif"]
    assert "corrupt.tif" in second.failed[0][1]
    assert second.unchanged == 1
    assert earlier_output.stat().st_mtime_ns == earlier_mtime, "a processed scene was redone"
    outputs = sorted(p.name for p in out.glob("*.labels.tif"))
    assert len(outputs) == 3 and len(set(outputs)) == 3

    # the ledger survives (a fresh reader sees it); nothing is redone, the corrupt file is not retried
    statuses = {Path(e.source).name: e.status for e in SceneLedger(out / LEDGER_NAME).entries()}
    assert statuses == {"earlier.tif": "done", "a.tif": "done", "b.tif": "done", "corrupt.tif": "failed"}
    third = process_new_imagery(**params)
    assert not third.processed and not third.failed and third.unchanged == 4

    # a renamed copy is the same content: not processed; changed content is
    shutil.copy(inbox / "a.tif", inbox / "a_copy_same_bytes.tif")
    os.utime(inbox / "a.tif", ns=(time.time_ns(), time.time_ns()))  # touched, bytes unchanged
    _scene(inbox / "b.tif", 99)  # new content under the same name
    fourth = process_new_imagery(**params)
    assert [Path(s).name for s, _ in fourth.processed] == ["a_copy_same_bytes.tif", "b.tif"]
    new_b = Path(next(o for s, o in fourth.processed if s.endswith("b.tif")))
    assert new_b.exists() and len(list(out.glob("b.*.labels.tif"))) == 2, "the earlier result must be kept"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-m", "arch:no-such-net"], "unknown architecture"),
        (["--tile", "0"], "--tile must be a positive number of pixels, got 0"),
        (["--overlap", "1"], "--overlap must be in [0, 1), got 1.0"),
        (["--workers-per-gpu", "0"], "--workers-per-gpu must be ≥ 1, got 0"),
        (["--input-missing"], "no such file"),
    ],
)
def test_bad_parameters_fail_fast_with_one_line(
    extra: list[str], message: str, small_scene: Path, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    src = tmp_path / "missing.tif" if extra == ["--input-missing"] else small_scene
    extra = [] if extra == ["--input-missing"] else extra
    model = ["-m", str(tiny_checkpoint)] if "-m" not in extra else []
    runs_before = _flow_run_count()
    code = main(["segment", str(src), *model, "-o", str(tmp_path / "o.tif"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not list(tmp_path.glob("o.tif*"))
    assert _flow_run_count() == runs_before, "no flow run may start for bad parameters"


def _flow_run_count() -> int:
    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(limit=200))


def test_watch_refuses_bad_arguments_before_any_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = ["--output-dir", str(out), "-m", "arch:conv1x1", "--once"]
    code = main(["watch", str(tmp_path / "nowhere"), *args])
    message = capsys.readouterr().err.strip()
    assert code == 2 and message.endswith("nowhere: no such folder to watch (or STAC catalog: a .json file)")
    code = main(["watch", str(tmp_path), *args, "--overlap", "2"])
    assert code == 2 and "--overlap must be in [0, 1)" in capsys.readouterr().err
    assert not (out / LEDGER_NAME).exists()


_PROBE = """
import os, runpy, sys
seen = []
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "prefect" and not seen:
            seen.append(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "unset"))
        return None
sys.meta_path.insert(0, Probe())
runpy.run_path(sys.argv[1], run_name="as_a_script")
print(seen[0])
"""


@pytest.mark.parametrize("script", ["segment_scene", "train_model", "promote_model", "watch_imagery"])
def test_flow_run_as_a_script_sets_prefect_defaults_before_prefect_loads(script: str, tmp_path: Path) -> None:
    """`ray submit` copies the flow file to the head and runs it as a plain script: the
    embedded defaults (a longer ephemeral-server start wait above all) must still be in
    place when Prefect is imported, or a busy head times out starting the API."""
    import subprocess
    import sys

    copied = tmp_path / f"{script}.py"  # away from the checkout, as on a cluster head
    shutil.copy(Path(__file__).parents[2] / "flows" / f"{script}.py", copied)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(copied)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip().splitlines()[-1] == "180"
