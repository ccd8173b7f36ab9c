"""docs/configuration.md's option tables are the config dataclasses' current account of themselves."""

from __future__ import annotations

from flows.configuration_table import COMMAND, DOC, render


def test_configuration_doc_is_up_to_date() -> None:
    text = DOC.read_text()
    assert text == render(text), f"docs/configuration.md is stale: run `{COMMAND}`"


def test_the_tables_show_the_dataclass_defaults() -> None:
    text = DOC.read_text()
    rows = [
        "| `--overlap F` | 0.25 |",
        "| `--crf-radius F` | 4 |",
        "| `--no-channels-last` | channels-last on |",
    ]
    for row in [*rows, "| `--epochs N` | 10 |", "| `--lr F` | 0.002 |"]:
        assert row in text, row
