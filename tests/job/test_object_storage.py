"""Locations are URLs (DESIGN.md, invariant 9): input, work folder and outputs on an S3 bucket.

The bucket is moto's S3 server on loopback (``s3_endpoint`` fixture); GDAL, zarr/s3fs
and boto3 all reach it over HTTP through the standard ``AWS_*`` variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.job.config import SegmentConfig
from pipeline.job.steps import infer, prepare, segment
from pipeline.stores.location import ObjectLocation

REPO = Path(__file__).resolve().parents[2]


def upload(local: Path, target: ObjectLocation) -> ObjectLocation:
    target.fs.put_file(str(local), target.url)
    return target


def keys(bucket: ObjectLocation) -> list[str]:
    return sorted(k.split("/", 1)[1] for k in bucket.fs.find(bucket.url))


def download(where: ObjectLocation, folder: Path) -> Path:
    local = folder / where.name
    where.fs.get_file(where.url, str(local))
    return local


def test_scene_on_a_bucket_segments_to_the_same_bytes_as_on_local_disk(
    small_scene, tiny_checkpoint, bucket, tmp_path
):
    local = segment(
        SegmentConfig(
            input=small_scene,
            model=str(tiny_checkpoint),
            output=tmp_path / "local.tif",
            probabilities=tmp_path / "local_probs.tif",
            block=256,
            chunk=128,
            quiet=True,
        )
    )
    source = upload(small_scene, bucket / "in" / "scene.tif")
    remote = segment(
        SegmentConfig(
            input=str(source),
            model=str(tiny_checkpoint),
            output=str(bucket / "out" / "labels.tif"),
            probabilities=str(bucket / "out" / "probs.tif"),
            block=256,
            chunk=128,
            quiet=True,
        )
    )
    assert remote.output == bucket / "out" / "labels.tif"
    assert remote.blocks_run == local.blocks_run > 1
    got = tmp_path / "got"
    got.mkdir()
    for ours, theirs in (("labels.tif", "local.tif"), ("probs.tif", "local_probs.tif")):
        assert download(bucket / "out" / ours, got).read_bytes() == (tmp_path / theirs).read_bytes()
    with rasterio.open(tmp_path / "local_probs.tif") as src:  # the comparison sees varying pixels
        assert float(np.nanstd(src.read(1))) > 0
    # the work folder lived on the bucket and is gone; the label COG's sidecar went with it
    assert keys(bucket) == [
        "in/scene.tif",
        "out/labels.qml",
        "out/labels.stac.json",
        "out/labels.tif",
        "out/labels.tif.aux.xml",
        "out/probs.qml",
        "out/probs.tif",
    ]


def test_a_cog_on_a_bucket_is_read_in_place_and_a_local_file_is_copied_for_a_bucket_work_folder(
    small_scene, bucket
):
    from pipeline.inputs.ingest import ingest_raster
    from pipeline.stores.scene import SceneStore

    source = upload(small_scene, bucket / "in" / "scene.tif")
    in_place = ingest_raster(source, bucket / "w1" / "scene.zarr", chunk=128)
    assert in_place.source is not None and in_place.source.url == str(source)
    assert keys(bucket) == ["in/scene.tif", "w1/scene.zarr/zarr.json"], "no pixels copied to the bucket"
    # workers on other nodes could not reach a local file: it is copied to the bucket's store
    copied = ingest_raster(small_scene, bucket / "w2" / "scene.zarr", chunk=128)
    assert copied.source is None and any(k.startswith("w2/scene.zarr/image/c/") for k in keys(bucket))
    whole = ((0, copied.spatial_shape[0]), (0, copied.spatial_shape[1]))
    for got, want in zip(SceneStore.open(in_place.path).read(whole), copied.read(whole)):
        np.testing.assert_array_equal(got, want)


def test_killed_run_resumes_from_the_bucket_with_the_same_result(
    small_scene, tiny_checkpoint, bucket, tmp_path
):
    source = upload(small_scene, bucket / "scene.tif")

    def config(name: str) -> SegmentConfig:
        return SegmentConfig(
            input=str(source),
            model=str(tiny_checkpoint),
            output=str(bucket / name),
            probabilities=str(bucket / f"probs_{name}"),
            work_dir=str(bucket / "work"),
            block=256,
            chunk=128,
            quiet=True,
        )

    class KilledError(Exception):
        pass

    def dies_after_two(job, progress):
        from pipeline.execution.in_process import compute_block, predictor_for

        predictor = predictor_for(job, None)
        for n, block in enumerate(job.store.pending(job.plan)):
            if n == 2:
                raise KilledError
            job.store.write_block(block, compute_block(job, block, predictor))
        return 0, 0

    with pytest.raises(KilledError):
        infer(prepare(config("a.tif")), dies_after_two)
    assert not (bucket / "a.tif").exists()  # nothing that looks finished
    assert (bucket / "work" / "output.zarr").exists()
    # on a bucket a block's 2×2 chunks are two objects (a shard per row of its chunks): two
    # PUTs per block, not four
    written = [k for k in keys(bucket) if k.startswith("work/output.zarr/labels/c/")]
    assert len(written) == 2 * 2, written
    resumed = segment(config("a.tif"))
    assert resumed.blocks_skipped == 2 and resumed.blocks_run > 0
    fresh = segment(SegmentConfig(**{**config("b.tif").__dict__, "work_dir": str(bucket / "work_b")}))
    got = tmp_path / "got"
    got.mkdir()
    assert (
        download(bucket / "probs_a.tif", got).read_bytes()
        == download(bucket / "probs_b.tif", got).read_bytes()
    )
    assert fresh.blocks_skipped == 0


def gigaseg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_missing_bucket_or_object_is_one_line_and_leaves_nothing(small_scene, tiny_checkpoint, bucket):
    model = str(tiny_checkpoint)
    missing_bucket = "s3://gigaseg-no-such-bucket/scene.tif"
    one_line_error(
        gigaseg("segment", missing_bucket, "-m", model, "-o", str(bucket / "x.tif"), "--no-track"),
        missing_bucket,
        "does not exist",
    )
    one_line_error(
        gigaseg(
            "segment", str(bucket / "nothing.tif"), "-m", model, "-o", str(bucket / "x.tif"), "--no-track"
        ),
        "nothing.tif",
        "no such file",
    )
    source = upload(small_scene, bucket / "scene.tif")
    one_line_error(
        gigaseg("segment", str(source), "-m", model, "-o", "s3://gigaseg-no-such-bucket/x.tif", "--no-track"),
        "gigaseg-no-such-bucket",
        "does not exist",
    )
    assert keys(bucket) == ["scene.tif"]


def test_absent_credentials_are_one_line(small_scene, tiny_checkpoint, bucket, tmp_path):
    source = upload(small_scene, bucket / "scene.tif")
    no_credentials = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    result = gigaseg(
        "segment", str(source), "-m", str(tiny_checkpoint), "-o", str(tmp_path / "x.tif"), "--no-track",
        env=no_credentials,
    )  # fmt: skip
    one_line_error(result, str(source), "credentials")
    assert not (tmp_path / "x.tif").exists()


def test_volume_on_a_bucket_gives_the_same_nifti_and_ome_zarr_as_on_disk(bucket, tmp_path):
    """A NIfTI at a URL is copied locally for its reader; NIfTI and OME-Zarr outputs are uploaded whole."""
    import zarr

    from tests._volume_cases import oblique_affine, unet3d_checkpoint, write_nifti

    rng = np.random.default_rng(0)
    volume = rng.normal(100, 30, size=(29, 23, 19))
    volume[9:, :, :9] += 80
    src = write_nifti(tmp_path / "scan.nii.gz", volume.astype(np.int16), oblique_affine())
    model = str(unet3d_checkpoint(tmp_path / "unet3d.safetensors"))
    small = {"volume_block": 64, "volume_chunk": 16, "tile": 24, "quiet": True}
    segment(
        SegmentConfig(
            input=src, model=model, output=tmp_path / "l.nii.gz", probabilities=tmp_path / "p.zarr", **small
        )
    )
    source = upload(src, bucket / "scans" / "scan.nii.gz")
    segment(
        SegmentConfig(
            input=str(source),
            model=model,
            output=str(bucket / "out" / "l.nii.gz"),
            probabilities=str(bucket / "out" / "p.zarr"),
            **small,
        )
    )
    got = tmp_path / "got"
    got.mkdir()
    import nibabel as nib

    ours, theirs = nib.load(download(bucket / "out" / "l.nii.gz", got)), nib.load(tmp_path / "l.nii.gz")
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))  # gzip stamps differ
    np.testing.assert_array_equal(ours.affine, theirs.affine)
    local, remote = (
        zarr.open_group(str(tmp_path / "p.zarr"), mode="r"),
        zarr.open_group(str(bucket / "out" / "p.zarr"), mode="r"),
    )
    assert local.attrs.asdict() == remote.attrs.asdict()
    level = next(iter(local.array_keys()))
    np.testing.assert_array_equal(local[level][...], remote[level][...])
    assert float(np.nanstd(local[level][...])) > 0  # the comparison sees varying probabilities
    assert not any(k.endswith(".gigaseg-work") for k in bucket.fs.ls(str(bucket / "out"), detail=False))


def test_stac_item_on_a_bucket_reads_its_band_assets_in_place(tiny_checkpoint, bucket, tmp_path):
    """An item and its band COGs (one at 20 m) on a bucket, hrefs relative to the item: the same
    labels as the one multi-band file on disk, and a changed band object is a new scene."""
    from models.checkpoint import load_checkpoint, save_checkpoint
    from pipeline.inputs.band_stack import stack_vrt
    from pipeline.inputs.ingest import content_id
    from pipeline.inputs.stac_item import stac_scene
    from tests.inputs.test_band_stack import NAMES, _bands, _item

    model, card = load_checkpoint(tiny_checkpoint)
    card.band_names = list(NAMES)
    named = str(save_checkpoint(tmp_path / "named.safetensors", model, card))
    files, whole = _bands(tmp_path)
    for f in [*files, _item(tmp_path, files)]:
        upload(f, bucket / "items" / f.name)
    item = bucket / "items" / "item.json"
    options = {"model": named, "tile": 64, "block": 128, "chunk": 64, "quiet": True}
    segment(SegmentConfig(input=str(item), output=tmp_path / "from_bucket.tif", **options))
    segment(SegmentConfig(input=whole, output=tmp_path / "local.tif", **options))
    with rasterio.open(tmp_path / "from_bucket.tif") as a, rasterio.open(tmp_path / "local.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    stack = stac_scene(item, NAMES, named).stack
    assert all(isinstance(m, ObjectLocation) for m in stack.members)
    before = content_id(stack_vrt(stack, tmp_path / "vrt"))
    upload(files[0], bucket / "items" / files[2].name)  # the nir object's bytes change
    assert content_id(stack_vrt(stack, tmp_path / "vrt")) != before
