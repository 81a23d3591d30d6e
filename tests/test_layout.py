"""The layout keeps its promises: no import circles between modules or between the server's
packages, and storage never looks inside a record (it does not import the state)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import ROOT

# package -> folder, as pyproject.toml maps them
FOLDERS = {"banditd.server": ROOT / "server", "banditd.kernels": ROOT / "kernels",
           "banditd.clients": ROOT / "clients"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if "examples" in parts:
                continue
            out[".".join((package, *parts))] = path
    return out


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The banditd modules ``path`` imports, anywhere in it (also inside functions), except
    under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            skip.update(id(n) for n in ast.walk(node))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # a name that is a submodule counts as that module, any other as the package
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {m: _imports(p, m, known) for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a path that ends where it starts), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _package_of(module: str) -> str:
    """The architecture unit of a module: a server subpackage (api, state, …), a top-level
    server module (settings, cli, …), kernels or clients."""
    parts = module.split(".")
    if parts[1] == "server" and len(parts) > 2:
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def test_no_module_imports_itself_round_a_circle():
    graph = _graph()
    assert len(graph) > 40 and "banditd.server.api.app" in graph  # the walk found the code
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_package_imports_itself_round_a_circle():
    packages: dict[str, set[str]] = {}
    for module, imported in _graph().items():
        mine = _package_of(module)
        packages.setdefault(mine, set()).update(
            p for p in map(_package_of, imported) if p != mine)
    assert {"banditd.server.api", "banditd.server.state", "banditd.server.storage",
            "banditd.server.ads", "banditd.server.cluster"} <= set(packages)
    assert _cycle(packages) is None, " -> ".join(_cycle(packages) or [])


@pytest.mark.parametrize("lower, upper", [
    ("banditd.server.storage", "banditd.server.state"),  # records are opaque to storage
    ("banditd.server.storage", "banditd.server.api"),
    ("banditd.server.state", "banditd.server.api"),
    ("banditd.server.api", "banditd.server.cluster"),  # create_server takes its parts
    ("banditd.kernels", "banditd.server"),
])
def test_lower_layers_do_not_import_higher_ones(lower, upper):
    bad = {m: sorted(i for i in imported if i.startswith(upper))
           for m, imported in _graph().items() if m.startswith(lower)}
    assert not {m: i for m, i in bad.items() if i}


def test_the_circle_check_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
