"""Keeping ``bench/RESULTS.md``: one section per benchmark, replaced in place."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
TITLE = "# Benchmark results\n\nEach section is rewritten by the command it names.\n"


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the ``## name`` section of the results file."""
    text = path.read_text() if path.exists() else TITLE
    section = f"## {name}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
