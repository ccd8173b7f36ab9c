"""The labels COG's compression: DEFLATE at the one level the docs state, without a predictor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.exporters.cog import LABELS_DEFLATE_LEVEL, _cog_options

ROOT = Path(__file__).resolve().parents[2]


def test_the_labels_cog_is_written_at_the_labels_deflate_level_without_a_predictor() -> None:
    options = _cog_options("NO", "MODE", LABELS_DEFLATE_LEVEL)
    assert options["COMPRESS"] == "DEFLATE"
    assert options["LEVEL"] == str(LABELS_DEFLATE_LEVEL)
    assert options["PREDICTOR"] == "NO"


@pytest.mark.parametrize("doc", ["README.md", "docs/architecture.md"])
def test_the_docs_state_the_labels_deflate_level_of_the_code(doc: str) -> None:
    text = " ".join((ROOT / doc).read_text().split())
    stated = {int(n) for n in re.findall(r"DEFLATE(?: at| \()\s*level (\d+)", text)}
    assert stated == {LABELS_DEFLATE_LEVEL}
