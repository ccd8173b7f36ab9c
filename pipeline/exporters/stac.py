"""A STAC item beside each segmentation, and a catalog of the scenes a watch processed.

The item (``STEM.stac.json`` beside the labels) lists the outputs as assets with
the ``file`` extension (size and a SHA2-256 multihash checksum), the labels'
``raster`` band and ``classification`` classes (name and colour per class id,
nodata marked), the grid in the ``proj`` extension, and links to the source
scene (``derived_from``: the file, each file of a band stack, or the STAC item
read) and the model (``via``, e.g. ``models:/NAME/VERSION``).
Asset hrefs beside the item are relative, so the folder can move.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pystac
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

from pipeline.stores.location import Where
from pipeline.stores.transfer import local_staging, write_text_atomically

MEDIA_TYPES = {
    ".tif": pystac.MediaType.COG,
    ".gpkg": pystac.MediaType.GEOPACKAGE,
    ".fgb": pystac.MediaType.FLATGEOBUF,
    ".parquet": pystac.MediaType.PARQUET,
    ".qml": "application/xml",
}


def item_name(labels: str) -> str:
    """The item's file name for a labels output name: ``classes.tif`` → ``classes.stac.json``."""
    return Path(labels).stem + ".stac.json"


def multihash_sha256(path: Path) -> str:
    """The file's SHA2-256 as a multihash in hex (``1220`` + digest), as the ``file`` extension wants."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "1220" + digest.hexdigest()


@dataclass(frozen=True)
class OutputFile:
    """An output as the item lists it: asset key, the local file (for size and checksum), its href, roles."""

    key: str
    local: Path
    href: str
    roles: tuple[str, ...] = ("data",)


@dataclass(frozen=True)
class Product:
    """What the item describes: the run's source, model, grid and classes."""

    item_id: str
    source: str | Sequence[str]
    """The source scene's location, or its files (a band stack), or its STAC item's."""
    model: str
    crs_wkt: str | None
    transform: Sequence[float]
    shape: tuple[int, int]
    class_names: Sequence[str]
    colors: Sequence[Sequence[int]]
    nodata: int
    label_dtype: str = "uint8"
    properties: dict = field(default_factory=dict)
    source_item: str | None = None
    """The id of the STAC item the source was read from (``source`` is then its location)."""


def _footprint(product: Product) -> tuple[dict | None, list[float] | None]:
    """The footprint in WGS84 (GeoJSON polygon and bbox), or none without a CRS.

    The scene's edge is reprojected; where part of it has no place on the globe (a
    geostationary disk's corners), the points of a grid over the scene that do make
    the bbox, and the footprint is that box.
    """
    if not product.crs_wkt:
        return None, None
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.warp import transform, transform_geom

    t = Affine(*product.transform[:6])
    rows, cols = product.shape
    crs = CRS.from_wkt(product.crs_wkt)
    corners = [t @ (0, 0), t @ (cols, 0), t @ (cols, rows), t @ (0, rows), t @ (0, 0)]
    native = {"type": "Polygon", "coordinates": [[list(c) for c in corners]]}
    try:
        geometry = dict(transform_geom(crs, "EPSG:4326", native))
    except Exception:  # GDAL: a corner outside the projection's domain
        geometry = None
    if geometry is not None:
        xs = [p[0] for p in geometry["coordinates"][0]]
        ys = [p[1] for p in geometry["coordinates"][0]]
        return geometry, [min(xs), min(ys), max(xs), max(ys)]
    lons, lats = [], []
    for r in np.linspace(0, rows, 33):
        for c in np.linspace(0, cols, 33):
            x, y = t @ (c, r)
            try:
                (lon,), (lat,) = transform(crs, "EPSG:4326", [x], [y])
            except Exception:
                continue
            if math.isfinite(lon) and math.isfinite(lat):
                lons.append(lon)
                lats.append(lat)
    if not lons:
        return None, None
    box = [min(lons), min(lats), max(lons), max(lats)]
    ring = [[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]], [box[0], box[1]]]
    return {"type": "Polygon", "coordinates": [ring]}, box


def _classes(product: Product) -> list[Classification]:
    classes = [
        Classification.create(
            value=i,
            description=name,
            name=re.sub(r"[^0-9A-Za-z_-]+", "_", name) or f"class_{i}",
            title=name,
            color_hint="{:02X}{:02X}{:02X}".format(*rgb[:3]),
        )
        for i, (name, rgb) in enumerate(zip(product.class_names, product.colors))
    ]
    return [
        *classes,
        Classification.create(value=product.nodata, description="nodata", name="nodata", nodata=True),
    ]


def _add_projection(item: pystac.Item, product: Product) -> None:
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    code = None
    if product.crs_wkt:
        from rasterio.crs import CRS

        epsg = CRS.from_wkt(product.crs_wkt).to_epsg()
        code = f"EPSG:{epsg}" if epsg else None
    proj.apply(
        code=code,
        wkt2=product.crs_wkt if code is None else None,
        shape=list(product.shape),
        transform=[float(v) for v in product.transform[:6]],
    )


def stac_item(product: Product, outputs: Sequence[OutputFile]) -> pystac.Item:
    """The item for one segmentation: assets with file info, the labels' band and classes, grid, links."""
    geometry, bbox = _footprint(product)
    now = dt.datetime.now(dt.UTC)
    item = pystac.Item(
        product.item_id, geometry, bbox, now, {"gigaseg:model": product.model, **product.properties}
    )
    _add_projection(item, product)
    for out in outputs:
        asset = pystac.Asset(
            out.href, media_type=MEDIA_TYPES.get(out.local.suffix.lower()), roles=list(out.roles)
        )
        item.add_asset(out.key, asset)
        FileExtension.ext(asset, add_if_missing=True).apply(
            checksum=multihash_sha256(out.local), size=out.local.stat().st_size
        )
        if out.key == "labels":
            band = RasterBand.create(
                nodata=product.nodata,
                data_type=DataType(product.label_dtype),
                spatial_resolution=abs(product.transform[0]),
            )
            RasterExtension.ext(asset, add_if_missing=True).apply([band])
            ClassificationExtension.ext(asset, add_if_missing=True).apply(classes=_classes(product))
    sources = [product.source] if isinstance(product.source, str) else list(product.source)
    for source in sources:
        if product.source_item is not None:
            title = f"source STAC item {product.source_item}"
            link = pystac.Link("derived_from", source, pystac.MediaType.GEOJSON, title)
        else:
            link = pystac.Link("derived_from", source, title="source scene")
        item.add_link(link)
    item.add_link(pystac.Link("via", product.model, title="model"))
    return item


def item_json(item: pystac.Item) -> str:
    """The item as JSON text (hrefs left as given)."""
    return json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2) + "\n"


def catalog_with(existing: str | None, item_href: str, item_id: str, catalog_id: str) -> str:
    """A catalog (JSON) of the processed scenes: ``existing`` with a link to one more item (replacing
    a link to the same href)."""
    if existing:
        catalog = pystac.Catalog.from_dict(json.loads(existing))
        catalog.links = [
            link for link in catalog.links if not (link.rel == "item" and link.href == item_href)
        ]
    else:
        catalog = pystac.Catalog(catalog_id, "Scenes segmented by gigaseg")
    catalog.add_link(pystac.Link("item", item_href, media_type=pystac.MediaType.JSON, title=item_id))
    return json.dumps(catalog.to_dict(include_self_link=False, transform_hrefs=False), indent=2) + "\n"


def relative_href(target: object, folder: object) -> str:
    """``./NAME`` for a file directly in ``folder``, else its full path or URL."""
    target_parent = getattr(target, "parent", None)
    if str(target_parent) == str(folder):
        return "./" + target.name  # type: ignore[attr-defined]
    return str(target)


def add_to_catalog(folder: Where, labels: Sequence[Where]) -> Where | None:
    """Link the items of the labels outputs ``labels`` (those that have one) from ``folder/catalog.json``.

    The catalog is read, extended and written whole (a rename here, one upload on object storage).
    """
    catalog = folder / "catalog.json"
    text = catalog.read_text() if catalog.exists() else None
    added = False
    for out in labels:
        item = out.with_name(item_name(out.name))
        if not item.exists():
            continue
        href = str(item)[len(str(folder)) :].lstrip("/") if str(item).startswith(str(folder)) else str(item)
        text = catalog_with(text, "./" + href if "://" not in href else href, Path(out.name).stem, "gigaseg")
        added = True
    if not added:
        return None
    with local_staging(catalog) as (local,):
        write_text_atomically(local, text or "")
    return catalog
