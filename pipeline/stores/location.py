"""Where inputs, outputs and work folders are: a local path or an object-store URL.

Local paths stay :class:`pathlib.Path`, so everything local behaves as it always
did. A URL (``s3://bucket/key``, ``gs://…``, ``az://…``, ``https://…``) becomes an
:class:`ObjectLocation`: the part of ``Path``'s interface the pipeline uses,
served by fsspec, so code that joins, names, checks and removes locations does not
care which kind it holds (DESIGN.md, invariant 9). Credentials and endpoints come
from the standard environment (``AWS_*`` variables, profiles, ``AWS_ENDPOINT_URL``
for S3-compatible stores); :mod:`pipeline.stores.object_storage_settings` says the same
to GDAL and to workers.

What differs on object storage is said where it matters: there is no rename, so a
finished file is made locally and uploaded whole (:mod:`pipeline.stores.transfer`),
and a store that is written in place says it is complete with an attribute written last.

>>> location("/data/scene.tif")
PosixPath('/data/scene.tif')
>>> out = location("s3://bucket/results/scene.tif")
>>> out.parent / "other.tif", out.name, out.suffix
(ObjectLocation('s3://bucket/results/other.tif'), 'scene.tif', '.tif')
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import fsspec

from pipeline.errors import InputError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(where: object) -> bool:
    """Whether ``where`` names an object-store or web location (``file://`` counts as local)."""
    return isinstance(where, ObjectLocation) or (
        isinstance(where, str) and bool(_URL.match(where)) and not where.startswith("file://")
    )


class ObjectLocation:
    """A file or folder on object storage (or the web), with ``Path``'s everyday interface.

    Folders on object storage are key prefixes: they exist once something is in
    them, and making one is a no-op.
    """

    def __init__(self, url: str):
        url = str(url)
        if not _URL.match(url):
            raise ValueError(f"{url}: not a URL")
        scheme, rest = url.split("://", 1)
        self.url = f"{scheme.lower()}://{rest.rstrip('/')}"
        self.protocol = scheme.lower()

    def __reduce__(self) -> tuple[Any, ...]:
        return (ObjectLocation, (self.url,))

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"ObjectLocation({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectLocation) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __truediv__(self, name: str | os.PathLike[str]) -> ObjectLocation:
        return ObjectLocation(f"{self.url}/{os.fspath(name).strip('/')}")

    @property
    def _key(self) -> str:
        return self.url.split("://", 1)[1]

    @property
    def name(self) -> str:
        """The last part of the key."""
        return posixpath.basename(self._key)

    @property
    def suffix(self) -> str:
        """The name's extension (``.tif``)."""
        return PurePosixPath(self.name).suffix

    @property
    def suffixes(self) -> list[str]:
        """Every extension of the name (``['.nii', '.gz']``)."""
        return PurePosixPath(self.name).suffixes

    @property
    def stem(self) -> str:
        """The name without its last extension."""
        return PurePosixPath(self.name).stem

    @property
    def parent(self) -> ObjectLocation:
        """The enclosing prefix (the bucket's root stays the bucket's root)."""
        head = posixpath.dirname(self._key)
        return ObjectLocation(f"{self.protocol}://{head or self._key}")

    @property
    def bucket(self) -> str:
        """The bucket (or host) part of the URL."""
        return urlsplit(self.url).netloc

    def with_name(self, name: str) -> ObjectLocation:
        """The same folder, another name."""
        return self.parent / name

    def resolve(self) -> ObjectLocation:
        """URLs are absolute already."""
        return self

    absolute = resolve

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem of this protocol (directory listings never cached: others write too)."""
        return _filesystem(self.protocol)

    def exists(self) -> bool:
        """Whether an object or a non-empty prefix is here."""
        return bool(self.fs.exists(self.url))

    def is_dir(self) -> bool:
        """Whether this is a prefix with objects under it (the bucket root counts)."""
        return bool(self.fs.isdir(self.url))

    def is_file(self) -> bool:
        """Whether an object has exactly this key."""
        return bool(self.fs.isfile(self.url))

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Nothing to make: a prefix exists once an object is written under it."""

    def open(self, mode: str = "rb", **kwargs: Any) -> Any:
        """A file object on the store (written whole when closed)."""
        return self.fs.open(self.url, mode, **kwargs)

    def read_bytes(self) -> bytes:
        """The object's bytes."""
        return bytes(self.fs.cat_file(self.url))

    def read_text(self, encoding: str = "utf-8") -> str:
        """The object's text."""
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        """Put the object (whole: it appears complete or not at all)."""
        self.fs.pipe_file(self.url, data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        """Put the object's text."""
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        """Delete the object."""
        try:
            self.fs.rm_file(self.url)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def glob(self, pattern: str) -> list[ObjectLocation]:
        """Objects under this prefix whose relative key matches ``pattern``."""
        found = self.fs.glob(f"{self.url}/{pattern.lstrip('/')}")
        return sorted(ObjectLocation(f"{self.protocol}://{key}") for key in found)

    def __lt__(self, other: ObjectLocation) -> bool:
        return self.url < other.url


Where = Path | ObjectLocation
"""A location of either kind."""


def location(where: str | os.PathLike[str] | ObjectLocation) -> Where:
    """A :class:`Path` for a local path (or ``file://`` URL), an :class:`ObjectLocation` for a URL."""
    if isinstance(where, ObjectLocation | Path):
        return where
    text = os.fspath(where)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    return ObjectLocation(text) if _URL.match(text) else Path(text)


_filesystems: dict[str, fsspec.AbstractFileSystem] = {}


def _filesystem(protocol: str) -> fsspec.AbstractFileSystem:
    if protocol not in _filesystems:
        try:
            options = {"use_listings_cache": False} if protocol not in ("http", "https") else {}
            _filesystems[protocol] = fsspec.filesystem(protocol, **options)
        except (ImportError, ValueError) as exc:
            raise InputError(f"{protocol}:// locations need a filesystem package: {exc}") from None
    return _filesystems[protocol]


def remove_tree(where: Where) -> None:
    """Remove a folder (or prefix) and everything in it; a missing one is fine."""
    if isinstance(where, ObjectLocation):
        # One listing and one bulk delete; fsspec's recursive rm of a prefix with nothing
        # under it (a fresh work folder) costs five requests, each a round trip.
        with contextlib.suppress(FileNotFoundError):
            keys = where.fs.find(where.url)
            if keys:
                where.fs.rm(keys)
    else:
        shutil.rmtree(where, ignore_errors=True)


def storage_error(where: Where, exc: BaseException) -> InputError:
    """One line naming the location and what is wrong with reaching it."""
    text = f"{type(exc).__name__} {exc}".lower()
    if "nocredentials" in text or "unable to locate credentials" in text:
        reason = "no credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
    elif "bucket" in text and ("not exist" in text or "nosuchbucket" in text):
        reason = f"bucket {getattr(where, 'bucket', '')!r} does not exist"
    elif isinstance(exc, PermissionError) or "accessdenied" in text or "forbidden" in text:
        reason = "access denied (check the credentials and the bucket's policy)"
    elif isinstance(exc, FileNotFoundError):
        reason = "no such file"
    elif "connect" in text or "endpoint" in text:
        reason = f"cannot reach the object store ({_first_line(exc)})"
    else:
        reason = _first_line(exc)
    return InputError(f"{where}: {reason}")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def check_readable(where: Where, what: str = "file") -> None:
    """Fail with one line when ``where`` cannot be read (missing, no bucket, denied, no credentials)."""
    if not isinstance(where, ObjectLocation):
        if not where.exists():
            raise InputError(f"{where}: no such {what}")
        return
    try:
        found = where.exists()
    except Exception as exc:
        raise storage_error(where, exc) from None
    if not found:
        if where.protocol in ("http", "https"):
            raise InputError(f"{where}: no such {what} (or the server refused it)")
        _check_bucket(where)
        raise InputError(f"{where}: no such {what}")


def _check_bucket(where: ObjectLocation) -> None:
    try:
        where.fs.ls(f"{where.protocol}://{where.bucket}", detail=False)
    except Exception as exc:
        raise storage_error(where, exc) from None


def check_writable_folder(folder: Where) -> None:
    """Fail with one line unless files can be written in ``folder`` (writes and removes a probe)."""
    if not isinstance(folder, ObjectLocation):
        if not folder.is_dir():
            raise InputError(f"{folder}: folder does not exist")
        _probe_local(folder)
        return
    if folder.protocol in ("http", "https"):
        raise InputError(f"{folder}: web locations are read-only; write to object storage or a local path")
    probe = folder / f".gigaseg-probe-{uuid.uuid4().hex[:12]}"
    try:
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)
    except Exception as exc:
        raise storage_error(folder, exc) from None


def _write_refusal(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (None: they can), by making and removing a probe."""
    probe = folder / f".gigaseg-probe-{uuid.uuid4().hex[:12]}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        return (exc.strerror or type(exc).__name__).lower()
    return None


def _probe_local(folder: Path) -> None:
    """Fail with one line unless files can be written in the local ``folder``."""
    reason = _write_refusal(folder)
    if reason is not None:
        raise InputError(f"{folder}: cannot write there ({reason})")


def check_work_folder(work: Where) -> None:
    """Fail with one line unless the work folder exists and is writable, or can be made.

    A folder that does not exist yet is checked through the nearest folder above it
    that does (that is where it will be made).
    """
    if isinstance(work, ObjectLocation):
        check_writable_folder(work.parent)
        return
    if work.exists() and not work.is_dir():
        raise InputError(f"{work}: work folder is a file")
    existing = work
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    reason = _write_refusal(existing) if existing.is_dir() else f"{existing} is a file"
    if reason is not None:
        raise InputError(f"{work}: the work folder cannot be written ({existing}: {reason})")
