"""Real rasters that break naive readers (``../shared/data``): each segments, and the output keeps
the input's grid and marks exactly the input's invalid pixels as nodata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from pipeline.job.config import SegmentConfig
from pipeline.job.steps import segment

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


def test_vrt_mosaic_segments_like_the_raster_it_mosaics(shared_data: Path, tmp_path: Path) -> None:
    """A VRT stitching two halves of a GeoTIFF gives the same labels as the GeoTIFF itself."""
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

    _segment(src, tmp_path / "direct.tif", 3)
    _segment(vrt, tmp_path / "via_vrt.tif", 3)
    with rasterio.open(tmp_path / "direct.tif") as a, rasterio.open(tmp_path / "via_vrt.tif") as b:
        assert (a.crs, a.transform) == (b.crs, b.transform)
        np.testing.assert_array_equal(a.read(), b.read())
