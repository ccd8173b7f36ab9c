"""Scanning a watched folder and the ledger's record, without Prefect."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.stores.location import ObjectLocation
from pipeline.watch.ledger import LEDGER_NAME, ObjectLedger, SceneLedger, open_ledger
from pipeline.watch.report import WatchReport
from pipeline.watch.scan import new_or_changed, output_name, scan, scene_input

SETTINGS = "settings-1"
"""A watch's settings id (:func:`pipeline.watch.settings.settings_id`), the same throughout."""


def _folder(tmp_path: Path) -> tuple[Path, SceneLedger]:
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    (inbox / "a.tif").write_bytes(b"scene a")
    (inbox / "sub" / "a.tif").write_bytes(b"scene a in sub")
    (inbox / "a.labels.tif").write_bytes(b"an output, not a scene")
    return inbox, SceneLedger(tmp_path / LEDGER_NAME)


def test_scan_finds_scenes_by_content_and_skips_outputs(tmp_path: Path) -> None:
    inbox, ledger = _folder(tmp_path)
    shutil.copy(inbox / "a.tif", inbox / "renamed.tif")
    scenes = scan(str(inbox), "**/*.tif", ledger)
    assert sorted(s.relative for s in scenes) == ["a.tif", "renamed.tif", "sub/a.tif"]
    by_name = {s.relative: s for s in scenes}
    assert by_name["a.tif"].content_id == by_name["renamed.tif"].content_id
    assert by_name["a.tif"].content_id != by_name["sub/a.tif"].content_id
    assert all(s.local for s in scenes)


def test_scan_leaves_out_the_excluded_folder_and_files_too_young(tmp_path: Path) -> None:
    inbox, ledger = _folder(tmp_path)
    assert [s.relative for s in scan(str(inbox), "**/*.tif", ledger, exclude=str(inbox / "sub"))] == ["a.tif"]
    assert scan(str(inbox), "**/*.tif", ledger, min_age=3600.0) == []


@pytest.fixture(params=["sqlite", "bucket"])
def ledger_kind(request) -> str:
    return request.param


def test_done_and_failed_scenes_are_not_new_but_an_interrupted_one_is(
    tmp_path: Path, ledger_kind, request
) -> None:
    inbox, ledger = _folder(tmp_path)
    if ledger_kind == "bucket":
        ledger = open_ledger(request.getfixturevalue("bucket") / "out")
        assert isinstance(ledger, ObjectLedger)
    a, sub_a = scan(str(inbox), "**/*.tif", ledger)
    with ledger.processing(a.url, a.content_id, "out.tif", SETTINGS):
        pass
    with pytest.raises(ValueError), ledger.processing(sub_a.url, sub_a.content_id, "out2.tif", SETTINGS):
        raise ValueError("corrupt tile\nmore detail")
    assert new_or_changed([a, sub_a], ledger, SETTINGS) == []
    assert ledger.get(sub_a.url, sub_a.content_id).message == "corrupt tile"
    ledger.start(a.url, a.content_id, "out.tif", SETTINGS)  # a crash leaves it running
    assert new_or_changed([a, sub_a], ledger, SETTINGS) == [a]
    if ledger_kind == "bucket":  # a fresh reader (another process) sees the same records
        again = open_ledger(request.getfixturevalue("bucket") / "out")
        assert {(e.status, e.message) for e in again.entries()} == {
            ("running", None),
            ("failed", "corrupt tile"),
        }
        assert again.known_content_id(a.url, *_seen(inbox / "a.tif")) == a.content_id
        assert again.forget(sub_a.url) == 1 and new_or_changed([a, sub_a], again, SETTINGS) == [a, sub_a]


def _seen(path: Path) -> tuple[int, str]:
    import fsspec

    from pipeline.watch.scan import _fingerprint

    return _fingerprint(fsspec.filesystem("file").info(str(path)))


def test_output_names_keep_folders_and_contents_apart() -> None:
    names = {output_name("a.tif", "1"), output_name("sub/a.tif", "1"), output_name("a.tif", "2")}
    assert len(names) == 3 and all(n.endswith(".labels.tif") for n in names)
    assert output_name("a.tif", "1") == output_name("a.tif", "1")


def test_a_local_scene_is_used_in_place(tmp_path: Path) -> None:
    inbox, ledger = _folder(tmp_path)
    scene = scan(str(inbox), "a.tif", ledger)[0]
    with scene_input(scene, tmp_path / "scratch") as path:
        assert path == inbox / "a.tif"
    assert not (tmp_path / "scratch").exists()


def test_a_remote_raster_is_read_in_place_and_a_remote_volume_copied_then_removed(
    bucket: ObjectLocation, tmp_path: Path
) -> None:
    (bucket / "in" / "a.tif").write_bytes(b"raster")
    (bucket / "in" / "v.nii.gz").write_bytes(b"volume")
    ledger = SceneLedger(tmp_path / LEDGER_NAME)
    raster, volume = scan(str(bucket / "in"), "*", ledger)
    assert not raster.local and raster.content_id.startswith("ETag=")
    with scene_input(raster) as where:
        assert where == bucket / "in" / "a.tif"
    for scratch in (None, tmp_path / "scratch"):
        with scene_input(volume, scratch) as copy:
            assert isinstance(copy, Path) and copy.read_bytes() == b"volume" and copy.name.endswith(".nii.gz")
        assert not copy.exists() and not copy.parent.exists() if scratch is None else not copy.exists()


def test_report_records_a_failure_by_its_first_line() -> None:
    report = WatchReport()
    assert report.add_failed("x.tif", RuntimeError("bad\nworse")) == "bad"
    assert report.add_failed("y.tif", RuntimeError()) == "RuntimeError"
    assert report.failed == [("x.tif", "bad"), ("y.tif", "RuntimeError")]
