"""Labelled scenes for training: image + label stores, held-out regions, tile sampling, augmentation.

Images and labels — rasters or volumes, any format ``gigaseg segment`` reads —
are ingested into scene stores (Zarr, chunked) by the same readers inference
uses, and tiles (2D) or patches (3D) are read from there, so a training scene
need not fit in memory. Label pixels
that are nodata in the label raster, or whose image pixel is nodata, are
``IGNORE`` and never reach a loss or a metric.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio

from pipeline.errors import InputError
from pipeline.inputs.band_stack import Scene, check_same_grid, resolve_image
from pipeline.inputs.formats import InputDescription, describe_input, ingest_input
from pipeline.stores.scene import SceneStore
from pipeline.tiling.grid import Region

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


def _label_names(description: InputDescription) -> list[str] | None:
    if description.raster is None:
        return None
    with rasterio.open(description.path) as src:
        tags = src.tags(1)
    return json.loads(tags["CLASS_NAMES"]) if "CLASS_NAMES" in tags else None


def _check_same_voxel_grid(image: InputDescription, labels: InputDescription) -> None:
    assert image.volume is not None and labels.volume is not None
    if image.volume.shape != labels.volume.shape:
        raise InputError(
            f"{labels.path}: {'×'.join(map(str, labels.volume.shape))} voxels, but {image.path} has "
            f"{'×'.join(map(str, image.volume.shape))}: not the same grid"
        )
    a, b = image.volume.geometry.affine, labels.volume.geometry.affine
    voxel = max(min(image.volume.geometry.spacing), 1e-9)
    if not np.allclose(a, b, rtol=0, atol=1e-3 * voxel):
        raise InputError(f"{labels.path}: voxel-to-world affine differs from {image.path}'s")


def open_pair(
    image_spec: str | os.PathLike[str] | Scene,
    label_path: str | os.PathLike[str],
    work: str | os.PathLike[str],
    val_fraction: float,
    chunk: int | None = None,
    validation_only: bool = False,
    spacing: Sequence[float] | None = None,
) -> tuple[LabelledScene, list[str] | None]:
    """Ingest an image + label pair (raster, band stack ``a.tif,b.tif`` or volume), holding out the end.

    The held-out part is the last ``val_fraction`` of the last axis: the
    right-most columns of a raster, the last x-planes of a volume.
    ``validation_only``: the whole pair is held out (a separate validation scene).
    ``spacing``: voxel size for TIFF stacks, as ``gigaseg segment --spacing``.
    Returns the scene and the class names tagged in the label raster (if any).
    """
    work = Path(work)
    image_desc = describe_input(resolve_image(image_spec, work / "stacks"), spacing)
    label_desc = describe_input(label_path, spacing)
    if label_desc.num_bands != 1:
        raise InputError(f"{label_path}: a label image has one band, this has {label_desc.num_bands}")
    if label_desc.spatial_dims != image_desc.spatial_dims:
        raise InputError(
            f"{label_path}: {label_desc.spatial_dims}D labels for the {image_desc.spatial_dims}D image "
            f"{image_desc.path}"
        )
    if image_desc.raster is not None and label_desc.raster is not None:
        check_same_grid(image_desc.raster, label_desc.raster)
    else:
        _check_same_voxel_grid(image_desc, label_desc)
    chunk = chunk or (256 if image_desc.spatial_dims == 2 else 64)
    key = hashlib.blake2b(
        f"{image_desc.path.resolve()}|{Path(label_path).resolve()}".encode(), digest_size=6
    ).hexdigest()
    # Training reads small random windows, each many times: a chunked copy serves them
    # faster than reopening the source for every window.
    image = ingest_input(image_desc, work / f"image-{key}.zarr", chunk, copy=True)
    labels = ingest_input(label_desc, work / f"labels-{key}.zarr", chunk, copy=True)
    whole = tuple((0, n) for n in image.spatial_shape)
    last = image.spatial_shape[-1]
    if validation_only:
        train, val = None, whole
    elif val_fraction > 0:
        split = round(last * (1 - val_fraction))
        if not 0 < split < last:
            raise InputError(
                f"{image_spec}: --val-fraction {val_fraction} leaves nothing to train on or to hold out "
                f"along its last axis of {last}"
            )
        train, val = (*whole[:-1], (0, split)), (*whole[:-1], (split, last))
    else:
        train, val = whole, None
    return LabelledScene(str(image_spec), image, labels, train, val), _label_names(label_desc)


def slab_regions(
    shape: Sequence[int], axis: int, start: int, stop: int, val_fraction: float, name: str = "volume"
) -> tuple[Region, Region, Region]:
    """Training part, validation strip and held-out slab of a grid cut along ``axis``.

    The slab ``[start, stop)`` lies at one end of the axis; the validation strip
    is the ``val_fraction`` of the rest next to it; the remainder trains.
    """
    n = shape[axis]
    if not (0 <= start < stop <= n and (start == 0) != (stop == n)):
        raise InputError(f"{name}: held-out slab {start}–{stop} of axis {axis} (0–{n}) is not at one end")
    rest = n - (stop - start)
    strip = round(rest * val_fraction)
    if not 0 < strip < rest:
        raise InputError(
            f"{name}: a {val_fraction} validation strip of the {rest} other slices along axis {axis} "
            "leaves nothing to train on or to validate on"
        )
    if start == 0:
        val, train = (stop, stop + strip), (stop + strip, n)
    else:
        train, val = (0, start - strip), (start - strip, start)

    def along(extent: tuple[int, int]) -> Region:
        return tuple(extent if a == axis else (0, m) for a, m in enumerate(shape))

    return along(train), along(val), along((start, stop))


def hold_out_slab(
    scene: LabelledScene, axis: int, start: int, stop: int, val_fraction: float
) -> tuple[LabelledScene, Region]:
    """``scene`` with the slab ``[start, stop)`` of ``axis`` kept out of training and validation.

    For scoring on a part of one volume: the slab is the test part, whose labels
    reach neither the loss nor the choice of epoch (see :func:`slab_regions`).
    Returns the scene and the slab as a region.
    """
    shape = scene.image.spatial_shape
    train, val, held = slab_regions(shape, axis, start, stop, val_fraction, scene.name)
    return replace(scene, train=train, val=val), held


def region_windows(region: Region, size: int) -> list[Region]:
    """``region`` cut into windows of at most ``size`` pixels (voxels) per side, in C order."""
    axes = [[(a, min(a + size, b)) for a in range(a0, b, size)] for a0, b in region]
    return [tuple(w) for w in itertools.product(*axes)]


def whole_region(scene: LabelledScene) -> Region:
    """The scene's full extent."""
    return tuple((0, n) for n in scene.image.spatial_shape)


def window_side(spatial_dims: int) -> int:
    """Side of the windows labels and statistics are read in: about 0.25–2 M pixels (voxels)."""
    return 512 if spatial_dims == 2 else 96


def class_counts(scene: LabelledScene, region: Region, num_classes: int, window: int = 1024) -> np.ndarray:
    """Class pixel counts of each window of ``region`` (see :func:`region_windows`): (windows, classes)."""
    rows = []
    for win in region_windows(region, window):
        lab = scene.read_labels(win)
        lab = lab[(lab >= 0) & (lab < num_classes)]
        rows.append(np.bincount(lab, minlength=num_classes)[:num_classes])
    return np.asarray(rows, dtype=np.int64).reshape(-1, num_classes)


def check_label_values(name: str, raw: np.ndarray, valid: np.ndarray, nodata_is_nan: bool) -> None:
    """Labels are class ids: refuse NaN (unless it is the nodata value), fractions and negatives."""
    values = raw[np.broadcast_to(valid, raw.shape)]
    if np.issubdtype(raw.dtype, np.floating):
        if not nodata_is_nan and np.isnan(raw).any():
            raise InputError(f"{name}: labels hold NaN values (class ids expected; set a nodata value)")
        values = values[np.isfinite(values)]
        if (values != np.floor(values)).any():
            raise InputError(f"{name}: labels hold fractional values (class ids expected, e.g. 0, 1, 2)")
    if values.size and values.min() < 0:
        raise InputError(f"{name}: labels hold negative values (class ids are 0, 1, 2, …)")


def _check_no_outliers(name: str, counts: np.ndarray, named: int) -> None:
    """Refuse ids far above the rest (an outlier or an unmapped nodata value) unless all are named."""
    present = np.flatnonzero(counts)
    implied = int(present[-1]) + 1
    if named >= implied or implied <= max(8, 2 * len(present)):
        return
    shown = ", ".join(map(str, present[:8])) + (", …" if len(present) > 8 else "")
    raise InputError(
        f"{name}: label ids {shown} imply {implied} classes, {implied - len(present)} of them absent "
        f"(an outlier, or a nodata value not declared?); remap the ids to 0…{len(present) - 1}, set the "
        f"labels' nodata value, or name all {implied} classes with --classes"
    )


def scan_classes(scenes: list[LabelledScene], named: int = 0) -> int:
    """Number of classes: one more than the largest label anywhere (labels are 0-based class ids).

    The labels are checked on the way (:func:`check_label_values`), and ids that imply
    many more classes than appear are refused unless ``named`` names them all.
    """
    counts = np.zeros(0, dtype=np.int64)
    for s in scenes:
        side = 4 * window_side(len(s.image.spatial_shape))
        nodata_is_nan = bool(s.labels.attrs.get("nodata_is_nan"))
        for win in region_windows(whole_region(s), side):
            raw, label_valid = s.labels.read(win)
            check_label_values(s.name, raw[0], label_valid, nodata_is_nan)
            lab = s.read_labels(win)
            if (lab < IGNORE).any():
                raise InputError(f"{s.name}: labels must be non-negative class ids")
            found = np.bincount(lab[lab >= 0].ravel())
            if found.size > counts.size:
                counts = np.pad(counts, (0, found.size - counts.size))
            counts[: found.size] += found
    if not counts.any():
        raise InputError(f"{scenes[0].name}: no labelled pixel in the label image(s)")
    _check_no_outliers(scenes[0].name, counts, named)
    return int(np.flatnonzero(counts)[-1]) + 1


class TileSampler:
    """Random training tiles (2D) or patches (3D) from the training regions, optionally class-balanced.

    Balanced: a class is drawn uniformly among those present, then a window in
    proportion to that class's pixels there, then one of its pixels, and the
    tile is placed around it — rare classes are seen as often as common ones.
    Otherwise windows are drawn in proportion to their labelled pixels. A tile
    is ``tile`` pixels per side, or the training part's extent along an axis
    shorter than that (small volumes), the same for every scene so tiles batch.
    """

    def __init__(
        self,
        scenes: list[LabelledScene],
        tile: int,
        num_classes: int,
        balanced: bool,
        window: int | None = None,
    ):
        self.scenes, self.num_classes, self.balanced = scenes, num_classes, balanced
        training = [s for s in scenes if s.train is not None]
        if not training:
            raise InputError(f"{scenes[0].name}: no training part (every scene is held out)")
        dims = len(training[0].image.spatial_shape)
        window = window or window_side(dims)
        extents = np.array([[b - a for a, b in s.train] for s in training])
        self.tile = tuple(int(min(tile, e)) for e in extents.min(0))
        if dims == 2 and min(self.tile) < tile:
            (r0, r1), (c0, c1) = training[int(np.argmin(extents.min(1)))].train
            raise InputError(
                f"{training[0].name}: training part {c1 - c0}×{r1 - r0} is smaller than the {tile}-pixel tile"
            )
        self.windows: list[tuple[int, Region]] = []
        counts = []
        for i, s in enumerate(scenes):
            if s.train is None:
                continue
            self.windows += [(i, w) for w in region_windows(s.train, window)]
            counts.append(class_counts(s, s.train, num_classes, window))
        self.counts = np.concatenate(counts)
        if self.counts.sum() == 0:
            raise InputError(f"{scenes[0].name}: the training part has no labelled pixel")
        self.present = np.flatnonzero(self.counts.sum(0) > 0)

    def class_pixels(self) -> np.ndarray:
        """Labelled training pixels per class."""
        return self.counts.sum(0)

    def _anchor(self, rng: np.random.Generator) -> tuple[int, tuple[int, ...]]:
        if self.balanced:
            cls = int(rng.choice(self.present))
            weights = self.counts[:, cls]
        else:
            cls = -1
            weights = self.counts.sum(1)
        k = int(rng.choice(len(weights), p=weights / weights.sum()))
        i, win = self.windows[k]
        lab = self.scenes[i].read_labels(win)
        where = np.nonzero(lab == cls) if cls >= 0 else np.nonzero(lab >= 0)
        j = int(rng.integers(len(where[0])))
        return i, tuple(w0 + int(idx[j]) for (w0, _), idx in zip(win, where))

    def draw(self, rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """One tile and the index of its scene: (scene, raw image (C, *tile) float32, valid, labels)."""
        i, point = self._anchor(rng)
        region = []
        for p, (a, b), t in zip(point, self.scenes[i].train, self.tile):
            start = int(np.clip(p - int(rng.integers(t)), a, b - t))
            region.append((start, start + t))
        return (i, *self.scenes[i].read(tuple(region)))

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One tile: raw image (C, *tile) float32, valid mask, labels."""
        return self.draw(rng)[1:]


def augment(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, jitter: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Random 90° rotation (in the last two axes, when square), flips and intensity jitter of a tile.

    Works on 2D tiles (C, H, W) and 3D patches (C, D, H, W). Geometry applies to
    image and labels alike; the jitter (per-band gain, offset) only to the
    image's valid pixels (nodata stays exactly 0 as the engine feeds it).
    """
    dims = y.ndim
    if y.shape[-1] == y.shape[-2]:
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(dims - 1, dims)), np.rot90(y, k, axes=(dims - 2, dims - 1))
    for axis in reversed(range(dims)):
        if rng.random() < 0.5:
            x, y = np.flip(x, axis + 1), np.flip(y, axis)
    x = np.ascontiguousarray(x)
    if jitter > 0:
        shape = (x.shape[0],) + (1,) * dims
        gain = 1.0 + rng.uniform(-jitter, jitter, shape)
        offset = rng.uniform(-jitter, jitter, shape)
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
        dims = len(s.train)
        size = math.prod(b - a for a, b in s.train)
        step = max(1, math.ceil((size / max_pixels) ** (1 / dims)))
        for win in region_windows(s.train, 4 * window_side(dims)):
            raw, valid = s.image.read(win)
            lattice = (slice(None, None, step),) * dims
            raw = raw[(slice(None), *lattice)].astype(np.float64)
            valid = valid[lattice]
            vals = raw[:, valid]
            sums = vals.sum(1) if sums is None else sums + vals.sum(1)
            squares = (vals**2).sum(1) if squares is None else squares + (vals**2).sum(1)
            n += vals.shape[1]
    if not n:
        raise InputError(f"{scenes[0].name}: no valid image pixel in the training part")
    mean = sums / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0)) + 1e-6
    return [float(v) for v in mean], [float(v) for v in std]
