"""Another revision's code beside this checkout's, for benches that compare the two in one run."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_path(code: Path = ROOT, environ: dict[str, str] | None = None) -> str:
    """``PYTHONPATH`` for a child running the code at ``code``: that code first, then the environment's.

    The environment's entries stay (a machine's carried packages, say), after the code.

    >>> python_path(Path("/code"), {"PYTHONPATH": "/site"})
    '/code:/site'
    >>> python_path(Path("/code"), {})
    '/code'
    """
    given = (os.environ if environ is None else environ).get("PYTHONPATH")
    return os.pathsep.join([str(code), *filter(None, [given])])


@contextlib.contextmanager
def checkout(rev: str | None) -> Iterator[Path | None]:
    """A temporary git worktree of ``rev`` (None: no baseline, yields None), removed afterwards."""
    if rev is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="gigaseg-baseline-") as tmp:
        where = Path(tmp) / "checkout"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(where), rev], cwd=ROOT, check=True)
        try:
            yield where
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, check=False)
