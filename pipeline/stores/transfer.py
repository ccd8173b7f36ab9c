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
import uuid
from collections.abc import Iterator, Sequence
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


class OutputSet:
    """The files one run makes, written under private names and moved into place together at the end.

    Every output of a run (labels, probabilities, their sidecars, the region tables)
    is written at :meth:`staged` (a hidden folder beside a local target, so the final
    rename is atomic and on the same file system; a private local folder for an
    object-storage target, uploaded whole). Only :meth:`publish`, called once the whole
    run has succeeded, touches the final names: it moves every staged file into place
    (what was written beside it first: ``.aux.xml``, ``.qml``; the main file last) and
    removes what an earlier run left under the ``owned`` names that this run did not
    make (a region table of a tracked run beside an untracked rerun's output).
    :meth:`discard` (a failed run) removes the staging and touches nothing else, so
    an earlier output survives a failed ``--overwrite`` byte for byte.

    A plain object, not a dataclass: Prefect walks into dataclass task parameters.
    """

    def __init__(self, owned: Sequence[Where] = ()) -> None:
        self.owned = list(owned)
        self._staged: dict[Where, Path] = {}
        self._folders: list[Path] = []

    def staged(self, target: Where) -> Path:
        """The local name to write ``target`` at (made once; the same name on a retry)."""
        if target not in self._staged:
            if isinstance(target, ObjectLocation):
                folder = Path(tempfile.mkdtemp(prefix="gigaseg-export-"))
            else:
                folder = target.parent / f".{target.name}.gigaseg-staging-{uuid.uuid4().hex[:8]}"
                folder.mkdir()  # the user's umask, like any output
            self._folders.append(folder)
            self._staged[target] = folder / target.name
        return self._staged[target]

    def publish(self) -> None:
        """Move every staged file to its final name, then remove stale owned files; drop the staging."""
        published: set[Where] = set()
        try:
            for target, staged in self._staged.items():
                if not staged.exists():
                    continue  # asked for a name but wrote nothing there
                for sidecar in sorted(p for p in staged.parent.iterdir() if p != staged):
                    final = target.with_name(sidecar.name)
                    _move(sidecar, final)
                    published.add(final)
                _move(staged, target)
                published.add(target)
            for stale in self.owned:
                if stale not in published and stale.exists():
                    stale.unlink()
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the staging folders (and whatever is still in them); the final names are untouched."""
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)
        self._folders.clear()
        self._staged.clear()


def _move(local: Path, target: Where) -> None:
    """A finished local file or folder into place: a rename, a folder swap, or an upload."""
    if isinstance(target, Path) and local.is_dir() and target.is_dir():
        aside = target.with_name(f".{target.name}.gigaseg-replaced-{uuid.uuid4().hex[:8]}")
        os.replace(target, aside)
        os.replace(local, target)
        shutil.rmtree(aside, ignore_errors=True)
        return
    publish(local, target)


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
