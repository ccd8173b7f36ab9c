"""The object store's settings, said to every part that reaches it: GDAL, and the workers a run starts.

Credentials and endpoints come from the standard environment (``AWS_*`` variables,
profiles, ``AWS_ENDPOINT_URL`` for S3-compatible stores). GDAL reads its own names
for some of them; :func:`gdal_path` hands rasterio GDAL's ``/vsis3/``-style paths
after putting those names in the environment.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import rasterio

from pipeline.stores.location import ObjectLocation, Where, location

_configured: dict[str, str] = {}
"""The GDAL settings this process put in its environment (a later endpoint may replace them)."""


def gdal_object_storage_options() -> dict[str, str]:
    """GDAL's settings for the endpoint the standard ``AWS_ENDPOINT_URL`` names.

    GDAL reads ``AWS_S3_ENDPOINT`` (host and port, no scheme), ``AWS_HTTPS`` and
    ``AWS_VIRTUAL_HOSTING``, not boto's ``AWS_ENDPOINT_URL``; a setting the user
    made for GDAL is kept. Empty without a custom endpoint (AWS itself).

    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}):
    ...     sorted(gdal_object_storage_options().items())
    [('AWS_HTTPS', 'NO'), ('AWS_S3_ENDPOINT', '127.0.0.1:9000'), ('AWS_VIRTUAL_HOSTING', 'FALSE')]
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    users_own = os.environ.get("AWS_S3_ENDPOINT") not in (None, _configured.get("AWS_S3_ENDPOINT"))
    if not endpoint or users_own:
        return {}
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    return {
        "AWS_S3_ENDPOINT": parts.netloc,
        "AWS_HTTPS": "NO" if parts.scheme == "http" else "YES",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }


def configure_gdal_for_object_storage() -> None:
    """Put :func:`gdal_object_storage_options` in the environment, where GDAL reads its settings.

    Called by every reader and exporter that hands GDAL a URL, in whichever process
    (a Ray worker included) does it; a setting already present is left alone.
    """
    for key, value in gdal_object_storage_options().items():
        if os.environ.get(key) in (None, _configured.get(key)):
            os.environ[key] = _configured[key] = value


OBJECT_STORAGE_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_NO_SIGN_REQUEST",
    "AWS_S3_ENDPOINT",
    "AWS_HTTPS",
    "AWS_VIRTUAL_HOSTING",
)
"""What says where the object store is and who we are, as this process sees it."""


def object_storage_environment() -> dict[str, str]:
    """This process's object-storage settings, for the workers it starts (so they reach the same store).

    Only what is set is passed; on a cluster whose nodes have their own roles or
    profiles, leave the credentials unset here and the nodes use theirs.
    """
    return {k: os.environ[k] for k in OBJECT_STORAGE_VARIABLES if os.environ.get(k)}


_GDAL_PREFIXES = {"s3": "/vsis3/", "gs": "/vsigs/", "gcs": "/vsigs/", "az": "/vsiaz/", "abfs": "/vsiaz/"}


def gdal_path(where: Where) -> str:
    """What to hand rasterio for ``where``: GDAL's own ``/vsis3/``-style path for a URL.

    GDAL then reads the credentials and endpoint from the environment itself;
    rasterio's ``s3://`` handling would build a boto3 session per open, which
    stalls when several threads open the same object at once.

    >>> gdal_path(ObjectLocation("s3://bucket/scenes/a.tif")), gdal_path(ObjectLocation("https://host/a.tif"))
    ('/vsis3/bucket/scenes/a.tif', '/vsicurl/https://host/a.tif')
    """
    if not isinstance(where, ObjectLocation):
        return str(where)
    configure_gdal_for_object_storage()
    if where.protocol in _GDAL_PREFIXES:
        return _GDAL_PREFIXES[where.protocol] + where.url.split("://", 1)[1]
    if where.protocol in ("http", "https"):
        return f"/vsicurl/{where.url}"
    return where.url


def from_gdal_path(name: str) -> Where:
    """The location a GDAL path names: the inverse of :func:`gdal_path` (``/vsis3/b/k`` → ``s3://b/k``).

    >>> from_gdal_path("/vsis3/bucket/a.tif"), from_gdal_path("/vsicurl/https://host/a.tif")
    (ObjectLocation('s3://bucket/a.tif'), ObjectLocation('https://host/a.tif'))
    """
    if name.startswith("/vsicurl/"):
        return location(name[len("/vsicurl/") :])
    for protocol, prefix in _GDAL_PREFIXES.items():
        if name.startswith(prefix):
            return ObjectLocation(f"{protocol}://{name[len(prefix) :]}")  # gs before gcs, az before abfs
    return location(name)


def open_raster(where: Where, mode: str = "r", **kwargs: Any) -> rasterio.DatasetReader:
    """``rasterio.open`` for a location: a URL through its ``/vsi*`` path, opened without listing its folder.

    A cloud raster is self-contained (a COG): GDAL's look for sidecar files at open
    lists the object's whole prefix, a request per open that only costs time, and
    against some S3-compatible servers (moto) never returned. Local files are opened
    as always, sidecars (``.msk``, ``.aux.xml``, ``.ovr``) included.
    """
    path = gdal_path(where)
    if not isinstance(where, ObjectLocation):
        return rasterio.open(path, mode, **kwargs)
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        return rasterio.open(path, mode, **kwargs)
