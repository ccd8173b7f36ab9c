"""A synthetic but plausible land-cover scene with its label raster.

Until a user brings labelled imagery, the main job needs something real to learn
and segment. The scene is georeferenced (UTM zone 33N, 10 m pixels), has four
bands (blue, green, red, near-infrared; uint16 reflectance × 10 000) and five
classes laid out the way landscapes are: lakes and a meandering river in the
low ground, forest on moist slopes, a patchwork of crop and grass fields cut by
Voronoi parcels with in-field row texture, towns with building blocks, and roads
between them. A strip of the scene lies outside the sensor's swath (nodata 0).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.draw import line as draw_line

CLASS_NAMES = ["water", "forest", "grassland", "cropland", "built-up"]
CLASS_COLORS = [(40, 110, 220), (20, 110, 40), (150, 210, 90), (230, 200, 80), (200, 60, 60)]
BAND_NAMES = ["blue", "green", "red", "nir"]
WATER, FOREST, GRASS, CROP, BUILT = range(5)
NODATA = 0
LABEL_NODATA = 255
PIXEL_SIZE = 10.0
CRS_CODE = "EPSG:32633"

# Mean reflectance × 10 000 per class, bands blue/green/red/NIR.
SIGNATURES = np.array(
    [
        [600, 700, 450, 250],  # water
        [300, 550, 320, 3200],  # forest
        [500, 800, 650, 2600],  # grassland
        [700, 900, 1100, 2000],  # cropland (varies per field)
        [1200, 1250, 1300, 1500],  # built-up
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SampleScene:
    """Paths of a generated scene."""

    image: Path
    labels: Path


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth noise with features about ``scale`` pixels across, zero mean, unit std."""
    small = (max(2, int(shape[0] / scale) + 2), max(2, int(shape[1] / scale) + 2))
    field = ndimage.gaussian_filter(rng.standard_normal(small), 1.0)
    zoom = (shape[0] / (small[0] - 2), shape[1] / (small[1] - 2))
    big = ndimage.zoom(field, zoom, order=3)[: shape[0], : shape[1]]
    big = np.pad(big, [(0, shape[0] - big.shape[0]), (0, shape[1] - big.shape[1])], mode="edge")
    return ((big - big.mean()) / (big.std() + 1e-9)).astype(np.float32)


def _fractal(rng: np.random.Generator, shape: tuple[int, int], scale: float, octaves: int = 4) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    for o in range(octaves):
        out += _noise(rng, shape, max(2.0, scale / 2**o)) / 2**o
    return out / out.std()


def _thick_path(mask: np.ndarray, points: list[tuple[int, int]], width: int) -> None:
    h, w = mask.shape
    core = np.zeros_like(mask)
    for (r0, c0), (r1, c1) in itertools.pairwise(points):
        rr, cc = draw_line(r0, c0, r1, c1)
        keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        core[rr[keep], cc[keep]] = True
    mask |= ndimage.binary_dilation(core, iterations=max(1, width // 2))


def make_labels(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """The class map (uint8) of a scene of ``shape``."""
    h, w = shape
    s = max(h, w)
    elevation = _fractal(rng, shape, s / 3)
    moisture = _fractal(rng, shape, s / 6)
    labels = np.full(shape, GRASS, dtype=np.uint8)

    # Agricultural parcels: Voronoi cells, each crop or grass.
    n_fields = max(8, int(h * w / 90_000))
    seeds = np.column_stack([rng.uniform(0, h, n_fields), rng.uniform(0, w, n_fields)])
    step = 2
    rr, cc = np.mgrid[0:h:step, 0:w:step]
    _, cell = cKDTree(seeds).query(np.column_stack([rr.ravel(), cc.ravel()]))
    cell = np.repeat(np.repeat(cell.reshape(rr.shape), step, 0), step, 1)[:h, :w]
    field_is_crop = rng.random(n_fields) < 0.55
    labels[field_is_crop[cell]] = CROP

    labels[moisture > 0.35] = FOREST
    # Water: lakes in the lowest ground and a meandering river.
    labels[elevation < np.quantile(elevation, 0.08)] = WATER
    river = np.zeros(shape, dtype=bool)
    cols = np.linspace(0, w - 1, 40)
    rows = h * 0.5 + np.cumsum(rng.normal(0, h / 60, cols.size))
    rows = np.clip(rows, 0, h - 1)
    _thick_path(river, [(int(r), int(c)) for r, c in zip(rows, cols)], max(3, s // 300))
    labels[river] = WATER

    # Towns and the roads between them.
    n_towns = max(2, int(h * w / 1_500_000))
    towns = [(int(rng.uniform(0.15, 0.85) * h), int(rng.uniform(0.15, 0.85) * w)) for _ in range(n_towns)]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    urban_noise = _noise(rng, shape, s / 40)
    for r, c in towns:
        radius = rng.uniform(0.04, 0.08) * s
        dist = np.hypot(yy - r, xx - c) / radius
        labels[(dist + 0.25 * urban_noise) < 1.0] = BUILT
    roads = np.zeros(shape, dtype=bool)
    for (r0, c0), (r1, c1) in zip(towns, towns[1:] + towns[:1]):
        mid = (int((r0 + r1) / 2 + rng.normal(0, s / 20)), int((c0 + c1) / 2 + rng.normal(0, s / 20)))
        _thick_path(roads, [(r0, c0), mid, (r1, c1)], 3)
    labels[roads & (labels != WATER)] = BUILT
    return labels


def render_image(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Four-band reflectance (float32) for a class map, with class-specific texture."""
    shape = labels.shape
    image = SIGNATURES[labels].transpose(2, 0, 1).copy()
    fine = rng.standard_normal((4, *shape)).astype(np.float32)
    illum = 1.0 + 0.08 * _noise(rng, shape, max(shape) / 8)

    forest = labels == FOREST
    canopy = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5)
    image[:, forest] *= 1.0 + 0.35 * canopy[forest] / (canopy.std() + 1e-9)

    crop = labels == CROP
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    angle = _noise(rng, shape, max(shape) / 10) * 1.5
    rows = 0.5 + 0.5 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 0.9)
    greenness = 0.5 + 0.5 * np.tanh(_noise(rng, shape, max(shape) / 25))
    image[3, crop] = 1200 + 2200 * greenness[crop] * (0.75 + 0.25 * rows[crop])
    image[2, crop] = 1300 - 700 * greenness[crop]

    built = labels == BUILT
    blocks = ndimage.zoom(rng.random((shape[0] // 6 + 1, shape[1] // 6 + 1)), 6, order=0)
    blocks = blocks[: shape[0], : shape[1]]
    image[:, built] *= (0.6 + 0.9 * blocks[built])[None]

    water = labels == WATER
    image[:, water] *= 1.0 + 0.03 * fine[:, water]
    image *= illum[None]
    image += 40.0 * fine
    return np.clip(image, 1, 10_000)


def swath_mask(shape: tuple[int, int]) -> np.ndarray:
    """True inside the sensor's swath: the scene's top-right corner is outside it."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - 0.7 * w) * 0.6 < yy * 1.0 + 0.05 * h


def write_sample_scene(
    out_dir: str | os.PathLike[str],
    size: int | tuple[int, int] = 3072,
    seed: int = 0,
    name: str = "sample",
) -> SampleScene:
    """Write ``<name>.tif`` (image) and ``<name>_labels.tif`` (classes) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(seed)
    labels = make_labels(rng, shape)
    image = render_image(rng, labels).astype(np.uint16)
    inside = swath_mask(shape)
    image[:, ~inside] = NODATA
    labels[~inside] = LABEL_NODATA

    transform = Affine(PIXEL_SIZE, 0, 500_000.0, 0, -PIXEL_SIZE, 5_200_000.0)
    common = {
        "driver": "GTiff",
        "height": shape[0],
        "width": shape[1],
        "crs": CRS.from_string(CRS_CODE),
        "transform": transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    image_path = out_dir / f"{name}.tif"
    label_path = out_dir / f"{name}_labels.tif"
    with rasterio.open(image_path, "w", count=4, dtype="uint16", nodata=NODATA, **common) as dst:
        dst.write(image)
        for i, band in enumerate(BAND_NAMES, start=1):
            dst.set_band_description(i, band)
    with rasterio.open(label_path, "w", count=1, dtype="uint8", nodata=LABEL_NODATA, **common) as dst:
        dst.write(labels, 1)
        dst.write_colormap(1, {i: (*rgb, 255) for i, rgb in enumerate(CLASS_COLORS)})
        dst.update_tags(1, CLASS_NAMES=json.dumps(CLASS_NAMES))
        dst.update_tags(CLASS_NAMES=json.dumps(CLASS_NAMES))
    return SampleScene(image_path, label_path)
