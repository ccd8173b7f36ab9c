"""A batch's inputs: paths, globs and list files expanded in order, one output each, collisions refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.job.batch_inputs import batch_outputs, expand_inputs, output_name


def test_globs_and_list_files_expand_in_order(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiles").mkdir()
    for name in ("b.tif", "a.tif", "notes.txt"):
        (tmp_path / "tiles" / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("# scenes of june\nfirst.tif\n\n s3://bucket/x/second.tif \n")
    assert expand_inputs(["one.tif", "tiles/*.tif", "@list.txt"]) == [
        "one.tif",
        "tiles/a.tif",
        "tiles/b.tif",
        "first.tif",
        "s3://bucket/x/second.tif",
    ]


def test_a_glob_matching_nothing_or_a_missing_list_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothing/\*\.tif: no file matches"):
        expand_inputs([f"{tmp_path}/nothing/*.tif"])
    with pytest.raises(InputError, match="cannot read the list of inputs"):
        expand_inputs([f"@{tmp_path}/missing.txt"])


def test_output_names_are_the_input_stems() -> None:
    assert output_name("scenes/2024/x.tif") == "x.tif"
    assert output_name("scan.nii.gz") == "scan.nii.gz"
    assert output_name("gs://b/plate.ome.zarr") == "plate.tif"
    assert batch_outputs(["a/x.tif", "y.jp2"], "out/") == ["out/x.tif", "out/y.tif"]


def test_two_inputs_that_would_share_an_output_are_refused() -> None:
    with pytest.raises(InputError, match=r"june/x\.tif and july/x\.tif would both be written to out/x\.tif"):
        batch_outputs(["june/x.tif", "july/x.tif"], "out")
