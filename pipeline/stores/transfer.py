"""Moving finished files between this machine and object storage, whole.

Object storage has no rename: an output is made in a private local folder and
uploaded when finished (:func:`local_staging`, :func:`publish`), so the object
appears only when complete; an input whose reader needs files is copied here first
(:func:`local_copy`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.stores.location import ObjectLocation, Where, remove_tree, storage_error


def publish(local: Path, target: Where) -> None:
    """Move a finished local file or folder to ``target``, replacing what is there.

    Locally this is a rename (same filesystem: atomic). On object storage the
    file is uploaded whole; a folder's files are uploaded with its root metadata
    (``zarr.json`` / ``.zattrs``) last, so a reader that opens the root finds
    every chunk. The local copy is removed afterwards.
    """
    if not isinstance(target, ObjectLocation):
        os.replace(local, target)
        return
    if local.is_dir():
        remove_tree(target)
        files = sorted(p for p in local.rglob("*") if p.is_file())
        roots = {local / "zarr.json", local / ".zattrs", local / ".zgroup"}
        for path in [p for p in files if p not in roots] + [p for p in files if p in roots]:
            target.fs.put_file(str(path), str(target / path.relative_to(local).as_posix()))
        shutil.rmtree(local)
    else:
        target.fs.put_file(str(local), target.url)
        local.unlink()


@contextlib.contextmanager
def local_staging(*targets: Where | None) -> Iterator[list[Path | None]]:
    """Local names to write ``targets`` at; object-storage ones are uploaded when the block succeeds.

    A local target is its own name (its writer renames into place). An object-storage
    target gets a name in a private temporary folder; on success each one is
    uploaded whole, together with the sidecars its writer put beside it (every other
    file of its private folder: ``NAME.aux.xml``, ``STEM.qml``…, uploaded first), so the
    main object appears last and only when complete. On failure nothing is uploaded
    and the folder goes.
    """
    remote = [t for t in targets if isinstance(t, ObjectLocation)]
    if not remote:
        yield [t for t in targets]  # type: ignore[misc]
        return
    folder = Path(tempfile.mkdtemp(prefix="gigaseg-export-"))
    try:
        names = [
            (folder / str(i) / t.name) if isinstance(t, ObjectLocation) else t for i, t in enumerate(targets)
        ]
        for name in names:
            if name is not None and name.parent.parent == folder:
                name.parent.mkdir()
        yield names
        for staged, target in zip(names, targets):
            if isinstance(target, ObjectLocation) and staged is not None:
                for sidecar in sorted(p for p in staged.parent.iterdir() if p != staged):
                    publish(sidecar, target.with_name(sidecar.name))
                publish(staged, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_text_atomically(path: Path, text: str) -> Path:
    """Write ``text`` to a hidden temporary name beside ``path`` and rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_copies: list[Path] = []


def local_copy(where: ObjectLocation) -> Path:
    """A private local copy of a file or folder on object storage (removed when the process ends).

    For readers that need files (nibabel, pydicom, tifffile); rasters are read in place.
    """
    if not _copies:
        atexit.register(lambda: [shutil.rmtree(p, ignore_errors=True) for p in _copies])
    folder = Path(tempfile.mkdtemp(prefix="gigaseg-input-"))
    _copies.append(folder)
    target = folder / where.name
    try:
        if where.is_dir():
            where.fs.get(where.url + "/", str(target), recursive=True)
        else:
            where.fs.get_file(where.url, str(target))
    except Exception as exc:
        raise storage_error(where, exc) from None
    return target
