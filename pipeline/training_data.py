"""Labelled scenes for training: image + label stores, held-out regions, tile sampling, augmentation.

Images and labels are ingested into scene stores (Zarr, chunked) and tiles are
read from there, so a training raster need not fit in memory. Label pixels
that are nodata in the label raster, or whose image pixel is nodata, are
``IGNORE`` and never reach a loss or a metric.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from pipeline.band_stack import check_same_grid, resolve_image
from pipeline.errors import InputError
from pipeline.grid import Region
from pipeline.ingest import ingest
from pipeline.raster_input import inspect_raster
from pipeline.scene_store import SceneStore

IGNORE = -1


@dataclass
class LabelledScene:
    """One image + label pair in scene stores, with the part used for training and for validation."""

    name: str
    image: SceneStore
    labels: SceneStore
    train: Region | None
    """Part sampled for training (None: a validation-only scene)."""
    val: Region | None

    def read(self, region: Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw image (float32), image-valid mask and int64 labels (``IGNORE`` where unusable)."""
        raw, valid = self.image.read(region)
        lab, lvalid = self.labels.read(region)
        labels = np.rint(np.nan_to_num(lab[0].astype(np.float64), nan=IGNORE)).astype(np.int64)
        labels[~(valid & lvalid)] = IGNORE
        return raw.astype(np.float32), valid, labels

    def read_labels(self, region: Region) -> np.ndarray:
        """Labels only (``IGNORE`` where the label or the image is nodata)."""
        return self.read(region)[2]


def _label_names(path: Path) -> list[str] | None:
    with rasterio.open(path) as src:
        tags = src.tags(1)
    return json.loads(tags["CLASS_NAMES"]) if "CLASS_NAMES" in tags else None


def open_pair(
    image_spec: str | os.PathLike[str],
    label_path: str | os.PathLike[str],
    work: str | os.PathLike[str],
    val_fraction: float,
    chunk: int = 256,
    validation_only: bool = False,
) -> tuple[LabelledScene, list[str] | None]:
    """Ingest a pair (image may be a band stack ``a.tif,b.tif``), holding out the right-most columns.

    ``validation_only``: the whole pair is held out (a separate validation scene).
    Returns the scene and the class names tagged in the label raster (if any).
    """
    work = Path(work)
    image_path = resolve_image(image_spec, work / "stacks")
    img_info = inspect_raster(image_path)
    lab_info = inspect_raster(label_path)
    if len(lab_info.bands) != 1:
        raise InputError(f"{label_path}: a label raster has one band, this has {len(lab_info.bands)}")
    check_same_grid(img_info, lab_info)
    key = hashlib.blake2b(f"{image_path.resolve()}|{Path(label_path).resolve()}".encode(), digest_size=6)
    image = ingest(image_path, work / f"image-{key.hexdigest()}.zarr", chunk=chunk)
    labels = ingest(label_path, work / f"labels-{key.hexdigest()}.zarr", chunk=chunk)
    h, w = image.spatial_shape
    if validation_only:
        train, val = None, ((0, h), (0, w))
    elif val_fraction > 0:
        split = round(w * (1 - val_fraction))
        train, val = ((0, h), (0, split)), ((0, h), (split, w))
    else:
        train, val = ((0, h), (0, w)), None
    return LabelledScene(str(image_spec), image, labels, train, val), _label_names(Path(label_path))


def region_windows(region: Region, size: int) -> list[Region]:
    """``region`` cut into windows of at most ``size`` pixels per side."""
    (r0, r1), (c0, c1) = region
    return [
        ((r, min(r + size, r1)), (c, min(c + size, c1)))
        for r in range(r0, r1, size)
        for c in range(c0, c1, size)
    ]


def class_counts(scene: LabelledScene, region: Region, num_classes: int, window: int = 1024) -> np.ndarray:
    """Class pixel counts of each window of ``region`` (see :func:`region_windows`): (windows, classes)."""
    rows = []
    for win in region_windows(region, window):
        lab = scene.read_labels(win)
        lab = lab[(lab >= 0) & (lab < num_classes)]
        rows.append(np.bincount(lab, minlength=num_classes)[:num_classes])
    return np.asarray(rows, dtype=np.int64).reshape(-1, num_classes)


def scan_classes(scenes: list[LabelledScene]) -> int:
    """Number of classes: one more than the largest label anywhere (labels are 0-based class ids)."""
    top = -1
    for s in scenes:
        for win in region_windows(((0, s.image.spatial_shape[0]), (0, s.image.spatial_shape[1])), 2048):
            lab = s.read_labels(win)
            if (lab < IGNORE).any():
                raise InputError(f"{s.name}: labels must be non-negative class ids")
            if lab.size:
                top = max(top, int(lab.max()))
    if top < 0:
        raise InputError(f"{scenes[0].name}: no labelled pixel in the label raster(s)")
    return top + 1


class TileSampler:
    """Random training tiles from the training regions, optionally class-balanced.

    Balanced: a class is drawn uniformly among those present, then a window in
    proportion to that class's pixels there, then one of its pixels, and the
    tile is placed around it — rare classes are seen as often as common ones.
    Otherwise windows are drawn in proportion to their labelled pixels.
    """

    def __init__(
        self, scenes: list[LabelledScene], tile: int, num_classes: int, balanced: bool, window: int = 512
    ):
        self.scenes, self.tile, self.num_classes, self.balanced = scenes, tile, num_classes, balanced
        self.windows: list[tuple[int, Region]] = []
        counts = []
        for i, s in enumerate(scenes):
            if s.train is None:
                continue
            (r0, r1), (c0, c1) = s.train
            if r1 - r0 < tile or c1 - c0 < tile:
                raise InputError(
                    f"{s.name}: training part {c1 - c0}×{r1 - r0} is smaller than the {tile}-pixel tile"
                )
            wins = region_windows(s.train, window)
            self.windows += [(i, w) for w in wins]
            counts.append(class_counts(s, s.train, num_classes, window))
        self.counts = np.concatenate(counts)
        if self.counts.sum() == 0:
            raise InputError(f"{scenes[0].name}: the training part has no labelled pixel")
        self.present = np.flatnonzero(self.counts.sum(0) > 0)

    def class_pixels(self) -> np.ndarray:
        """Labelled training pixels per class."""
        return self.counts.sum(0)

    def _anchor(self, rng: np.random.Generator) -> tuple[int, int, int]:
        if self.balanced:
            cls = int(rng.choice(self.present))
            weights = self.counts[:, cls]
        else:
            cls = -1
            weights = self.counts.sum(1)
        k = int(rng.choice(len(weights), p=weights / weights.sum()))
        i, win = self.windows[k]
        lab = self.scenes[i].read_labels(win)
        rr, cc = np.nonzero(lab == cls) if cls >= 0 else np.nonzero(lab >= 0)
        j = int(rng.integers(len(rr)))
        return i, win[0][0] + int(rr[j]), win[1][0] + int(cc[j])

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One tile: raw image (C, T, T) float32, valid mask, labels (T, T)."""
        i, r, c = self._anchor(rng)
        (r0, r1), (c0, c1) = self.scenes[i].train
        t = self.tile
        top = int(np.clip(r - int(rng.integers(t)), r0, r1 - t))
        left = int(np.clip(c - int(rng.integers(t)), c0, c1 - t))
        return self.scenes[i].read(((top, top + t), (left, left + t)))


def augment(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, jitter: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Random 90° rotation, flips and per-band intensity jitter (gain, offset) of a normalised tile.

    Geometry applies to image and labels alike; the jitter only to the image's
    valid pixels (nodata stays exactly 0 as the engine feeds it).
    """
    k = int(rng.integers(4))
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(0, 1))
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, ::-1]
    if rng.random() < 0.5:
        x, y = x[:, ::-1, :], y[::-1, :]
    x = np.ascontiguousarray(x)
    if jitter > 0:
        gain = 1.0 + rng.uniform(-jitter, jitter, (x.shape[0], 1, 1))
        offset = rng.uniform(-jitter, jitter, (x.shape[0], 1, 1))
        nonzero = np.any(x != 0, axis=0)
        x = np.where(nonzero, x * gain + offset, 0.0).astype(np.float32)
    return x, np.ascontiguousarray(y)


def band_statistics(
    scenes: list[LabelledScene], max_pixels: int = 2_000_000
) -> tuple[list[float], list[float]]:
    """Per-band mean and std over valid training pixels (strided subsample for big scenes)."""
    sums, squares, n = None, None, 0
    for s in scenes:
        if s.train is None:
            continue
        (r0, r1), (c0, c1) = s.train
        step = max(1, int(np.sqrt((r1 - r0) * (c1 - c0) / max_pixels)))
        for win in region_windows(s.train, 2048):
            raw, valid = s.image.read(win)
            raw = raw[:, ::step, ::step].astype(np.float64)
            valid = valid[::step, ::step]
            vals = raw[:, valid]
            sums = vals.sum(1) if sums is None else sums + vals.sum(1)
            squares = (vals**2).sum(1) if squares is None else squares + (vals**2).sum(1)
            n += vals.shape[1]
    if not n:
        raise InputError(f"{scenes[0].name}: no valid image pixel in the training part")
    mean = sums / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0)) + 1e-6
    return [float(v) for v in mean], [float(v) for v in std]
