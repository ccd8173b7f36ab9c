"""The tree shows the architecture: sizes stay readable, imports point one way, examples run."""

from __future__ import annotations

import ast
import doctest
import importlib
import os
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _library_files() -> list[Path]:
    return sorted((ROOT / "pipeline").rglob("*.py"))


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_no_library_module_is_over_400_lines():
    long = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in _library_files()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, long


def test_no_function_in_the_library_flows_or_models_is_over_80_lines():
    files = _library_files() + sorted((ROOT / "flows").glob("*.py")) + sorted((ROOT / "models").rglob("*.py"))
    long = [f for p in files for f in _long_functions(p)]
    assert not long, long


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_flow_imports_the_command_line():
    offenders = [
        p.name for p in (ROOT / "flows").glob("*.py") if p.name != "cli.py" and "flows.cli" in _imports(p)
    ]
    assert not offenders


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("pipeline", ("flows",)),
        ("models", ("pipeline", "flows")),
        ("pipeline/stores", ("pipeline.engine", "pipeline.execution", "pipeline.job", "torch")),
        ("pipeline/tiling", ("pipeline.engine", "pipeline.stores", "pipeline.inputs", "torch")),
    ],
)
def test_imports_point_one_way(folder, forbidden):
    offenders = [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in sorted((ROOT / folder).rglob("*.py"))
        for name in _imports(p)
        if name.split(".")[0] in forbidden or any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert not offenders, offenders


DOCTESTED = ("pipeline", "models", "flows")
"""Packages whose docstring examples run here (with the bench helpers the tests share)."""


def _doctested_modules() -> list[str]:
    names = ["bench.loopback", "bench.results", "bench.baseline", "bench.gpu_kit", "bench.peer_bench",
             "bench.stage_cost_bench"]  # fmt: skip
    for package in DOCTESTED:
        root = importlib.import_module(package)
        names += [info.name for info in pkgutil.walk_packages(root.__path__, f"{package}.")]
    return names


def test_docstring_examples_run_and_keep_the_variables_they_found(monkeypatch):
    """An example may configure what the code configures (GDAL's settings for an endpoint), but a
    variable the session had must be there after it, unchanged: later tests in the worker need it.
    What the examples added is removed at the end: derived from this test's unreachable endpoint, it
    would send a later test's GDAL there. GDAL's settings an earlier test of the worker derived from
    the session's endpoint are set aside first (and come back after): for the new endpoint the code
    rightly replaces them."""
    from pipeline.stores import object_storage_settings

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # as under the session's S3 server
    for key in object_storage_settings._configured:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(object_storage_settings, "_configured", {})
    failed, changed = [], []
    session = set(os.environ)
    try:
        for name in _doctested_modules():
            module = importlib.import_module(name)
            before = dict(os.environ)
            result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
            if result.failed:
                failed.append(name)
            if any(os.environ.get(key) != value for key, value in before.items()):
                changed.append(name)
    finally:
        for key in set(os.environ) - session:
            del os.environ[key]
    assert not failed, failed
    assert not changed, changed
