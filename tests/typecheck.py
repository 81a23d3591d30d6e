"""mypy over the installed ``banditd`` namespace, resolved from the source folders.

The code imports ``banditd.server``, ``banditd.kernels``, ... but the folders are server/,
kernels/, ...: setuptools maps them (``[tool.setuptools.package-dir]``) and an editable install
finds them through an import hook, which mypy cannot follow. This module builds the package as
mypy expects to find it, a tree of symlinks made from that same mapping::

    build/mypy-path/banditd/__init__.py -> proto/banditd/__init__.py
    build/mypy-path/banditd/storage     -> proto/banditd/storage
    build/mypy-path/banditd/server      -> server
    ...

and runs ``mypy -p banditd`` on it (``mypy_path`` in pyproject.toml points there). The tree
lives at a fixed place so mypy's cache stays warm between runs.

    python tests/typecheck.py [mypy arguments, default -p banditd]  # make lint, test_lint.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "mypy-path"


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """The setuptools mapping: dotted package name -> its source folder."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in mapping.items()}


def build_tree(tree: Path = TREE, root: Path = ROOT) -> Path:
    """(Re)build the symlink tree under ``tree``; returns ``tree``.

    A mapped package whose own folder holds mapped subpackages (``banditd`` holds
    ``banditd.server`` ...) becomes a real directory with a link per entry of its folder; any
    other is one link to its folder."""
    mapping = package_dirs(root)
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    parents = {name.rpartition(".")[0] for name in mapping} - {""}
    for name in sorted(mapping):  # parents before their children
        target = tree.joinpath(*name.split("."))
        if name in parents:
            target.mkdir(parents=True, exist_ok=True)
            for entry in sorted(mapping[name].iterdir()):
                if entry.name != "__pycache__" and not (target / entry.name).exists():
                    (target / entry.name).symlink_to(entry)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(mapping[name], target_is_directory=True)
    return tree


def run_mypy(*args: str) -> subprocess.CompletedProcess[str]:
    """Build the tree, then ``python -m mypy *args`` from the project root with its config
    in pyproject.toml; no arguments = ``-p banditd``, the whole package."""
    build_tree()
    return subprocess.run([sys.executable, "-m", "mypy", *(args or ("-p", "banditd"))],
                          cwd=ROOT, capture_output=True, text=True)


def main() -> int:
    proc = run_mypy(*sys.argv[1:])
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
