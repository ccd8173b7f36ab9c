"""Finding the scenes of a watched location, and which of them still need segmenting.

A location is a folder or any fsspec URL (``s3://bucket/scenes`` when the matching
filesystem package is installed), or a STAC catalog, collection or saved search
result (a ``.json`` file or URL: :mod:`pipeline.watch.stac_listing`) whose items are
the scenes. Each file found is identified by its content, so
renames are not reprocessed and edits are; the ledger spares rehashing a file whose
size and change marker are as last seen. A remote raster is segmented in place (GDAL
reads it from its URL); a remote volume, whose readers need files, is copied to a local
scratch folder only while it is being segmented.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec

from pipeline.inputs.formats import read_in_place
from pipeline.inputs.ingest import content_id
from pipeline.stores.location import ObjectLocation, Where, location
from pipeline.watch.ledger import Ledger
from pipeline.watch.stac_listing import is_stac_listing, item_identity, item_text, relative_name, stac_items

DOWNLOADS = ".gigaseg-downloads"
"""Scratch folder (in a local output folder) for local copies of remote volumes."""


@dataclass(frozen=True)
class Scene:
    """A file found by a scan, with the identity of its content."""

    url: str
    """Where it is (a local path, or a URL of the scanned filesystem)."""
    relative: str
    """Its path relative to the scanned location (names its output)."""
    content_id: str
    local: bool
    item_json: str | None = None
    """A STAC item written inline in a saved search result (read from a private copy)."""

    def output_in(self, folder: Where) -> Where:
        """Where this scene's labels go in ``folder``."""
        return folder / output_name(self.relative, self.content_id)


def output_name(relative_source: str, content_id: str, suffix: str = ".tif") -> str:
    """Deterministic, collision-free output file name for a scene.

    The readable part is the scene's relative path; the key hashes that path with
    the content id, so scenes of the same name in different folders stay apart and
    a changed scene's new result never overwrites the old one.

    >>> output_name("2024/june/scene.tif", "abc")
    '2024__june__scene.c1dd410f2f126708.labels.tif'
    """
    relative = PurePosixPath(relative_source.replace(os.sep, "/")).as_posix()
    path = PurePosixPath(relative)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", "__".join([*path.parent.parts, path.stem]))
    key = hashlib.blake2b(f"{relative}\0{content_id}".encode(), digest_size=8).hexdigest()
    return f"{stem}.{key}.labels{suffix}"


def _fingerprint(info: dict[str, Any]) -> tuple[int, str]:
    """Size and a change marker (mtime, or the store's ETag / checksum) from a listing."""
    for key in ("ETag", "etag", "md5Hash", "checksum", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return int(info.get("size") or 0), f"{key}={info[key]}"
    return int(info.get("size") or 0), ""


def _candidates(
    fs: fsspec.AbstractFileSystem, root: str, pattern: str, min_age: float, exclude: str | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, listing) of the files under ``root`` matching ``pattern`` that a scan should look at."""
    now = time.time()
    for path in sorted(fs.glob(posixpath.join(root, pattern))):
        info = fs.info(path)
        if info.get("type") != "file" or path.endswith(".labels.tif"):
            continue
        if exclude and posixpath.commonpath([path, exclude]) == exclude:
            continue
        mtime = info.get("mtime")
        if min_age and isinstance(mtime, (int, float)) and now - mtime < min_age:
            continue  # maybe still being copied in: next scan
        yield path, info


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in fs.protocol if isinstance(fs.protocol, tuple) else fs.protocol == "file"


def _identify(
    fs: fsspec.AbstractFileSystem, path: str, source: str, info: dict[str, Any], ledger: Ledger
) -> str:
    """The content id of a file: the ledger's when unchanged, else its hash (local) or the store's digest."""
    size, marker = _fingerprint(info)
    cid = ledger.known_content_id(source, size, marker) if marker else None
    if cid is not None:
        return cid
    if _is_local(fs):
        cid = content_id(path)
    else:
        digest = fs.checksum(path) if marker == "" else marker
        cid = f"{digest}:{size}"
    if marker:
        ledger.remember(source, size, marker, cid)
    return cid


def _same_filesystem_path(fs: fsspec.AbstractFileSystem, where: str | None) -> str | None:
    """``where`` (a path or URL) as a path of ``fs``, or None when it lies elsewhere."""
    if where is None:
        return None
    other, path = fsspec.core.url_to_fs(where)
    return path.rstrip("/") if other.protocol == fs.protocol else None


def scan(
    url: str, pattern: str, ledger: Ledger, min_age: float = 0.0, exclude: str | None = None
) -> list[Scene]:
    """Files under ``url`` matching ``pattern``, each with its content id (hashed only when it changed).

    ``exclude``: a folder (path or URL) whose files are never scenes (the output folder).
    """
    if is_stac_listing(url):
        return _scan_listing(url)
    fs, root = fsspec.core.url_to_fs(url)
    local = _is_local(fs)
    root = root.rstrip("/")
    exclude = _same_filesystem_path(fs, exclude)
    found = []
    for path, info in _candidates(fs, root, pattern, min_age, exclude):
        source = path if local else fs.unstrip_protocol(path)
        cid = _identify(fs, path, source, info, ledger)
        found.append(Scene(source, posixpath.relpath(path, root), cid, local))
    return found


def _scan_listing(url: str) -> list[Scene]:
    """The items of a STAC listing as scenes (each identified by its JSON and its assets' markers)."""
    found = []
    for item, own_file in stac_items(url):
        cid = item_identity(item)
        relative = relative_name(item, own_file, url)
        if own_file is None:
            found.append(Scene(f"{url}#{item.id}", relative, cid, True, item_text(item)))
        else:
            found.append(Scene(own_file, relative, cid, isinstance(location(own_file), Path)))
    return found


def new_or_changed(scenes: list[Scene], ledger: Ledger, settings_id: str) -> list[Scene]:
    """The scenes not yet segmented, nor failed, with this content and these settings.

    An interrupted one is redone. ``settings_id``: :func:`pipeline.watch.settings.settings_id`
    of the watch's model and options.
    """
    return [s for s in scenes if ledger.needs_processing(s.url, s.content_id, settings_id)]


@contextmanager
def scene_input(
    scene: Scene, scratch: Path | None = None, spacing: object = None
) -> Iterator[Path | ObjectLocation]:
    """What the segment step reads for ``scene`` while it is segmented.

    A local file is itself and a remote raster its URL (read in place). A remote
    volume is copied into ``scratch`` (a private temporary folder when None, as for
    an output folder on object storage) and removed afterwards.
    """
    if scene.item_json is not None:
        with tempfile.TemporaryDirectory(prefix="gigaseg-item-") as folder:
            copy = Path(folder) / PurePosixPath(scene.relative).name
            copy.write_text(scene.item_json)
            yield copy
        return
    if scene.local:
        yield Path(scene.url)
        return
    where = location(scene.url)
    if read_in_place(where, spacing):
        yield where
        return
    own = scratch is None
    folder = Path(tempfile.mkdtemp(prefix="gigaseg-watch-")) if own else scratch
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{re.sub(r'[^A-Za-z0-9]', '', scene.content_id)[:16]}{''.join(where.suffixes)}"
    fs, path = fsspec.core.url_to_fs(scene.url)
    try:
        fs.get(path, str(target))
        yield target
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
