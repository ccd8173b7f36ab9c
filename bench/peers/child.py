"""The child process's side of a row: import what the row needs, run it, print its result as one line."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from bench.peers.end_to_end import run_end_to_end
from bench.peers.in_memory import run_in_memory
from bench.peers.measure import RESULT_PREFIX
from bench.peers.nnunet import NNUNET_PATH
from bench.peers.rows import END_TO_END_ROWS, ROW_IMPORTS, RowSpec


def run_child(spec: RowSpec) -> dict[str, Any]:
    """Run one row; returns seconds, peak RSS and what else the row measured."""
    if spec.row == "nnunet":
        sys.path.append(str(NNUNET_PATH))
    # Imports happen before any clock starts, for every row alike.
    for module in ROW_IMPORTS.get(spec.row, ()):
        importlib.import_module(module)
    if spec.row in END_TO_END_ROWS:
        return run_end_to_end(spec)
    return run_in_memory(spec)


def child_main(spec_json: str) -> int:
    """The ``--child SPEC`` entry: run the row and print its result line."""
    result = run_child(RowSpec.from_json(spec_json))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0
