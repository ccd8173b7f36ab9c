"""Keeping ``bench/RESULTS.md``: one section per benchmark, replaced in place, and the pieces every
section is written with (markdown table heads, the command as run)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
TITLE = (
    "# Benchmark results\n\nEach section is rewritten by the command it names; its reading by hand, "
    "below a `by hand` marker, is kept.\n"
)


BY_HAND = "<!-- by hand: kept when the bench rewrites this section -->"
"""Marks where a section's hand-written reading starts: :func:`write_section` keeps it (and all after)."""


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    r"""Replace (or append) the ``## name`` section of the results file with ``body``.

    What the old section held from a :data:`BY_HAND` line on (the readings, earlier runs
    written up by hand) is kept under the new body.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "RESULTS.md"
    >>> write_section("Speed", "2.0 s", path)
    >>> _ = path.write_text(path.read_text() + f"\n{BY_HAND}\nWhy: the cache.\n")
    >>> write_section("Speed", "1.5 s", path)
    >>> print(path.read_text().split("## Speed", 1)[1].strip())
    1.5 s
    <BLANKLINE>
    <!-- by hand: kept when the bench rewrites this section -->
    Why: the cache.
    """
    text = path.read_text() if path.exists() else TITLE
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    found = pattern.search(text)
    kept = ""
    if found and BY_HAND in found.group(0):
        kept = "\n" + found.group(0)[found.group(0).index(BY_HAND) :].rstrip() + "\n"
    section = f"## {name}\n\n{body.rstrip()}\n{kept}"
    if found:
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def table_head(*columns: str) -> list[str]:
    """A markdown table's header line and the separator line under it.

    >>> table_head("run", "seconds")
    ['| run | seconds |', '|---|---|']
    """
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def command_line(module: str, args: Iterable[str]) -> str:
    """The ``python -m`` command that ran a bench, as recorded in its section.

    >>> command_line("bench.blend_bench", ["--side", "512"])
    'python -m bench.blend_bench --side 512'
    """
    return f"python -m {module}" + "".join(f" {a}" for a in args)


def load_text(start: float, end: float) -> str:
    """The machine's load around a run (the bench machines are shared), as every section words it.

    >>> load_text(1.25, 3.0)
    'load average 1.2 at the start, 3.0 at the end'
    """
    return f"load average {start:.1f} at the start, {end:.1f} at the end"


def current_commit() -> str:
    """The checkout's short commit (with ``+`` when it has uncommitted changes), or "unknown"."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")
