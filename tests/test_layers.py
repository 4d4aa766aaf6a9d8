"""The import graph between the project's folders points down only: assimbench <- problems <- methods <- bench.

Every ``import`` and ``from ... import`` of every module (at module level or inside a function) is read from
its syntax tree; an import of a higher layer, or of any project package from the kernel, fails the test.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: the layers, bottom first; a module may import its own layer and the ones below it
LAYERS = ("assimbench", "problems", "methods", "bench")
RANK = {name: i for i, name in enumerate(LAYERS)}


def _modules() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def _imported(rel: Path, text: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the module at ``rel`` (relative to the root)."""
    out = []
    for node in ast.walk(ast.parse(text, str(rel))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                package = list(rel.with_suffix("").parts[:-1])
                base = package[:len(package) - node.level + 1]
                out.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                out.append((node.lineno, node.module or ""))
    return out


def _violations(rel: Path, text: str) -> list[str]:
    layer = rel.parts[0]
    bad = []
    for line, module in _imported(rel, text):
        target = module.split(".")[0]
        if target in RANK and RANK[target] > RANK[layer]:
            bad.append(f"{rel.as_posix()}:{line} imports {module} ({target} sits above {layer})")
    return bad


def _read(path: Path) -> tuple[Path, str]:
    return path.relative_to(ROOT), path.read_text()


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_imports_point_down(path):
    assert not _violations(*_read(path))


def test_the_kernel_imports_nothing_of_the_project():
    for path in (ROOT / "assimbench").rglob("*.py"):
        for line, module in _imported(*_read(path)):
            target = module.split(".")[0]
            assert target not in RANK or target == "assimbench", f"{path.relative_to(ROOT)}:{line} imports {module}"


def test_the_checker_sees_an_upward_import():
    """The rule has teeth: a problem module importing the harness (even inside a function) is reported; a
    method importing a problem, or its own package relatively, is not; a relative import is resolved."""
    text = "import torch\nfrom problems.base import Problem\n\ndef f():\n    from bench.runner import run_cell\n"
    assert _violations(Path("problems/probe.py"), text) == \
        ["problems/probe.py:5 imports bench.runner (bench sits above problems)"]
    assert _violations(Path("methods/probe.py"), "from problems.base import Observer\nfrom . import base\n") == []
    assert _imported(Path("problems/sub/probe.py"), "from ..base import Problem\n") == [(1, "problems.base")]


def test_the_folders_form_no_cycle():
    """The folder-level graph (an edge per cross-folder import) has no cycle."""
    edges: dict[str, set[str]] = {name: set() for name in LAYERS}
    for path in _modules():
        src = path.relative_to(ROOT).parts[0]
        for _, module in _imported(*_read(path)):
            target = module.split(".")[0]
            if target in RANK and target != src:
                edges[src].add(target)
    seen: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> None:
        assert node not in stack, f"import cycle between folders: {' -> '.join(stack[stack.index(node):] + [node])}"
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(edges[node]):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for name in LAYERS:
        visit(name)
