"""The C heap allocator a gigaseg process runs on: TCMalloc where it is installed, else the system's.

On glibc's malloc (Debian 12's 2.36), torch's freed per-batch outputs stay behind as
holes the next batch cannot use, and large activations are mapped and faulted in
again at every forward (bench/RESULTS.md, "Freed heap"). TCMalloc reuses freed
memory by size class: the same runs take less time and less peak memory there
(bench/RESULTS.md, "Heap allocator").

An allocator is chosen when a process starts (``LD_PRELOAD``), never later. So the
``gigaseg`` command and the flow scripts (``python flows/segment_scene.py``, what
``ray submit`` runs) start over once on TCMalloc before their heavy imports
(:func:`flows.script.restart_on_chosen_allocator`); the processes they start (a local
Ray, the Prefect server, MLflow's helper) inherit it; and Ray's block workers get
:func:`allocator_environment` in their runtime environment, for a cluster the command
did not start. ``GIGASEG_ALLOCATOR=system`` keeps the system's allocator. A library
user's own process keeps what it started with; its Ray workers still get TCMalloc.

Linux only: elsewhere, or where no TCMalloc is installed (Debian / Ubuntu package
``libtcmalloc-minimal4``), everything runs on the system's allocator as before.

>>> allocator_in_use() in ("tcmalloc", "system")
True
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
from pathlib import Path

SETTING = "GIGASEG_ALLOCATOR"
"""``tcmalloc`` (the default, where installed) or ``system``."""

CHOICES = ("tcmalloc", "system")

LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
"""TCMalloc's shared libraries, the minimal build (no heap profiler) first."""

QUIET_LARGE_ALLOCATIONS = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}
"""TCMalloc reports each allocation over 1 GiB on stderr by default; a big volume or scene makes some."""


def chosen_allocator() -> str:
    """The allocator ``GIGASEG_ALLOCATOR`` asks for (``tcmalloc`` unless set); a bad value says so.

    Raises ValueError naming the variable and its choices.
    """
    value = os.environ.get(SETTING, "").strip().lower() or "tcmalloc"
    if value not in CHOICES:
        raise ValueError(f"{SETTING}={os.environ[SETTING]!r}: expected one of {', '.join(CHOICES)}")
    return value


def _library_folders() -> list[Path]:
    """Where a distribution, conda or a local build puts shared libraries."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    folders = [Path(sys.prefix) / "lib"]
    for root in ("/usr/lib", "/lib", "/usr/local/lib"):
        folders += [Path(root) / multiarch] if multiarch else []
        folders.append(Path(root))
    return [*folders, Path("/usr/lib64"), Path("/lib64")]


@functools.cache
def tcmalloc_library() -> str | None:
    """The path of an installed TCMalloc, or None (not Linux, or none installed)."""
    if not sys.platform.startswith("linux"):
        return None
    for folder in _library_folders():
        for name in LIBRARIES:
            if (folder / name).is_file():
                return str(folder / name)
    return None


def allocator_in_use() -> str:
    """``tcmalloc`` when this process has TCMalloc loaded, else ``system``."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return "tcmalloc" if any("libtcmalloc" in line for line in maps) else "system"
    except OSError:  # no /proc: not Linux
        return "system"


def allocator_environment() -> dict[str, str]:
    """The variables a new process needs to start on the chosen allocator ({} for the system's).

    ``LD_PRELOAD`` keeps what the user preloads already, after TCMalloc; nothing is
    returned where TCMalloc is not installed, is turned off, or where the user
    already preloads an allocator of their own (one named ``*malloc*``).
    """
    if chosen_allocator() != "tcmalloc":
        return {}
    library = tcmalloc_library()
    preloaded = os.environ.get("LD_PRELOAD", "")
    if library is None:
        return {}
    if "malloc" in preloaded and library not in preloaded:
        return {}
    entries = [library, *(e for e in preloaded.replace(":", " ").split() if e != library)]
    return {"LD_PRELOAD": " ".join(entries), **QUIET_LARGE_ALLOCATIONS}
