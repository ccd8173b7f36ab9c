"""A watch segments a scene again when its settings change, and skips it when they do not.

The ledger keys each scene on its content and on the settings that shape its output
(:func:`pipeline.watch.settings.settings_id`); a ledger older than that still opens,
and its scenes count as made with other settings.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from flows.cli import main
from pipeline.stores.location import ObjectLocation
from pipeline.watch.ledger import LEDGER_NAME, OBJECT_LEDGER_NAME, SceneLedger, open_ledger
from pipeline.watch.scan import new_or_changed, scan
from pipeline.watch.settings import settings_id
from tests.conftest import noise_scene_array, write_raster


def _segmented(capsys: pytest.CaptureFixture[str], argv: list[str]) -> int:
    """Run ``gigaseg watch … --once``; how many scenes it segmented."""
    assert main(argv) == 0
    err = capsys.readouterr().err
    found = re.search(r"gigaseg watch: (\d+) scene\(s\) segmented", err)
    assert found, err
    return int(found.group(1))


def test_a_watch_segments_a_scene_again_when_its_settings_change_and_only_then(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    out.mkdir()
    write_raster(inbox / "a.tif", noise_scene_array((96, 128), seed=1), nodata=0)
    watch = ["watch", str(inbox), "--output-dir", str(out), "-m", str(tiny_checkpoint), "--once"]
    watch += ["--workers", "0", "--tile", "64", "--block", "128", "--chunk", "128"]

    assert _segmented(capsys, watch) == 1
    assert _segmented(capsys, watch) == 0  # same content, same settings
    assert _segmented(capsys, [*watch, "--blend", "crop"]) == 1  # the labels change: redone
    assert _segmented(capsys, [*watch, "--blend", "crop"]) == 0
    # how the work is done is not what comes out: not redone
    assert _segmented(capsys, [*watch, "--blend", "crop", "--batch-size", "2", "--block", "256"]) == 0
    renamed_model = tmp_path / "same_weights.safetensors"
    shutil.copy(tiny_checkpoint, renamed_model)
    moved = [*watch, "--blend", "crop"]
    moved[moved.index(str(tiny_checkpoint))] = str(renamed_model)
    assert _segmented(capsys, moved) == 0  # the same weights under another name
    assert _segmented(capsys, [*watch, "--blend", "crop", "--tile", "96"]) == 1
    assert len(list(out.glob("*.labels.tif"))) == 1, "a scene's output is replaced, not kept beside"


def test_the_settings_id_follows_the_weights_and_the_options_that_shape_the_labels(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    model = str(tiny_checkpoint)
    base = settings_id(model, {})
    for same in (
        {"tile": None},
        {"workers": 0},
        {"workers_per_gpu": 4},
        {"batch_size": 16},
        {"block": 1024},
        {"device": "cpu"},
    ):
        assert settings_id(model, same) == base, same
    changed = [
        {"tile": 128},
        {"overlap": 0.5},
        {"blend": "crop"},
        {"num_classes": 5},
        {"crf": "local"},
        {"tta": True},
        {"amp": True},
    ]
    assert len({base, *(settings_id(model, options) for options in changed)}) == len(changed) + 1
    other = tmp_path / "other.safetensors"
    other.write_bytes(tiny_checkpoint.read_bytes() + b" ")
    assert settings_id(str(other), {}) != base
    assert settings_id("arch:unet", {}) != settings_id("arch:unet", {"seed": 1})


def _scene(tmp_path: Path) -> tuple[Path, SceneLedger]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.tif").write_bytes(b"scene a")
    return inbox, SceneLedger(tmp_path / LEDGER_NAME)


def test_a_failed_scene_is_retried_with_other_settings(tmp_path: Path) -> None:
    inbox, ledger = _scene(tmp_path)
    [a] = scan(str(inbox), "*.tif", ledger)
    with pytest.raises(ValueError), ledger.processing(a.url, a.content_id, "a.labels.tif", "first"):
        raise ValueError("too coarse for the model")
    assert new_or_changed([a], ledger, "first") == []
    assert new_or_changed([a], ledger, "second") == [a]
    with ledger.processing(a.url, a.content_id, "a.labels.tif", "second"):
        pass
    assert [(e.status, e.settings_id) for e in ledger.entries()] == [("done", "second")]


_OLD_SCHEMA = """
CREATE TABLE scenes (
    source TEXT NOT NULL, content_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    output TEXT, message TEXT, started REAL, finished REAL,
    PRIMARY KEY (source, content_id)
);
CREATE TABLE seen (
    source TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime TEXT NOT NULL, content_id TEXT NOT NULL
);
"""
"""The ledger's tables before it kept settings."""


def test_a_ledger_from_before_settings_were_kept_opens_and_its_scenes_are_redone(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.tif").write_bytes(b"scene a")
    [a] = scan(str(inbox), "*.tif", SceneLedger(tmp_path / "scratch.sqlite"))
    with closing(sqlite3.connect(tmp_path / LEDGER_NAME)) as db, db:
        db.executescript(_OLD_SCHEMA)
        db.execute(
            "INSERT INTO scenes VALUES (?, ?, 'done', 'a.labels.tif', NULL, 1.0, 2.0)", (a.url, a.content_id)
        )

    ledger = SceneLedger(tmp_path / LEDGER_NAME)
    [entry] = ledger.entries()
    assert (entry.status, entry.settings_id) == ("done", None)
    assert new_or_changed([a], ledger, "now") == [a]  # settings unknown: redone
    with ledger.processing(a.url, a.content_id, "a.labels.tif", "now"):
        pass
    assert new_or_changed([a], SceneLedger(tmp_path / LEDGER_NAME), "now") == []


def test_an_object_ledger_record_without_settings_is_redone(bucket: ObjectLocation, tmp_path: Path) -> None:
    inbox, _ = _scene(tmp_path)
    out = bucket / "out"
    ledger = open_ledger(out)
    [a] = scan(str(inbox), "*.tif", ledger)
    with ledger.processing(a.url, a.content_id, "a.labels.tif", "now"):
        pass
    [key] = [k for k in out.fs.find(out.url) if f"/{OBJECT_LEDGER_NAME}/scenes/" in k]
    record = json.loads(out.fs.cat(key))
    del record["settings_id"]  # as written before settings were kept
    out.fs.pipe(key, json.dumps(record).encode())

    older = open_ledger(out)
    assert [e.settings_id for e in older.entries()] == [None]
    assert new_or_changed([a], older, "now") == [a]
