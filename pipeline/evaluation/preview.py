"""A quick-look PNG: the image (false colour) beside the predicted classes, with a legend."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw

from pipeline.inputs.raster import inspect_raster
from pipeline.stores.location import location
from pipeline.stores.object_storage_settings import open_raster


def _stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    vals = band[valid]
    lo, hi = np.percentile(vals, (2, 98)) if vals.size else (0.0, 1.0)
    scaled = np.nan_to_num((band - lo) / max(hi - lo, 1e-9) * 255)  # NaN: nodata of a float stack
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _false_colour(bands: int) -> tuple[int, int, int]:
    """Band indices drawn as red, green, blue: the 4th, 3rd, 2nd of four or more, else the first three
    (a single band as grey).

    >>> _false_colour(4), _false_colour(3), _false_colour(1)
    ((3, 2, 1), (0, 1, 2), (0, 0, 0))
    """
    return (3, 2, 1) if bands >= 4 else (0, 1, 2) if bands >= 3 else (0, 0, 0)


def _legend_height(classes: int) -> int:
    return 22 * ((classes + 3) // 4) + 8


def _draw_legend(
    canvas: Image.Image, top: int, class_names: Sequence[str], colors: Sequence[Sequence[int]], column: int
) -> None:
    """Four swatches with names per row, from ``top`` down, ``column`` pixels apart."""
    draw = ImageDraw.Draw(canvas)
    for i, (name, rgbc) in enumerate(zip(class_names, colors)):
        x = 8 + (i % 4) * column
        y = top + 6 + 22 * (i // 4)
        draw.rectangle([x, y, x + 14, y + 14], fill=tuple(int(c) for c in rgbc[:3]), outline="black")
        draw.text((x + 20, y + 1), name, fill="black")


def _read_decimated(
    image_path: str | os.PathLike[str], labels_path: str | os.PathLike[str], max_side: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image's false-colour bands, its valid mask and the labels, read at most ``max_side`` wide."""
    info = inspect_raster(image_path)
    scale = max(info.width, info.height) / max_side
    shape = (max(1, round(info.height / scale)), max(1, round(info.width / scale)))
    with open_raster(location(image_path)) as src:
        bands = list(info.bands)
        pick = [bands[i] for i in _false_colour(len(bands))]
        img = src.read(pick, out_shape=(3, *shape)).astype(np.float32)
        valid = src.dataset_mask(out_shape=shape) > 0
    with open_raster(location(labels_path)) as src:
        labels = src.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.mode)
    return img, valid, labels


def write_preview(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    max_side: int = 768,
) -> Path:
    """Decimated read of both rasters (overview-friendly), side by side, legend below."""
    img, valid, labels = _read_decimated(image_path, labels_path, max_side)
    shape = valid.shape
    rgb = np.stack([_stretch(b, valid) for b in img], axis=-1)
    rgb[~valid] = 0
    palette = np.zeros((65536, 3), dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8)[:, :3]
    cls = palette[labels]
    canvas = Image.new("RGB", (shape[1] * 2 + 8, shape[0] + _legend_height(len(class_names))), "white")
    canvas.paste(Image.fromarray(rgb), (0, 0))
    canvas.paste(Image.fromarray(cls), (shape[1] + 8, 0))
    _draw_legend(canvas, shape[0], class_names, colors, canvas.width // 4)
    out = Path(out)
    canvas.save(out)
    return out


def compose_preview(
    image: np.ndarray,
    panels: Sequence[np.ndarray],
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    max_side: int = 512,
) -> Image.Image:
    """In-memory quick look: the image (C, H, W) in false colour, then each label panel, legend below.

    Label values outside the classes (nodata, ignore) are drawn black.
    """
    step = max(1, int(np.ceil(max(image.shape[1:]) / max_side)))
    img = image[:, ::step, ::step].astype(np.float32)
    valid = np.isfinite(img).all(0) & np.any(img != 0, axis=0)
    rgb = np.stack([_stretch(np.nan_to_num(img[i]), valid) for i in _false_colour(img.shape[0])], axis=-1)
    rgb[~valid] = 0
    palette = np.zeros((len(colors) + 1, 3), dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8)[:, :3]
    tiles = [rgb]
    for panel in panels:
        lab = panel[::step, ::step].astype(np.int64)
        lab = np.where((lab >= 0) & (lab < len(colors)), lab, len(colors))
        tiles.append(palette[lab])
    h, w = rgb.shape[:2]
    canvas = Image.new("RGB", (len(tiles) * (w + 8) - 8, h + _legend_height(len(class_names))), "white")
    for i, t in enumerate(tiles):
        canvas.paste(Image.fromarray(np.ascontiguousarray(t)), (i * (w + 8), 0))
    _draw_legend(canvas, h, class_names, colors, max(canvas.width // 4, 120))
    return canvas
