"""Per-region metrics of a tracked segment run against an independent whole-array computation."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform as warp_points
from skimage.draw import polygon as draw_polygon

from pipeline.job.config import SegmentConfig
from pipeline.tracking.segment_run import track_segment_run
from tests.conftest import write_raster

TRANSFORM = Affine(10.0, 0, 400_000.0, 0, -10.0, 5_000_000.0)
BLOCK = 128


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-band scene with a nodata corner and a reference label raster (nodata 255)."""
    folder = tmp_path_factory.mktemp("regions")
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:300, 0:270]
    base = np.stack([np.sin(xx / 17.0) * 1000 + 1500, np.cos(yy / 23.0) * 1000 + 1500, (xx + yy) * 4.0 + 200])
    data = (base + rng.normal(0, 60, base.shape)).astype(np.uint16)
    data[:, :40, :50] = 0
    image = write_raster(folder / "scene.tif", data, nodata=0, transform=TRANSFORM)
    truth = ((xx // 60 + yy // 70) % 4).astype(np.uint8)
    truth[250:, 200:] = 255
    labels = write_raster(folder / "truth.tif", truth[None], nodata=255, transform=TRANSFORM)
    return {"image": image, "labels": labels, "folder": folder}


def _run(scene, tiny_checkpoint, name: str, regions: Path | None = None):
    out = scene["folder"] / f"{name}.tif"
    config = SegmentConfig(
        input=scene["image"],
        model=str(tiny_checkpoint),
        output=out,
        probabilities=scene["folder"] / f"{name}_probs.tif",
        block=BLOCK,
        chunk=64,
        quiet=True,
        overwrite=True,
    )
    tracked = track_segment_run(config, labels=scene["labels"], regions=regions)
    assert not config.uncertainty, "tracking runs on a copy: the caller's config is left as it was"
    return tracked


def _reference_stats(pred, probs, truth, mask, k):
    """Independent numbers for one region: whole arrays, boolean masks, no confusion matrix."""
    valid = mask & (pred != 255)
    p = probs[:, valid]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=0)
    out = {
        "pixels": int(mask.sum()),
        "nodata_fraction": float((mask & (pred == 255)).sum() / max(mask.sum(), 1)),
        "mean_confidence": float(p.max(0).mean()) if p.size else np.nan,
        "mean_entropy": float(ent.mean()) if p.size else np.nan,
    }
    scored = valid & (truth != 255)
    for c in range(k):
        pc, tc = (pred == c) & scored, (truth == c) & scored
        tp, fp, fn = (pc & tc).sum(), (pc & ~tc).sum(), (~pc & tc).sum()
        out[f"pixels_{c}"] = int(((pred == c) & valid).sum())
        out[f"iou_{c}"] = tp / (tp + fp + fn) if tc.sum() else np.nan  # classes absent from the truth: NaN
        out[f"dice_{c}"] = 2 * tp / (2 * tp + fp + fn) if tc.sum() else np.nan
        out[f"accuracy_{c}"] = tp / tc.sum() if tc.sum() else np.nan
    out["accuracy"] = float((pred[scored] == truth[scored]).mean()) if scored.any() else np.nan
    return out


def _check(row, ref, names):
    assert row["pixels"] == ref["pixels"]
    assert row["nodata_fraction"] == pytest.approx(ref["nodata_fraction"], abs=1e-12)
    np.testing.assert_allclose(row["mean_confidence"], ref["mean_confidence"], atol=2e-3)  # float16 store
    np.testing.assert_allclose(row["mean_entropy"], ref["mean_entropy"], atol=2e-3)
    np.testing.assert_allclose(row["accuracy"], ref["accuracy"], rtol=1e-12)
    for c, n in enumerate(names):
        assert row[f"pixels_{n}"] == ref[f"pixels_{c}"]
        assert row[f"area_m2_{n}"] == pytest.approx(ref[f"pixels_{c}"] * 100.0)  # 10 m pixels
        for key in ("iou", "dice", "accuracy"):
            np.testing.assert_allclose(row[f"{key}_{n}"], ref[f"{key}_{c}"], rtol=1e-12)


def _arrays(result, scene):
    with rasterio.open(result.summary.output) as src:
        pred = src.read(1)
    with rasterio.open(result.summary.probabilities) as src:
        probs = src.read().astype(np.float64)
    with rasterio.open(scene["labels"]) as src:
        truth = src.read(1)
    return pred, probs, truth


def test_block_regions_match_whole_array_computation(scene, tiny_checkpoint):
    result = _run(scene, tiny_checkpoint, "blocks")
    pred, probs, truth = _arrays(result, scene)
    names = result.table.class_names
    rows = {r["region"]: r for r in result.table.rows()}
    assert len(rows) == 3 * 3  # 300×270 in 128² blocks
    for bi in range(3):
        for bj in range(3):
            mask = np.zeros(pred.shape, bool)
            mask[bi * BLOCK : (bi + 1) * BLOCK, bj * BLOCK : (bj + 1) * BLOCK] = True
            _check(rows[f"block_{bi}_{bj}"], _reference_stats(pred, probs, truth, mask, len(names)), names)
    whole = _reference_stats(pred, probs, truth, np.ones(pred.shape, bool), len(names))
    _check(result.scene, whole, names)
    assert result.scene["nodata_fraction"] == pytest.approx(40 * 50 / (300 * 270))

    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.metrics["scene_accuracy"] == pytest.approx(whole["accuracy"])
    assert run.data.metrics["mpx_per_s"] > 0
    assert run.data.params["block"] == str(BLOCK)
    assert run.data.params["blend"] == "auto" and run.data.params["blend_resolved"] == "crop"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)}
    assert {"preview.png", "regions"} <= arts
    inner = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "regions")}
    assert {"regions/regions.json", "regions/blocks.regions.csv", "regions/blocks.regions.geojson"} <= inner
    doc = json.loads(result.regions_geojson.read_text())
    assert len(doc["features"]) == 9 and doc["crs"]["properties"]["name"].endswith("32633")
    assert result.regions_csv.read_text().count("\n") == 10


def test_polygons_in_another_crs_are_reprojected(scene, tiny_checkpoint):
    """Polygons given in lon/lat land on the right pixels of the UTM raster."""
    shapes = {
        "field": [(20.0, 30.0), (20.0, 140.0), (160.0, 140.0), (160.0, 30.0)],  # (row, col) pixel corners
        "wedge": [(100.3, 60.2), (280.7, 90.4), (190.1, 250.6)],
    }
    features = []
    for name, pts in shapes.items():
        rows, cols = np.array(pts).T
        xs, ys = TRANSFORM @ (cols, rows)
        lon, lat = warp_points("EPSG:32633", "EPSG:4326", list(xs), list(ys))
        ring = [[a, b] for a, b in zip(lon, lat)]
        geometry = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
        features.append({"type": "Feature", "properties": {"name": name}, "geometry": geometry})
    geojson = scene["folder"] / "fields.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))

    result = _run(scene, tiny_checkpoint, "polygons", regions=geojson)
    pred, probs, truth = _arrays(result, scene)
    names = result.table.class_names
    rows = {r["region"]: r for r in result.table.rows()}
    assert set(rows) == set(shapes)
    for name, pts in shapes.items():
        r, c = np.array(pts).T
        mask = np.zeros(pred.shape, bool)
        mask[draw_polygon(r - 0.5, c - 0.5, pred.shape)] = True  # skimage: pixel centres at integers
        assert mask.sum() > 1000
        _check(rows[name], _reference_stats(pred, probs, truth, mask, len(names)), names)


def test_labels_regions_and_tables_on_a_bucket_match_local_files(scene, tiny_checkpoint, bucket):
    """``--labels`` / ``--regions`` read from object storage; the region tables go beside the output there."""
    geometry = {
        "type": "Polygon",
        "coordinates": [[[400_300.0, 4_999_700.0], [401_500.0, 4_999_700.0], [401_500.0, 4_998_000.0],
                         [400_300.0, 4_999_700.0]]],
    }  # fmt: skip
    local_regions = scene["folder"] / "one.geojson"
    feature = {"type": "Feature", "properties": {"name": "a"}, "geometry": geometry}
    utm = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    local_regions.write_text(json.dumps({"type": "FeatureCollection", "crs": utm, "features": [feature]}))
    local = _run(scene, tiny_checkpoint, "local_tables", regions=local_regions)
    for name in ("scene.tif", "truth.tif", "one.geojson"):
        (bucket / name).fs.put_file(str(scene["folder"] / name), str(bucket / name))
    config = SegmentConfig(
        input=str(bucket / "scene.tif"),
        model=str(tiny_checkpoint),
        output=str(bucket / "out" / "tables.tif"),
        block=BLOCK,
        chunk=64,
        quiet=True,
    )
    remote = track_segment_run(config, labels=str(bucket / "truth.tif"), regions=str(bucket / "one.geojson"))
    assert remote.table.rows() == local.table.rows()
    keys = {k.rsplit("/", 1)[1] for k in bucket.fs.find(str(bucket / "out"))}
    assert {"tables.tif", "tables.regions.csv", "tables.regions.geojson"} <= keys
    csv_bytes = (bucket / "out" / "tables.regions.csv").read_bytes()
    assert csv_bytes == (scene["folder"] / "local_tables.regions.csv").read_bytes()
