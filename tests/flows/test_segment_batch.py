"""``gigaseg segment`` with many inputs, and a watch's scan: one batch, one pool, each scene its own.

Every batch output is compared with segmenting the same scene alone.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import rasterio
import ray

from flows.cli import main
from flows.segment_scene import segment_scenes
from flows.watch_imagery import process_new_imagery
from pipeline.job.config import SegmentConfig
from pipeline.tracking.runs import SEGMENT_EXPERIMENT
from pipeline.watch.ledger import LEDGER_NAME, SceneLedger
from tests.conftest import write_raster

ENGINE = ["--tile", "64", "--block", "128", "--chunk", "128", "--threads", "1"]
SETTINGS = {"tile": 64, "block": 128, "chunk": 128, "threads": 1, "quiet": True}


@pytest.fixture(scope="module", autouse=True)
def _private_ray_stops_with_the_module():
    """A Ray batch starts a private Ray in this process; it must not outlive these tests."""
    yield
    if ray.is_initialized():
        ray.shutdown()


def _scene(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    data = (rng.random((3, 200, 260)) * 3000 + 100).astype(np.uint16)
    data[:, :30, :40] = 0
    return write_raster(path, data, nodata=0)


def _pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _alone(scene: Path, model: Path, out: Path) -> Path:
    """The scene segmented by a command of its own."""
    assert (
        main(["segment", str(scene), "-m", str(model), "-o", str(out), "--no-track", "--quiet", *ENGINE]) == 0
    )
    return out


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Folder ``in`` with a.tif, b.tif, c.tif and a cut-off (corrupt) bad.tif."""
    folder = tmp_path / "in"
    folder.mkdir()
    scenes = [_scene(folder / f"{n}.tif", i) for i, n in enumerate("abc")]
    data = scenes[0].read_bytes()
    (folder / "bad.tif").write_bytes(data[: len(data) // 2])
    return folder, scenes


def test_one_command_segments_every_input_like_separate_commands_and_names_the_bad_one(
    inputs, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    folder, scenes = inputs
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "list.txt").write_text(f"{folder / 'c.tif'}\n")
    argv = ["segment", str(folder / "[ab].tif"), str(folder / "bad.tif"), f"@{tmp_path / 'list.txt'}"]
    assert main([*argv, "-m", str(tiny_checkpoint), "--output-dir", str(out), *ENGINE]) == 1
    err = capsys.readouterr().err
    failed = [ln for ln in err.splitlines() if "bad.tif" in ln]
    assert len(failed) == 1 and failed[0].startswith(f"gigaseg: {folder / 'bad.tif'}")
    assert "3 scene(s) segmented, 1 failed" in err
    assert sorted(p.name for p in out.glob("*.tif")) == ["a.tif", "b.tif", "c.tif"]
    for scene in scenes:
        alone = _alone(scene, tiny_checkpoint, tmp_path / f"alone_{scene.name}")
        np.testing.assert_array_equal(_pixels(out / scene.name), _pixels(alone))
    runs = mlflow.search_runs(experiment_names=[SEGMENT_EXPERIMENT], output_format="list")
    ours = {
        r.info.run_name: r.info.status for r in runs if r.data.params.get("output", "").startswith(str(out))
    }
    assert ours == {
        "segment a.tif": "FINISHED",
        "segment b.tif": "FINISHED",
        "segment c.tif": "FINISHED",
        "segment bad.tif": "FAILED",
    }, "one MLflow run per scene"


def test_in_process_batch_loads_the_model_once(inputs, tiny_checkpoint: Path, tmp_path: Path) -> None:
    _, scenes = inputs
    configs = [
        SegmentConfig(
            input=s, model=str(tiny_checkpoint), output=tmp_path / f"o_{s.name}", workers=0, **SETTINGS
        )
        for s in scenes
    ]
    report = segment_scenes(configs, track=False)
    assert len(report.done) == 3 and not report.failed
    assert report.models_loaded == 1 and report.actors == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a.tif", "b.tif", "-o", "x.tif"], "--output-dir DIR for several inputs"),
        (["a.tif", "-o", "x.tif", "--output-dir", "."], "not both"),
        (["a.tif", "--output-dir", ".", "--labels", "l.tif"], "--labels and --regions belong to one scene"),
        (["a/x.tif", "b/x.tif", "--output-dir", "."], "would both be written to ./x.tif"),
        (["a.tif", "--output-dir", "/proc/no/such/dir"], "/proc/no/such/dir: cannot make the output folder"),
    ],
)
def test_batch_arguments_that_cannot_work_fail_before_any_work(
    argv, message, tiny_checkpoint, capsys
) -> None:
    assert main(["segment", *argv, "-m", str(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_ray_batch_matches_segmenting_alone_with_the_model_loaded_once_per_actor(
    inputs, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    _, scenes = inputs
    configs = [
        SegmentConfig(
            input=s, model=str(tiny_checkpoint), output=tmp_path / f"ray_{s.name}", workers=2, **SETTINGS
        )
        for s in scenes
    ]
    report = segment_scenes(configs, track=False)
    assert len(report.done) == 3 and not report.failed
    # an actor loads the model at its first block, once; on a small batch one actor may
    # take every block before the other has started
    assert len(report.actors) == 2
    assert all(a["models_loaded"] == (1 if a["scenes_attached"] else 0) for a in report.actors)
    assert sum(a["scenes_attached"] for a in report.actors) >= 3
    for scene in scenes:
        alone = _alone(scene, tiny_checkpoint, tmp_path / f"alone_{scene.name}")
        assert (tmp_path / f"ray_{scene.name}").read_bytes() == alone.read_bytes()


@pytest.mark.slow
def test_watch_hands_a_scans_scenes_to_one_pool(inputs, tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder, _ = inputs
    out = tmp_path / "watched"
    out.mkdir()
    report = process_new_imagery(
        input_url=str(folder),
        output_dir=str(out),
        model=str(tiny_checkpoint),
        options={"tile": 64, "block": 128, "chunk": 128, "threads": 1, "workers": 1},
    )
    assert sorted(Path(s).name for s, _ in report.processed) == ["a.tif", "b.tif", "c.tif"]
    assert [Path(s).name for s, _ in report.failed] == ["bad.tif"]
    assert len(report.actors) == 1, "one pool, one actor, for the whole scan"
    assert report.actors[0]["models_loaded"] == 1 and report.actors[0]["scenes_attached"] == 3
    statuses = {Path(e.source).name: e.status for e in SceneLedger(out / LEDGER_NAME).entries()}
    assert statuses == {"a.tif": "done", "b.tif": "done", "c.tif": "done", "bad.tif": "failed"}
    for scene, output in report.processed:
        alone = _alone(Path(scene), tiny_checkpoint, tmp_path / f"alone_{Path(scene).name}")
        np.testing.assert_array_equal(_pixels(Path(output)), _pixels(alone))
