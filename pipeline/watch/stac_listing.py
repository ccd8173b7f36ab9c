"""A STAC catalog or a saved search result as the thing a watch scans.

``gigaseg watch catalog.json`` walks a static STAC catalog (or collection) with
pystac, following its child and item links wherever they point (local files,
object storage through fsspec, the web); ``gigaseg watch results.json`` takes a
saved API search (an ItemCollection: the GeoJSON FeatureCollection that
``stac-client search --save`` or any STAC API's ``/search`` returns), whose items are
written inline. Each item is one scene, segmented as a STAC item input (its assets
picked by the model card's band names, read in place).

An item's identity is its own JSON (canonical form) together with the size and
change marker (ETag, checksum or mtime) of every asset it lists, so a re-published
item or a replaced asset is new, and an unchanged catalog is not redone.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from pipeline.errors import InputError
from pipeline.stores.location import ObjectLocation, location, storage_error

LISTING_SUFFIXES = (".json", ".geojson")
"""A watched location ending so is a STAC catalog, collection or item collection, not a folder."""


def is_stac_listing(url: str) -> bool:
    """Whether a watched location names a STAC listing (a JSON file) rather than a folder.

    >>> is_stac_listing("s3://bucket/catalog.json"), is_stac_listing("/data/scenes")
    (True, False)
    """
    return posixpath.splitext(url.rstrip("/"))[1].lower() in LISTING_SUFFIXES


def _read_text(href: str) -> str:
    where = location(href)
    try:
        return where.read_text() if isinstance(where, ObjectLocation) else Path(where).read_text()
    except FileNotFoundError:
        raise InputError(f"{href}: no such STAC file") from None
    except Exception as exc:
        raise storage_error(where, exc) from None


def _stac_io() -> Any:
    """A pystac reader that opens hrefs the way gigaseg opens every location."""
    import pystac

    class LocationStacIO(pystac.StacIO):
        def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
            return _read_text(str(pystac.utils.make_posix_style(source)))

        def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError("a watched STAC catalog is read, never written")

    return LocationStacIO()


def read_listing(url: str) -> dict[str, Any]:
    text = _read_text(url)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{url}: not JSON ({exc})") from None
    if not isinstance(data, dict) or (data.get("type") not in ("Catalog", "Collection", "FeatureCollection")):
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise InputError(
            f"{url}: a watched JSON file must be a STAC catalog, collection or item collection "
            f"(this one is {kind!r})"
        )
    return data


def _absolute(url: str) -> str:
    where = location(url)
    return str(where if isinstance(where, ObjectLocation) else Path(where).resolve())


def stac_items(url: str) -> Iterator[tuple[Any, str | None]]:
    """Each item of the catalog, collection or item collection at ``url``, with its own file
    (None for an item written inline in an item collection). Asset hrefs are absolute."""
    import pystac

    data = read_listing(url)
    try:
        if data["type"] == "FeatureCollection":
            items = pystac.ItemCollection.from_dict(data, preserve_dict=False)
            root = posixpath.dirname(_absolute(url))
            for item in items:
                for asset in item.assets.values():
                    if not pystac.utils.is_absolute_href(asset.href):
                        asset.href = posixpath.normpath(posixpath.join(root, asset.href))
                yield item, None
            return
        catalog = pystac.Catalog.from_file(_absolute(url), stac_io=_stac_io())
        for item in catalog.get_items(recursive=True):
            item.make_asset_hrefs_absolute()
            yield item, item.get_self_href()
    except (pystac.STACError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{url}: not a readable STAC catalog ({type(exc).__name__}: {exc})") from None


def _asset_marker(href: str) -> str:
    """Size and change marker of one asset, from a listing (no download); ``?`` if it cannot be seen."""
    try:
        fs, path = fsspec.core.url_to_fs(href)
        info = fs.info(path)
    except Exception:
        return "?"
    for key in ("ETag", "etag", "md5Hash", "checksum", "mtime", "LastModified", "last_modified"):
        if info.get(key) is not None:
            return f"{info.get('size')}:{key}={info[key]}"
    return str(info.get("size"))


def item_identity(item: Any) -> str:
    """The content identity of an item: its JSON and the marker of each asset it lists."""
    digest = hashlib.blake2b(digest_size=16)
    as_dict = item.to_dict(include_self_link=False, transform_hrefs=False)
    digest.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
    for key in sorted(item.assets):
        digest.update(f"\0{key}\0{_asset_marker(item.assets[key].get_absolute_href() or '')}".encode())
    return digest.hexdigest()


def relative_name(item: Any, own_file: str | None, listing_url: str) -> str:
    """The item's name in the output folder: its file relative to the listing's folder, else its id."""
    if own_file is not None:
        root = posixpath.dirname(_absolute(listing_url))
        rel = posixpath.relpath(str(own_file), root)
        if not rel.startswith(".."):
            return rel
    return f"{item.id}.json"


def item_text(item: Any) -> str:
    """An inline item as the JSON a scene reads (asset hrefs absolute, no self link)."""
    return json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False))
