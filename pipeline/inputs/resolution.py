"""The resolution a scene is at, against the one its model was trained at (the card's ``gsd`` / ``spacing``).

A raster's ground sample distance is its pixel size in metres (the square root of
the pixel's area under the geotransform, times the CRS's metres per unit); a raster
without a projected CRS has none gigaseg can compare. A volume's is its voxel
spacing in mm. Training records them in the card (:func:`training_resolution`);
inference compares (:func:`check_resolution`): a scene at a far other resolution
than the model's (ratio past :data:`RATIO_LIMIT` either way) is refused with one
line; a smaller mismatch (past :data:`TOLERANCE`) is resampled to the model's
resolution (:mod:`pipeline.inputs.resampling`); ``--native-resolution`` runs
either as it is, with one log line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.errors import InputError

log = logging.getLogger("gigaseg")

RATIO_LIMIT = 4.0
"""A scene more than this many times finer or coarser than the model's resolution is refused."""
TOLERANCE = 0.05
"""Relative difference below which two resolutions are the same (no log line)."""


def raster_gsd(attrs: Mapping[str, Any]) -> float | None:
    """Metres per pixel of a raster described by scene-store ``attrs`` (None: no projected CRS).

    >>> raster_gsd({"crs": "EPSG:32633", "transform": [10, 0, 500000, 0, -10, 5000000]})
    10.0
    >>> raster_gsd({"crs": "EPSG:4326", "transform": [0.1, 0, 0, 0, -0.1, 0]}) is None
    True
    """
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    if not attrs.get("crs"):
        return None
    try:
        crs = CRS.from_user_input(attrs["crs"])
    except CRSError:
        return None
    if not crs.is_projected:
        return None
    a, b, _, d, e, _ = (float(v) for v in attrs["transform"][:6])
    return math.sqrt(abs(a * e - b * d)) * float(crs.linear_units_factor[1])


def scene_resolution(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``{"gsd": m/px}`` for a projected raster, ``{"spacing": [mm, …]}`` for a volume, else ``{}``."""
    if attrs.get("kind") == "volume" and attrs.get("spacing"):
        return {"spacing": [float(s) for s in attrs["spacing"]]}
    gsd = raster_gsd(attrs) if attrs.get("kind") == "raster" else None
    return {"gsd": gsd} if gsd else {}


def training_resolution(scene_attrs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The card's resolution fields for a model trained on these scenes: their common one, if they
    share one (within :data:`TOLERANCE`); the median if they differ; ``{}`` when none has one."""
    found = [scene_resolution(a) for a in scene_attrs]
    gsds = sorted(f["gsd"] for f in found if "gsd" in f)
    if gsds:
        return {"gsd": gsds[len(gsds) // 2]}
    spacings = sorted((f["spacing"] for f in found if "spacing" in f), key=lambda s: math.prod(s))
    return {"spacing": spacings[len(spacings) // 2]} if spacings else {}


def compared_resolution(card: Any, attrs: Mapping[str, Any]) -> tuple[list[float], list[float], str] | None:
    """The scene's and the card's resolution and their unit (``m/px`` or ``mm``); None: not comparable."""
    scene = scene_resolution(attrs)
    if card.gsd is not None and "gsd" in scene:
        return [scene["gsd"]], [float(card.gsd)], "m/px"
    if card.spacing is not None and "spacing" in scene and len(scene["spacing"]) == len(card.spacing):
        return scene["spacing"], [float(s) for s in card.spacing], "mm"
    return None


def resolution_ratio(scene: Sequence[float], model: Sequence[float]) -> float:
    """The largest scene / model ratio over the axes, folded so that finer and coarser both exceed 1."""
    ratios = [s / m for s, m in zip(scene, model) if s > 0 and m > 0]
    return max((max(r, 1 / r) for r in ratios), default=1.0)


def check_resolution(card: Any, attrs: Mapping[str, Any], source: str, native: bool = False) -> None:
    """Refuse a scene at a far other resolution than ``card``'s; with ``native``, log a mismatch.

    Without ``native`` a smaller mismatch is not logged here: the scene is resampled
    to the model's resolution (:mod:`pipeline.inputs.resampling`), which says so.
    """
    found = compared_resolution(card, attrs)
    if found is None:
        return
    have, want, unit = found
    ratio = resolution_ratio(have, want)
    if ratio <= 1 + TOLERANCE:
        return
    text = (
        f"{source}: at {format_resolution(have)} {unit}, "
        f"the model was trained at {format_resolution(want)} {unit}"
    )
    if ratio > RATIO_LIMIT and not native:
        raise InputError(
            f"{text} ({ratio:.1f}× apart, over {RATIO_LIMIT:g}×); give --native-resolution to run anyway"
        )
    if native:
        log.warning("%s; labels are computed at the scene's own resolution (--native-resolution)", text)


def format_resolution(values: Sequence[float]) -> str:
    """``10`` or ``1,1,2``: a resolution as the messages write it."""
    return ",".join(f"{v:g}" for v in values)
