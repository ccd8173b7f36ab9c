"""A STAC item as a scene: the assets that hold the model's bands, read in place as a band stack.

An item (a local ``.json`` or its URL) lists a scene's files as assets. The model
card's ``band_names`` pick them: an asset matches a band by its key, or by the
``name`` or ``common_name`` of its ``eo:bands`` (STAC 1.1: ``bands`` with
``eo:common_name``), so ``red`` finds Sentinel-2's ``B04``. The chosen assets
become a :class:`~pipeline.inputs.band_stack.BandStack` in the card's band order,
read where they are (relative hrefs from the item's own location, COGs on object
storage or the web through GDAL), coarser bands resampled to the finest grid.
The item's id and location go into the run's MLflow record and the output's STAC
item (a ``derived_from`` link).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.inputs.band_stack import BandStack, Scene
from pipeline.stores.location import ObjectLocation, Where, check_readable, location, storage_error

SUFFIXES = (".json",)


def is_stac_item(scene: Scene | str | os.PathLike[str]) -> bool:
    """Whether ``scene`` names a STAC item (a ``.json`` file or URL)."""
    if isinstance(scene, BandStack):
        return False
    return location(scene).suffix.lower() in SUFFIXES


@dataclass(frozen=True)
class StacScene:
    """A STAC item read as the stack of the bands a model reads."""

    item_id: str
    href: str
    """The item's own location: its ``self`` link, else where it was read."""
    stack: BandStack


def read_item(where: Where) -> Any:
    """The ``pystac.Item`` at ``where``, its hrefs made absolute; anything else is one line."""
    import pystac

    check_readable(where)
    try:
        text = where.read_text() if isinstance(where, ObjectLocation) else Path(where).read_text()
    except Exception as exc:
        raise storage_error(where, exc) from None
    try:
        data = json.loads(text)
        item = pystac.Item.from_dict(data, migrate=True)
    except (ValueError, KeyError, TypeError, pystac.STACError) as exc:
        raise InputError(f"{where}: not a STAC item ({type(exc).__name__}: {exc})") from None
    own = item.get_self_href()
    item.set_self_href(str(where if isinstance(where, ObjectLocation) else Path(where).resolve()))
    item.extra_fields["gigaseg:href"] = own or str(where)
    return item


def _asset_bands(key: str, asset: Any) -> Iterator[tuple[int, set[str]]]:
    """Each band of an asset (1-based) with the names it answers to."""
    fields = asset.extra_fields
    bands = fields.get("eo:bands") or fields.get("bands") or []
    if not bands:
        yield 1, {key.lower()}
        return
    for i, band in enumerate(bands, start=1):
        names = {str(band.get(k)).lower() for k in ("name", "common_name", "eo:common_name") if band.get(k)}
        yield i, names | ({key.lower()} if len(bands) == 1 else set())


def _band_index(item: Any) -> dict[str, tuple[str, int]]:
    """Band name → (asset key, 1-based band); the first asset that answers to a name keeps it."""
    found: dict[str, tuple[str, int]] = {}
    for key, asset in item.assets.items():
        if asset.roles and not {"data", "reflectance"} & set(asset.roles):
            continue  # thumbnails, metadata, overviews
        for band, names in _asset_bands(key, asset):
            for name in names:
                found.setdefault(name, (key, band))
    return found


def stac_scene(
    where: str | os.PathLike[str] | Where, band_names: Sequence[str] | None, model: str
) -> StacScene:
    """The stack of the item's assets holding ``band_names`` (the card's), in that order."""
    where = location(where)
    if not band_names:
        raise InputError(
            f"{where}: a STAC item's assets are picked by the model card's band names, and {model} "
            "names none (train with --band-names, or give the band files as a.tif,b.tif,…)"
        )
    item = read_item(where)
    index = _band_index(item)
    missing = [name for name in band_names if name.lower() not in index]
    if missing:
        available = sorted({k for k, _ in index.values()})
        raise InputError(
            f"{where}: STAC item {item.id} has no asset for band(s) {missing} of the model's "
            f"{list(band_names)} (its assets: {available})"
        )
    chosen = [index[name.lower()] for name in band_names]
    members = tuple(_asset_location(where, key, item.assets[key]) for key, _ in chosen)
    stack = BandStack(members, tuple(band for _, band in chosen), tuple(band_names))
    return StacScene(item.id, item.extra_fields["gigaseg:href"], stack)


def _asset_location(item_where: Where, key: str, asset: Any) -> Where:
    """Where an asset is (relative hrefs from the item's location); one that cannot be read is
    said naming the item, the asset and its href as written."""
    where = location(asset.get_absolute_href())
    try:
        check_readable(where)
    except InputError as exc:
        reason = str(exc).removeprefix(f"{where}: ")
        raise InputError(f"{item_where}: asset {key} ({asset.href}): {reason}") from None
    return where


def scene_for_model(scene: Scene, band_names: Sequence[str] | None, model: str) -> Scene:
    """What to read for ``scene`` with a model naming ``band_names``: a STAC item's stack, else itself."""
    return stac_scene(scene, band_names, model).stack if is_stac_item(scene) else scene


def stac_source(scene: Scene) -> tuple[str, str] | None:
    """The id and location of ``scene``'s STAC item (None for other scenes)."""
    if not is_stac_item(scene):
        return None
    item = read_item(location(scene))  # type: ignore[arg-type]
    return item.id, item.extra_fields["gigaseg:href"]
