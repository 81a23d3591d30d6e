"""How the test suite itself is put together: shared code lives in helpers.py (plain helpers)
and conftest.py (fixtures); a test module never imports another test module or conftest,
so each one can be run, moved or deleted on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TEST_MODULES = sorted(TESTS.glob("test_*.py"))
FORBIDDEN = ("conftest", "test_")


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, top-level module name) of every import statement in ``source``, nested ones
    (inside functions) included; relative imports count by the module they name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.module is None:  # from . import x
                found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
            else:
                found.append((node.lineno, node.module.split(".")[0]))
    return found


def forbidden_imports(source: str) -> list[str]:
    return [f"line {line}: {name}" for line, name in imported_modules(source)
            if name == "conftest" or name.startswith("test_")]


def test_the_check_sees_every_form_of_import():
    source = """
import os, test_api
from test_serving import free_port
from conftest import create
from . import test_batch
from .helpers import ROOT

def f():
    import conftest.sub
    from helpers import create
"""
    assert forbidden_imports(source) == ["line 2: test_api", "line 3: test_serving",
                                         "line 4: conftest", "line 5: test_batch",
                                         "line 9: conftest"]


@pytest.mark.parametrize("module", TEST_MODULES, ids=[p.name for p in TEST_MODULES])
def test_no_test_module_imports_another_or_conftest(module):
    bad = forbidden_imports(module.read_text())
    assert not bad, f"{module.name} imports {bad}: move what it needs into tests/helpers.py"
