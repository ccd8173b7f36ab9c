"""docs/models.md is the registry's current account of itself."""

from __future__ import annotations

from pathlib import Path

from models.table import COMMAND, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_models_doc_is_up_to_date():
    assert DOC.read_text() == render(), f"docs/models.md is stale: run `{COMMAND}`"


def test_every_paper_figure_has_a_difference_column():
    for line in render().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert (cells[4] == "not stated") == (cells[5] == "—"), line
