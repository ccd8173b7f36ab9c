"""`gigaseg segment` end to end: the output GeoTIFF is a valid COG aligned with the input."""

from __future__ import annotations

import json
import logging
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from rio_cogeo.cogeo import cog_validate

from flows.cli import main
from models import build
from models.checkpoint import load_checkpoint
from pipeline.engine.in_memory import ArrayResult, segment_array
from pipeline.inputs.normalization import normalizer_for
from pipeline.tiling.blending import BLEND_MODES
from tests._varying_models import label_spread

ARGS = ["--tile", "64", "--block", "256", "--chunk", "128", "--quiet"]
#: Probabilities of two runs of the same job agree to this (torch's CPU kernels round with the batch).
ATOL = 1e-5


def _segment(scene: Path, model: str, out: Path, *extra: str) -> int:
    return main(["segment", str(scene), "-m", model, "-o", str(out), *ARGS, *extra])


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_output_cog_matches_input_grid_and_keeps_nodata(small_scene, tiny_checkpoint, tmp_path):
    out = tmp_path / "classes.tif"
    probs = tmp_path / "probs.tif"
    assert _segment(small_scene, str(tiny_checkpoint), out, "--probabilities", str(probs)) == 0
    with rasterio.open(small_scene) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert dst.transform == src.transform
        assert (dst.width, dst.height) == (src.width, src.height)
        labels = dst.read(1)
        valid = src.dataset_mask() > 0
        assert dst.nodata == 255
        assert (labels[~valid] == 255).all()
        assert labels[valid].max() < 4
        assert dst.block_shapes[0] == (512, 512) or dst.height < 512
        assert dst.profile["compress"].lower() == "deflate"
        cmap = dst.colormap(1)
        assert cmap[0][:3] == (0, 0, 255) and cmap[3][:3] == (255, 0, 0)
        assert json.loads(dst.tags(1)["CLASS_NAMES"]) == ["water", "forest", "field", "town"]
    ok, errors, warnings = cog_validate(str(out), strict=True)
    assert ok, (errors, warnings)
    aux = ET.parse(str(out) + ".aux.xml").getroot()
    assert [c.text for c in aux.iter("Category")] == ["water", "forest", "field", "town"]
    with rasterio.open(probs) as p:
        assert p.count == 4 and p.dtypes[0] == "float32"
        stack = p.read()
        np.testing.assert_allclose(stack[:, valid].sum(0), 1.0, atol=1e-5)
        assert np.isnan(stack[:, ~valid]).all()
    label_spread(labels).check(min_classes=4, min_share=0.15)
    np.testing.assert_array_equal(labels[valid], stack[:, valid].argmax(0))
    assert cog_validate(str(probs), strict=True)[0]
    assert not list(tmp_path.glob(".*")), "temporary files left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask, "output must get the user's usual permissions"
    assert not (tmp_path / "classes.tif.gigaseg-work").exists()


def test_large_output_gets_overviews_resampled_by_mode(tmp_path, tiny_checkpoint):
    from tests.conftest import write_raster

    data = np.zeros((3, 1100, 1300), dtype=np.uint16)
    data[:, :, 650:] = 3000
    scene = write_raster(tmp_path / "big.tif", data)
    out = tmp_path / "big_classes.tif"
    assert _segment(scene, str(tiny_checkpoint), out, "--block", "512") == 0
    with rasterio.open(out) as dst:
        assert dst.overviews(1)[0] == 2
    assert cog_validate(str(out), strict=True)[0]


def test_overviews_take_the_mode_never_an_average(tmp_path):
    """Columns alternating 0 and 2: an average would invent class 1."""
    from pipeline.exporters.cog import Georeference, export_labels_cog
    from pipeline.stores.block_output import BlockOutput
    from pipeline.stores.output import OutputStore
    from pipeline.tiling.blocks import BlockPlan
    from pipeline.tiling.grid import TileGrid

    shape = (1024, 1024)
    plan = BlockPlan.create(TileGrid.create(shape, 256, 0.0), 1024, 512)
    store = OutputStore.open_or_create(tmp_path / "o.zarr", plan, 3, False, "x")
    pattern = np.zeros(shape, dtype=np.uint8)
    pattern[:, 1::2] = 2
    store.write_block(next(iter(plan)), BlockOutput(pattern, None))
    geo = Georeference(rasterio.crs.CRS.from_string("EPSG:32633").to_wkt(), (10.0, 0, 0, 0, -10.0, 0))
    out = export_labels_cog(tmp_path / "o.zarr", tmp_path / "o.tif", geo, ["a", "b", "c"], [(0, 0, 0)] * 3)
    with rasterio.open(out) as dst:
        assert dst.overviews(1) == [2]
        overview = dst.read(1, out_shape=(512, 512))
    assert 1 not in np.unique(overview)
    assert cog_validate(str(out), strict=True)[0]


def test_untrained_architecture_runs_with_given_classes_and_seed(small_scene, tmp_path):
    """``arch:conv1x1 --num-classes 3 --seed 7`` is that seeded 1×1 convolution applied to the raw
    pixels (seed 7 is one whose three classes all show up on this scene)."""
    out = tmp_path / "c.tif"
    assert _segment(small_scene, "arch:conv1x1", out, "--num-classes", "3", "--seed", "7") == 0
    torch.manual_seed(7)
    model = build("conv1x1", in_channels=3, num_classes=3).eval()
    image = _read(small_scene)
    valid = (image != 0).all(0)
    with torch.no_grad():
        expected = model(torch.from_numpy(image.astype(np.float32))[None]).argmax(1)[0].numpy()
    labels = _read(out)[0]
    label_spread(labels).check(min_classes=3, min_share=0.1)
    np.testing.assert_array_equal(labels[valid], expected[valid])
    assert (labels[~valid] == 255).all()


def test_rerun_gives_identical_bytes(small_scene, tiny_checkpoint, tmp_path):
    """Labels and probabilities, byte for byte, of a model whose labels vary."""
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    for out in (a, b):
        assert (
            _segment(
                small_scene, str(tiny_checkpoint), out, "--probabilities", str(out.with_suffix(".p.tif"))
            )
            == 0
        )
    assert a.read_bytes() == b.read_bytes()
    assert a.with_suffix(".p.tif").read_bytes() == b.with_suffix(".p.tif").read_bytes()
    label_spread(_read(a)).check(min_classes=4, min_share=0.15)  # the bytes hold a varying map


def test_summary_line_reports_pixels_classes_seconds_and_throughput(
    small_scene, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "s.tif"
    args = ["segment", str(small_scene), "-m", str(tiny_checkpoint), "-o", str(out), "--tile", "64"]
    assert main(args) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "0.4 Mpx" in err[0] and "4 classes" in err[0] and "Mpx/s" in err[0] and " s, " in err[0]


@pytest.mark.parametrize("blend", BLEND_MODES)
def test_each_blend_mode_gives_the_library_in_memory_segmentation_with_that_mode(
    small_scene, tiny_checkpoint, tmp_path, blend
):
    """``--blend X --overlap 0.5`` is ``segment_array`` with blend ``X``, pixel for pixel (labels and
    probabilities); the modes differ on this scene, so a ``--blend`` that was dropped would show."""
    out, probs = tmp_path / f"{blend}.tif", tmp_path / f"{blend}.probs.tif"
    extra = ("--blend", blend, "--overlap", "0.5", "--probabilities", str(probs))
    assert _segment(small_scene, str(tiny_checkpoint), out, *extra) == 0
    assert cog_validate(str(out), strict=True)[0]

    model, card = load_checkpoint(tiny_checkpoint)
    image = _read(small_scene)
    valid = (image != 0).any(0)

    def library(mode: str) -> ArrayResult:
        normalizer = normalizer_for(card.normalization)
        return segment_array(image, model, 64, 0.5, mode, valid, normalizer, 256, with_probabilities=True)

    expected = library(blend)
    labels = _read(out)[0]
    label_spread(labels).check(min_classes=4, min_share=0.15)
    np.testing.assert_array_equal(labels, expected.labels)
    np.testing.assert_allclose(_read(probs)[:, valid], expected.probabilities[:, valid], atol=ATOL)
    # The next mode (round the list, so every pair is checked once over the three runs) differs.
    other = BLEND_MODES[(BLEND_MODES.index(blend) + 1) % len(BLEND_MODES)]
    differs = np.abs(library(other).probabilities[:, valid] - expected.probabilities[:, valid])
    assert differs.max() > 10 * ATOL, (
        f"--blend {blend} and {other} agree here: the test cannot tell them apart"
    )


def test_image_without_georeferencing_is_segmented_with_one_warning_line(tmp_path):
    scene = tmp_path / "photo.png"
    rng = np.random.default_rng(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(scene, "w", driver="PNG", width=300, height=200, count=3, dtype="uint8") as dst:
            dst.write((rng.random((3, 200, 300)) * 255).astype(np.uint8))
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("gigaseg")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = tmp_path / "photo.labels.tif"
            assert _segment(scene, "arch:conv1x1", out, "--num-classes", "2") == 0
    finally:
        logger.removeHandler(handler)
    assert [line for line in lines if "not georeferenced" in line] == [
        f"{scene}: not georeferenced; the output has pixel coordinates only"
    ]
    assert not [w for w in caught if issubclass(w.category, NotGeoreferencedWarning)]
    with rasterio.open(out) as dst:
        assert (dst.width, dst.height) == (300, 200) and dst.crs is None


def test_summary_class_fractions_are_the_written_labels_histogram(small_scene, tiny_checkpoint, tmp_path):
    """The summary counts come from the engine's per-block stats, not a re-read: they must
    still be exactly the classes of the pixels in the COG (nodata corner excluded)."""
    from pipeline.job.config import SegmentConfig
    from pipeline.job.steps import segment

    out = tmp_path / "f.tif"
    summary = segment(
        SegmentConfig(
            input=small_scene,
            model=str(tiny_checkpoint),
            output=out,
            tile=64,
            block=256,
            chunk=128,
            quiet=True,
        )
    )
    with rasterio.open(out) as dst:
        labels = dst.read(1)
        valid = labels[labels != dst.nodata]
    counts = np.bincount(valid, minlength=4)
    assert summary.valid_pixels == valid.size == 530 * 700 - 60 * 90
    assert summary.class_fractions == {
        name: count / valid.size for name, count in zip(summary.class_fractions, counts)
    }
