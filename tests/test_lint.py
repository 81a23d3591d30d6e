"""ruff and mypy as part of the suite (so `make test`, and CI with it, checks them). buf lint
is in test_proto.py, hadolint in test_docker.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT
from typecheck import TREE, build_tree, package_dirs, run_mypy

RUFF_PATHS = ("server", "kernels", "clients", "benchmarks", "tests", "proto/generate.py")


def test_ruff_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", *RUFF_PATHS], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_tree_mirrors_the_package_dir_mapping():
    """Every mapped package of pyproject.toml is where mypy looks for it, and is the folder
    setuptools installs it from (so mypy checks what is imported at run time)."""
    tree = build_tree()
    assert tree == TREE
    mapping = package_dirs()
    assert {"banditd", "banditd.server", "banditd.kernels", "banditd.clients",
            "banditd.decision"} <= set(mapping)
    for name, folder in mapping.items():
        package = tree.joinpath(*name.split("."))
        assert (package / "__init__.py").resolve() == (folder / "__init__.py").resolve(), name
    # subpackages of the root's own folder come along: banditd.storage, banditd.replication
    assert (tree / "banditd" / "storage" / "v1" / "storage_pb2.pyi").resolve() == \
        ROOT / "proto" / "banditd" / "storage" / "v1" / "storage_pb2.pyi"


# The package, and the tests' shared helpers (the test modules themselves are not checked).
HELPERS = ("tests/helpers.py", "tests/conftest.py", "tests/typecheck.py")


@pytest.mark.slow  # 30-60 s on a cold mypy cache (a fresh clone), a few seconds warm
@pytest.mark.parametrize("targets", [(), HELPERS], ids=["banditd", "test-helpers"])
def test_mypy_clean(targets):
    proc = run_mypy(*targets)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


CROSS_MODULE_MISTAKES = '''
from banditd.decision.v1 import decision_pb2 as pb
from banditd.kernels.rng import seed_state
from banditd.server.api.app import create_server
from banditd.server.state.decision_store import DecisionStore

async def main() -> None:
    await create_server(42)
seed_state("7")
DecisionStore(capacity="many", ttl_seconds=1.0)
pb.SelectArmRequest(num_arms="two")
'''


@pytest.mark.slow
def test_mypy_resolves_banditd_imports_instead_of_treating_them_as_any():
    """Calls across banditd's packages with wrong argument types are reported: mypy sees the
    real signatures (an unresolved import would be Any, and all four calls would pass)."""
    proc = run_mypy("-c", CROSS_MODULE_MISTAKES)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    expected = [
        ('"create_server"', '"int"', '"Settings"'),
        ('"seed_state"', '"str"', '"int"'),
        ('"DecisionStore"', '"str"', '"int"'),
        ('"SelectArmRequest"', '"str"', '"int | None"'),
    ]
    assert len(errors) == len(expected), proc.stdout
    for error, (function, given, wanted) in zip(errors, expected, strict=True):
        assert "[arg-type]" in error and function in error, error
        assert f"incompatible type {given}; expected {wanted}" in error, error
