"""``gigaseg watch`` from a bucket prefix into a bucket prefix (DESIGN.md, invariant 9), on moto's
S3 server on loopback: rasters read in place, outputs and the ledger on the bucket, no scratch."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from flows.cli import main
from pipeline.stores.location import ObjectLocation
from pipeline.watch.ledger import OBJECT_LEDGER_NAME, open_ledger
from tests.conftest import write_raster


def keys(where: ObjectLocation) -> list[str]:
    return sorted(k.split("/", 1)[1] for k in where.fs.find(where.url))


def _scratch() -> list[str]:
    return sorted(p.name for p in Path(tempfile.gettempdir()).glob("gigaseg-*"))


def test_watch_a_bucket_into_a_bucket_once_each_with_a_corrupt_scene_isolated(
    bucket: ObjectLocation, tiny_checkpoint: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(
        tempfile, "tempdir", str(tmp_path / "tmp")
    )  # this process's scratch, apart from others'
    rng = np.random.default_rng(3)
    for name in ("a.tif", "b.tif"):
        local = write_raster(
            tmp_path / name, (rng.random((3, 160, 200)) * 3000 + 100).astype(np.uint16), nodata=0
        )
        bucket.fs.put_file(str(local), (bucket / "inbox" / name).url)
    (bucket / "inbox" / "corrupt.tif").write_bytes(b"II*\x00 this is not really a tiff")
    out = bucket / "results"
    command = ["watch", str(bucket / "inbox"), "--output-dir", str(out), "-m", str(tiny_checkpoint)]
    command += ["--once", "--workers", "0", "--tile", "64", "--block", "128", "--chunk", "128"]
    scratch_before = _scratch()

    assert main(command) == 1  # the corrupt scene fails; the others finish
    err = capsys.readouterr().err
    assert "corrupt.tif" in err and "Traceback" not in err
    outputs = [k for k in keys(out) if k.endswith(".labels.tif")]
    assert sorted(k.split("/")[-1].split(".")[0] for k in outputs) == ["a", "b"]
    local = tmp_path / "got.tif"
    bucket.fs.get_file((bucket / outputs[0]).url, str(local))
    with rasterio.open(local) as src:
        assert src.shape == (160, 200) and src.crs is not None
    entries = {Path(e.source).name: e.status for e in open_ledger(out).entries()}
    assert entries == {"a.tif": "done", "b.tif": "done", "corrupt.tif": "failed"}
    assert all(k.startswith(("results/", "inbox/")) for k in keys(bucket))
    stems = tuple(k.removesuffix(".tif") for k in outputs)  # the labels and their sidecars (regions, aux)
    unexpected = [k for k in keys(out) if not k.startswith(stems) and f"/{OBJECT_LEDGER_NAME}/" not in k]
    assert unexpected == ["results/catalog.json"]  # the STAC catalog of the processed scenes
    assert not [k for k in keys(out) if "gigaseg-work" in k or "probe" in k or "downloads" in k]
    assert _scratch() == scratch_before, "local scratch left behind"
    assert not (Path.cwd() / "results").exists()

    before = {k: (bucket / k).fs.info((bucket / k).url)["ETag"] for k in keys(out)}
    assert main(command) == 0  # nothing new: nothing processed, the corrupt scene is not retried
    capsys.readouterr()
    assert {k: (bucket / k).fs.info((bucket / k).url)["ETag"] for k in keys(out)} == before


def test_watch_refuses_a_missing_output_bucket_before_any_work(
    bucket: ObjectLocation, tiny_checkpoint: Path, capsys
) -> None:
    code = main(
        [
            "watch",
            str(bucket),
            "--output-dir",
            "s3://no-such-gigaseg-bucket/out",
            "-m",
            str(tiny_checkpoint),
            "--once",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert (
        code == 2 and "\n" not in err and "s3://no-such-gigaseg-bucket/out" in err and "does not exist" in err
    )


@pytest.mark.parametrize("input_url", ["s3://no-such-gigaseg-bucket/inbox"])
def test_watch_refuses_a_missing_input_bucket(
    input_url: str, bucket: ObjectLocation, tiny_checkpoint, capsys
):
    code = main(
        ["watch", input_url, "--output-dir", str(bucket / "out"), "-m", str(tiny_checkpoint), "--once"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no-such-gigaseg-bucket" in err and "\n" not in err
    assert keys(bucket) == []
