"""Band selection and intensity normalisation, as the model card prescribes.

One home for normalisation: the ``--normalization`` option as a card spec
(:func:`normalization_spec`), a per-scene spec resolved into fixed values with the
scene's statistics (:func:`resolve_normalization`), and the spec applied to a block
(:func:`normalize`, :func:`normalizer_for`). Applied per block with fixed parameters (never
statistics of the block itself), so every block is normalised exactly as a
whole-scene pass would be.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.errors import InputError
from pipeline.inputs.scene_statistics import Reader, scene_statistics

if TYPE_CHECKING:
    from models.checkpoint import ModelCard

NORMALIZATION_KINDS = ("none", "scale", "meanstd", "minmax", "window", "zscore", "percentile")
PER_SCENE_KINDS = ("zscore", "percentile")
"""Kinds whose parameters are statistics of the whole scene: resolved once per scene
(:func:`resolve_normalization`) into fixed ``meanstd`` /
``window`` values before any block runs, exactly as training resolved them on its volume."""


def normalization_spec(option: str, bands: int) -> dict[str, Any] | None:
    """The card's normalisation for a ``--normalization`` option (None: computed from the data)."""
    if option == "dataset":
        return None
    if option == "zscore":
        return {"kind": "zscore"}
    if option == "percentile":
        return {"kind": "percentile", "lower": 0.5, "upper": 99.5}
    if option.startswith("window:"):
        try:
            low, high = (float(v) for v in option.removeprefix("window:").split(","))
        except ValueError:
            low = high = float("nan")
        if low < high:
            return {"kind": "window", "low": [low] * bands, "high": [high] * bands}
    raise InputError(
        f"--normalization must be dataset, zscore, percentile or window:LOW,HIGH (LOW < HIGH), got {option!r}"
    )


def resolve_normalization(spec: Mapping[str, Any], read: Reader, shape: Sequence[int], slab: int) -> dict:
    """A per-scene spec (``zscore`` / ``percentile``) as fixed values for this scene; others unchanged."""
    kind = spec.get("kind", "none")
    if kind not in PER_SCENE_KINDS:
        return dict(spec)
    stats = scene_statistics(read, shape, slab, want_sample=kind == "percentile")
    if kind == "zscore":
        return {
            "kind": "meanstd",
            "mean": stats["mean"],
            "std": [max(s, 1e-6) for s in stats["std"]],
            "resolved_from": dict(spec),
        }
    lower, upper = float(spec.get("lower", 0.5)), float(spec.get("upper", 99.5))
    bounds = [np.percentile(band, [lower, upper]) for band in stats["sample"]]
    return {
        "kind": "window",
        "low": [float(lo) for lo, _ in bounds],
        "high": [float(hi) for _, hi in bounds],
        "resolved_from": dict(spec),
    }


def select_bands(bands: Sequence[int] | None, num_bands: int, in_channels: int, source: str) -> list[int]:
    """0-based band indices to feed the model, checked against the scene and the model."""
    if bands is None:
        if num_bands != in_channels:
            raise InputError(f"{source}: has {num_bands} band(s) but the model expects {in_channels}")
        return list(range(num_bands))
    chosen = [int(b) for b in bands]
    bad = [b for b in chosen if not 1 <= b <= num_bands]
    if bad:
        raise InputError(f"{source}: the model reads band(s) {bad} but the raster has {num_bands} band(s)")
    if len(chosen) != in_channels:
        raise InputError(
            f"{source}: the model card selects {len(chosen)} band(s) for {in_channels} input channels"
        )
    return [b - 1 for b in chosen]


def bands_by_name(wanted: Sequence[str], names: Sequence[str], source: str) -> list[int] | None:
    """0-based indices of the raster's bands named ``wanted`` (case aside), in ``wanted``'s order.

    None when the raster names none of them (its bands are then taken by position);
    naming some but not all is a mismatch, said in one line with both lists.

    >>> bands_by_name(["red", "nir"], ["blue", "nir", "red"], "s.tif")
    [2, 1]
    >>> bands_by_name(["red", "nir"], ["band_1", "band_2"], "s.tif") is None
    True
    """
    lookup: dict[str, int] = {}
    for i, name in enumerate(names):
        lookup.setdefault(str(name).strip().lower(), i)
    found = [lookup.get(str(w).strip().lower()) for w in wanted]
    if all(f is None for f in found):
        return None
    missing = [w for w, f in zip(wanted, found) if f is None]
    if missing:
        raise InputError(
            f"{source}: has bands {list(names)} but the model reads {list(wanted)} (missing {missing})"
        )
    return [int(f) for f in found if f is not None]


def model_bands(card: ModelCard, names: Sequence[str] | None, num_bands: int, source: str) -> list[int]:
    """0-based band indices to feed the model: by the card's band names where the raster names its
    bands, else by the card's indices (:func:`select_bands`)."""
    names = list(names or [])
    if card.band_names:
        by_name = bands_by_name(card.band_names, names, source)
        if by_name is not None:
            return by_name
        if card.bands is None and num_bands != card.in_channels:
            listed = f" {names}" if names else ""
            raise InputError(
                f"{source}: has {num_bands} band(s){listed} but the model reads {card.in_channels} "
                f"{list(card.band_names)}"
            )
    return select_bands(card.bands, num_bands, card.in_channels, source)


class Normalizer(Protocol):
    """A raw ``(B, *spatial)`` window → float32 model input, into ``out`` when given (same shape)."""

    def __call__(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...


def normalize(image: np.ndarray, spec: Mapping[str, Any], out: np.ndarray | None = None) -> np.ndarray:
    """``(B, *spatial)`` image → float32 model input according to ``spec``.

    With ``out`` (float32, the image's shape, any strides: a slot of a batch) the
    result is written there and returned, with the same bits as a fresh array's.

    >>> normalize(np.array([[0, 255]], np.uint8), {"kind": "scale", "scale": 1 / 255}).tolist()
    [[0.0, 1.0]]
    """
    kind = spec.get("kind", "none")
    if out is None:
        x = image.astype(np.float32, copy=True)
    else:
        x = out
        np.copyto(x, image, casting="unsafe")
    shape = (-1,) + (1,) * (image.ndim - 1)
    if kind == "none":
        return x
    if kind == "scale":
        x *= np.float32(spec.get("scale", 1.0))
        x += np.float32(spec.get("offset", 0.0))
        return x
    if kind == "meanstd":
        mean = np.asarray(spec["mean"], dtype=np.float32).reshape(shape)
        std = np.asarray(spec["std"], dtype=np.float32).reshape(shape)
        x -= mean
        x /= np.maximum(std, np.float32(1e-12))
        return x
    if kind == "minmax":
        lo = np.asarray(spec["min"], dtype=np.float32).reshape(shape)
        hi = np.asarray(spec["max"], dtype=np.float32).reshape(shape)
        x -= lo
        x /= np.maximum(hi - lo, np.float32(1e-12))
        return x
    if kind == "window":
        # CT windowing (HU) or a resolved percentile range: clip to [low, high], map to [0, 1]
        lo = np.asarray(spec["low"], dtype=np.float32).reshape(shape)
        hi = np.asarray(spec["high"], dtype=np.float32).reshape(shape)
        np.clip(x, lo, hi, out=x)
        x -= lo
        x /= np.maximum(hi - lo, np.float32(1e-12))
        return x
    if kind in PER_SCENE_KINDS:
        raise ValueError(f"{kind!r} normalisation needs the scene's statistics: resolve it before the blocks")
    raise ValueError(f"unknown normalisation {kind!r}; known: {', '.join(NORMALIZATION_KINDS)}")


def normalizer_for(spec: Mapping[str, Any] | None) -> Normalizer:
    """``spec`` as a function of a raw block (None: a float32 copy, unnormalised)."""
    return functools.partial(normalize, spec=spec if spec is not None else {"kind": "none"})
