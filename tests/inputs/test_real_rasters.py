"""Real rasters that break naive readers (``../shared/data``): each segments, and the output keeps
the input's grid and marks exactly the input's invalid pixels as nodata."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from models.checkpoint import ModelCard, save_checkpoint
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import segment
from tests._varying_models import image_following_unet, label_spread

EDGE_CASES = [
    "satellite/edge/RGBA.byte.tif",  # alpha band instead of nodata
    "satellite/edge/all-nodata.tif",  # every pixel nodata
    "satellite/edge/float_raster_with_nodata.tif",  # float32, nodata −3.4e38, IGNF CRS
    "satellite/edge/goes.tif",  # geostationary projection, no EPSG code
    "satellite/edge/shade.tif",  # nodata 255, same value as the label nodata
    "satellite/edge/uint16_scene_band1.tif",
    "satellite/edge/world.byte.tif",  # global EPSG:4326 grid
    "satellite/edge/landcover_with_colormap.tif",  # palette band used as data
    "satellite/RGB.byte.tif",
]


def _invalid_mask(path: Path) -> np.ndarray:
    """Invalid pixels computed independently of the pipeline: GDAL's own dataset mask, plus NaN."""
    with rasterio.open(path) as src:
        invalid = src.dataset_mask() == 0
        if np.issubdtype(np.dtype(src.dtypes[0]), np.floating):
            invalid |= np.isnan(src.read()).any(axis=0)
    return invalid


def _segment(src: Path, out: Path, bands: int, **kw) -> None:
    segment(
        SegmentConfig(
            input=src,
            model="arch:conv1x1",
            output=out,
            in_channels=bands,
            num_classes=3,
            chunk=256,
            block=512,
            tile=256,
            quiet=True,
            **kw,
        )
    )


@pytest.mark.parametrize("name", EDGE_CASES, ids=lambda n: Path(n).stem)
def test_real_raster_segments_on_the_input_grid_with_its_nodata(
    name: str, shared_data: Path, tmp_path: Path
) -> None:
    src = shared_data / name
    with rasterio.open(src) as s:
        image_bands = sum(ci.name != "alpha" for ci in s.colorinterp)
        crs, transform, shape = s.crs, s.transform, s.shape
    out = tmp_path / "labels.tif"
    _segment(src, out, image_bands)

    with rasterio.open(out) as o:
        assert (o.crs, o.transform, o.shape) == (crs, transform, shape)
        labels = o.read(1)
        nodata = o.nodata
    invalid = _invalid_mask(src)
    np.testing.assert_array_equal(labels == nodata, invalid)
    assert labels[~invalid].max(initial=0) < 3
    assert cog_validate(out, strict=True)[0]


def _brightness_unet(path: Path, image: np.ndarray, valid: np.ndarray) -> Path:
    """A 4-class U-Net whose labels are ``image``'s brightness quartiles (``tests/_varying_models.py``)."""
    brightness = (image.astype(np.float32) / 255.0).mean(axis=0)[valid]
    thresholds = np.quantile(brightness, [0.25, 0.5, 0.75]).tolist()
    model = image_following_unet("unet", image.shape[0], thresholds, width=4, depth=2)
    card = ModelCard(
        "unet", model.config, ["dark", "dim", "light", "bright"],
        normalization={"kind": "scale", "scale": 1 / 255.0, "offset": 0.0}, tile_size=256,
    )  # fmt: skip
    return save_checkpoint(path, model, card)


def test_vrt_mosaic_segments_like_the_raster_it_mosaics(shared_data: Path, tmp_path: Path) -> None:
    """A VRT stitching two halves of a GeoTIFF gives the same labels and probabilities as the
    GeoTIFF itself, with a model whose labels follow this image (4 classes, none rare)."""
    src = shared_data / "satellite/RGB.byte.tif"
    with rasterio.open(src) as s:
        profile, data = s.profile, s.read()
    h, w = data.shape[1:]
    half = w // 2
    parts = []
    for i, (c0, c1) in enumerate([(0, half), (half, w)]):
        part = tmp_path / f"part{i}.tif"
        window = rasterio.windows.Window(c0, 0, c1 - c0, h)
        p = dict(profile, width=c1 - c0, transform=rasterio.windows.transform(window, profile["transform"]))
        with rasterio.open(part, "w", **p) as dst:
            dst.write(data[:, :, c0:c1])
        parts.append((part, c0, c1 - c0))
    bands_xml = ""
    for b in range(1, data.shape[0] + 1):
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{p.name}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{pw}" ySize="{h}"/>'
            f'<DstRect xOff="{c0}" yOff="0" xSize="{pw}" ySize="{h}"/></SimpleSource>'
            for p, c0, pw in parts
        )
        bands_xml += (
            f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue>{sources}</VRTRasterBand>'
        )
    gt = ", ".join(str(v) for v in profile["transform"].to_gdal())
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{profile["crs"].to_wkt()}</SRS>'
        f"<GeoTransform>{gt}</GeoTransform>{bands_xml}</VRTDataset>"
    )

    model = _brightness_unet(tmp_path / "brightness.safetensors", data, ~_invalid_mask(src))
    outputs = {}
    for name, scene in (("direct", src), ("via_vrt", vrt)):
        out = tmp_path / f"{name}.tif"
        config = SegmentConfig(
            input=scene, model=str(model), output=out, probabilities=out.with_suffix(".p.tif")
        )
        segment(dataclasses.replace(config, chunk=256, block=512, tile=256, quiet=True))
        with rasterio.open(out) as o, rasterio.open(out.with_suffix(".p.tif")) as p:
            outputs[name] = (o.crs, o.transform, o.read(1), p.read())
    (crs, transform, labels, probs), (vrt_crs, vrt_transform, vrt_labels, vrt_probs) = outputs.values()
    assert (crs, transform) == (vrt_crs, vrt_transform)
    label_spread(labels).check(min_classes=4, min_share=0.1)
    np.testing.assert_array_equal(vrt_labels, labels)
    np.testing.assert_array_equal(vrt_probs, probs)
