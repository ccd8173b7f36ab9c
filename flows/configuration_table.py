"""The option tables of ``docs/configuration.md``, generated from the config dataclasses.

Run ``python -m flows.configuration_table`` to rewrite the generated regions of the file
(between ``<!-- generated: NAME … -->`` and ``<!-- end generated: NAME -->``); the prose
around them is written by hand and kept. Defaults come from ``SegmentConfig`` and
``TrainSettings``, flags and meanings from :mod:`flows.arguments`, so the page cannot
drift from what the command line does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from flows.arguments import ENGINE_HELP, JOB_OPTIONS, TRAIN_OPTIONS, Option, field_default, option_flag
from pipeline.job.config import SegmentConfig
from pipeline.stores.location import location
from pipeline.training.settings import TrainSettings

COMMAND = "python -m flows.configuration_table"
DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
_METAVARS = {int: "N", float: "F", Path: "PATH", location: "LOCATION"}


def option_cell(owner: type, name: str, option: Option) -> str:
    """The option as typed, with the name of its value: ``--tile N``."""
    flag = option_flag(name, field_default(owner, name))
    metavar = option.metavar or _METAVARS.get(option.type)
    return f"`{flag} {metavar}`" if metavar else f"`{flag}`"


def default_cell(owner: type, name: str, option: Option) -> str:
    """The field's default as the docs say it: ``off``/``on`` for switches, the meaning of None."""
    default = field_default(owner, name)
    if default is None:
        return option.unset
    if isinstance(default, bool):
        return f"{name.replace('_', '-')} on" if default else "off"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def options_table(owner: type, options: dict[str, Option]) -> str:
    """A markdown table of ``options`` (option, default, meaning), in the dataclass's field order."""
    lines = ["| option | default | meaning |", "|---|---|---|"]
    for field in dataclasses.fields(owner):
        option = options.get(field.name)
        if option is not None:
            cells = (option_cell(owner, field.name, option), default_cell(owner, field.name, option))
            lines.append(f"| {cells[0]} | {cells[1]} | {option.meaning or option.help} |")
    return "\n".join(lines)


#: The generated regions of the page, by name.
TABLES: dict[str, Callable[[], str]] = {
    "segment options": lambda: options_table(SegmentConfig, {**ENGINE_HELP, **JOB_OPTIONS}),
    "train options": lambda: options_table(TrainSettings, TRAIN_OPTIONS),
}


def _replace_region(text: str, name: str, table: str) -> str:
    begin = f"<!-- generated: {name} (run `{COMMAND}`) -->"
    end = f"<!-- end generated: {name} -->"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"{DOC.name}: no region marked {begin!r} … {end!r}")
    return f"{text[:start]}{begin}\n{table}\n{text[stop:]}"


def render(text: str) -> str:
    """``text`` with every generated region replaced by the current table."""
    for name, table in TABLES.items():
        text = _replace_region(text, name, table())
    return text


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))
