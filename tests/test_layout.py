"""The package's shape: imports that point one way, modules of a readable size.

``lint-imports`` (``.ci/run``) checks the layers of ``pyproject.toml``, counting function-local
imports; these tests add what it cannot see.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "didiff_jax"
MAX_LINES = 600


def _python_files(*dirs: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for d in dirs for p in d.rglob("*.py"))


def _local_project_imports(path: pathlib.Path) -> list[str]:
    """The names (``didiff_jax.x``) of every project import inside a function or method."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom):
                module = "didiff_jax" if inner.level else inner.module or ""
                names = [f"{module}.{a.name}" for a in inner.names]
            elif isinstance(inner, ast.Import):
                names = [a.name for a in inner.names]
            else:
                continue
            found += [n for n in names if n.startswith("didiff_jax")]
    return found


@pytest.mark.parametrize("path", _python_files(PACKAGE), ids=lambda p: str(p.relative_to(ROOT)))
def test_project_modules_are_imported_at_the_top(path):
    """Function-local imports are for optional third-party packages only: a project module
    imported inside a function would hide an upward arrow or a cycle from the reader. The one
    exception: the package's lazy ``load`` / ``Trained`` (``import didiff_jax`` stays cheap)."""
    expected = ["didiff_jax.api"] if path == PACKAGE / "__init__.py" else []
    assert _local_project_imports(path) == expected


def test_the_check_finds_a_local_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from didiff_jax import train\n    import numpy\n")
    assert _local_project_imports(module) == ["didiff_jax.train"]


@pytest.mark.parametrize("path", _python_files(PACKAGE, ROOT / "benchmarks"),
                         ids=lambda p: str(p.relative_to(ROOT)))  # fmt: skip
def test_modules_stay_readable(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name}: {lines} lines; split it by job"
