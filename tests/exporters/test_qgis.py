"""What a GIS analyst sees: the outputs opened in real QGIS (headless, the system Python's python3-qgis)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import skip_unless_ci

SYSTEM_PYTHON = "/usr/bin/python3"
PROBE = Path(__file__).with_name("qgis_probe.py")
NAMES = ["water", "forest", "grassland", "cropland", "built-up"]


def _qgis_missing() -> str | None:
    """Why QGIS cannot run here (None when it can)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (QGIS runs in the system Python)"
    found = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True)
    if found.returncode:
        return (
            "QGIS (Debian's python3-qgis) is not installed: "
            + (found.stderr.strip().splitlines() or [""])[-1]
        )
    return None


def _probe(*args: str | Path) -> dict:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": "/tmp"}
    env.pop("PYTHONPATH", None)  # the system Python must not import the venv's packages
    done = subprocess.run(
        [SYSTEM_PYTHON, str(PROBE), *map(str, args)], capture_output=True, text=True, env=env, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _class_map(shape: tuple[int, int], nodata: int) -> np.ndarray:
    """Irregular class patches, a nodata corner, every class present."""
    rng = np.random.default_rng(5)
    coarse = rng.integers(0, len(NAMES), (shape[0] // 8 + 1, shape[1] // 8 + 1))
    labels = np.kron(coarse, np.ones((8, 8), dtype=np.int64))[: shape[0], : shape[1]].astype(np.uint8)
    labels[:3, :5] = np.arange(5)  # each class at least once
    labels[-6:, -9:] = nodata
    return labels


def _labels_cog(tmp_path: Path) -> tuple[Path, np.ndarray, list[tuple[int, int, int]]]:
    from models.checkpoint import default_colors
    from pipeline.exporters.cog import Georeference, export_labels_cog, export_probabilities_cog
    from pipeline.stores.block_output import BlockOutput
    from pipeline.stores.output import OutputStore
    from pipeline.tiling.blocks import BlockPlan
    from pipeline.tiling.grid import TileGrid

    shape = (40, 56)
    plan = BlockPlan.create(TileGrid.create(shape, 16, 0.0), 64, 16)
    store = OutputStore.open_or_create(tmp_path / "o.zarr", plan, len(NAMES), True, "x")
    labels = _class_map(shape, store.nodata)
    probs = np.full((len(NAMES), *shape), 0.1, np.float32)
    store.write_block(next(iter(plan)), BlockOutput(labels, probs))
    geo = Georeference(rasterio.crs.CRS.from_epsg(32633).to_wkt(), (10.0, 0, 500000, 0, -10.0, 4000000))
    colors = default_colors(len(NAMES), NAMES)
    out = export_labels_cog(tmp_path / "o.zarr", tmp_path / "classes.tif", geo, NAMES, colors)
    export_probabilities_cog(tmp_path / "o.zarr", tmp_path / "probs.tif", geo, NAMES, colors)
    return out, labels, colors


def test_the_sample_classes_get_conventional_colours_and_others_distinct_ones():
    from models.checkpoint import default_colors

    colors = default_colors(7, [*NAMES, "class_5", "class_6"])
    assert colors[0] == (40, 110, 220) and colors[1] == (20, 110, 40)  # water blue, forest dark green
    assert len(set(colors)) == 7


def test_the_labels_style_lists_exactly_the_classes(tmp_path):
    import xml.etree.ElementTree as ET

    out, _, _ = _labels_cog(tmp_path)
    qml = ET.parse(out.with_suffix(".qml")).getroot()
    entries = qml.findall(".//rasterrenderer[@type='paletted']/colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("label")) for e in entries] == [(str(i), n) for i, n in enumerate(NAMES)]
    assert entries[0].get("color") == "#286edc"
    probs = ET.parse(tmp_path / "probs.qml").getroot()
    assert probs.find(".//rasterrenderer").get("type") == "singlebandpseudocolor"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_qgis_shows_the_labels_with_exactly_the_model_classes(tmp_path):
    reason = _qgis_missing()
    if reason:
        skip_unless_ci(reason)
    out, labels, colors = _labels_cog(tmp_path)
    seen = _probe(out)
    raster = seen["raster"]
    assert raster["valid"]
    assert raster["crs"] == "EPSG:32633"
    with rasterio.open(out) as src:
        assert raster["extent"] == pytest.approx(list(src.bounds))
        assert raster["size"] == [src.width, src.height]
    assert raster["renderer"] == "paletted"
    assert [label for label, _ in raster["legend"]] == NAMES
    assert [c for _, c in raster["legend"]] == ["#{:02x}{:02x}{:02x}".format(*c) for c in colors]
    image = np.array(raster["image"], dtype=np.int64)  # (rows, cols, RGBA)
    assert image.shape[:2] == labels.shape
    nodata = labels == 255
    assert (image[nodata, 3] == 0).all(), "nodata is transparent"
    for value, rgb in enumerate(colors):
        where = labels == value
        assert (image[where, :3] == rgb).all() and (image[where, 3] == 255).all(), NAMES[value]


def _polygons(tmp_path: Path, labels: np.ndarray, colors: list) -> tuple[Path, int]:
    from pipeline.exporters.polygon_pieces import BlockPolygons
    from pipeline.exporters.polygons import VectorTarget, merge_pieces, write_regions

    pieces = {
        (i, j): BlockPolygons.from_labels(labels[r : r + 16, c : c + 16], None, (r, c), 255)
        for i, r in enumerate(range(0, labels.shape[0], 16))
        for j, c in enumerate(range(0, labels.shape[1], 16))
    }
    regions = merge_pieces(pieces)
    target = VectorTarget(
        tmp_path / "classes.gpkg", rasterio.crs.CRS.from_epsg(32633).to_wkt(), NAMES, colors
    )
    return write_regions(regions, (10.0, 0, 500000, 0, -10.0, 4000000), target), len(regions.classes)


def test_qgis_shows_the_polygons_styled_by_class(tmp_path):
    reason = _qgis_missing()
    if reason:
        skip_unless_ci(reason)
    out, labels, colors = _labels_cog(tmp_path)
    gpkg, count = _polygons(tmp_path, labels, colors)
    seen = _probe(out, gpkg, "classes", tmp_path / "probs.tif")
    vector = seen["vector"]
    assert vector["valid"] and vector["crs"] == "EPSG:32633"
    assert vector["extent"] == pytest.approx(seen["raster"]["extent"])  # every class reaches the edges
    assert vector["renderer"] == "categorizedSymbol" and vector["attribute"] == "class_id"
    assert [label for _, label, _ in vector["categories"]] == NAMES
    assert [c for _, _, c in vector["categories"]] == ["#{:02x}{:02x}{:02x}".format(*c) for c in colors]
    assert vector["features"] == count
    assert seen["probabilities"] == {"valid": True, "renderer": "singlebandpseudocolor"}
