"""Scanning a watched folder and the ledger's record, without Prefect."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.watch.ledger import LEDGER_NAME, SceneLedger
from pipeline.watch.report import WatchReport
from pipeline.watch.scan import local_copy, new_or_changed, output_name, scan


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


def test_done_and_failed_scenes_are_not_new_but_an_interrupted_one_is(tmp_path: Path) -> None:
    inbox, ledger = _folder(tmp_path)
    a, sub_a = scan(str(inbox), "**/*.tif", ledger)
    with ledger.processing(a.url, a.content_id, "out.tif"):
        pass
    with pytest.raises(ValueError), ledger.processing(sub_a.url, sub_a.content_id, "out2.tif"):
        raise ValueError("corrupt tile\nmore detail")
    assert new_or_changed([a, sub_a], ledger) == []
    assert ledger.get(sub_a.url, sub_a.content_id).message == "corrupt tile"
    ledger.start(a.url, a.content_id, "out.tif")  # a crash leaves it running
    assert new_or_changed([a, sub_a], ledger) == [a]


def test_output_names_keep_folders_and_contents_apart() -> None:
    names = {output_name("a.tif", "1"), output_name("sub/a.tif", "1"), output_name("a.tif", "2")}
    assert len(names) == 3 and all(n.endswith(".labels.tif") for n in names)
    assert output_name("a.tif", "1") == output_name("a.tif", "1")


def test_a_local_scene_is_used_in_place(tmp_path: Path) -> None:
    inbox, ledger = _folder(tmp_path)
    scene = scan(str(inbox), "a.tif", ledger)[0]
    with local_copy(scene, tmp_path / "scratch") as path:
        assert path == inbox / "a.tif"
    assert not (tmp_path / "scratch").exists()


def test_report_records_a_failure_by_its_first_line() -> None:
    report = WatchReport()
    assert report.add_failed("x.tif", RuntimeError("bad\nworse")) == "bad"
    assert report.add_failed("y.tif", RuntimeError()) == "RuntimeError"
    assert report.failed == [("x.tif", "bad"), ("y.tif", "RuntimeError")]
