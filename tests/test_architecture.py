"""The package's shape (docs/architecture.md): imports point down, the runtime needs no torch,
and no family is special-cased outside its own modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Repository folder -> the package it installs as (setup.py's FOLDERS).
FOLDERS = {"cips_deploy": "cips_deploy", "plugins": "cips_deploy.plugins", "exporters": "cips_deploy.exporters", "train": "cips_deploy.train"}

# What renders from engines: importing these must not import torch (docs/architecture.md, section 1).
RUNTIME_MODULES = [
    "cips_deploy",
    "cips_deploy.contracts.config",
    "cips_deploy.contracts.families",
    "cips_deploy.contracts.topology",
    "cips_deploy.contracts.backend",
    "cips_deploy.contracts.sinks",
    "cips_deploy.runtime.render",
    "cips_deploy.runtime.gigapixel",
    "cips_deploy.runtime.plugin_manager",
    "cips_deploy.families.cips_spec",
    "cips_deploy.families.creps_spec",
    "cips_deploy.plugins.flat",
    "cips_deploy.plugins.cylinder",
    "cips_deploy.plugins.rotated",
    "cips_deploy.plugins.foveated",
    "cips_deploy.plugins.chunkers",
    "cips_deploy.plugins.outputs",
]


def modules() -> dict[str, Path]:
    """Every module of the installed package, by its dotted name."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (type hints: never executed)."""
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            hidden.update(id(child) for statement in node.body for child in ast.walk(statement))
    return hidden


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its text (function-level imports too;
    not those under ``if TYPE_CHECKING:``, which never run)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    tree = ast.parse(path.read_text(), str(path))
    hidden = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                targets.add(submodule if submodule in known else module)
    return {target for target in targets if target in known and target != name}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_the_import_graph_has_no_cycle():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert find_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_function_level_imports_count(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from cips_deploy.contracts import families\n")
    known = {"cips_deploy.contracts.families": tmp_path, "cips_deploy.x": source}
    assert imports_of("cips_deploy.x", source, known) == {"cips_deploy.contracts.families"}


@pytest.mark.runtime
def test_the_runtime_imports_no_torch():
    """In a fresh interpreter (torch may be installed: it must still not be imported)."""
    script = "import importlib, sys\n" + "".join(f"importlib.import_module({name!r})\n" for name in RUNTIME_MODULES)
    script += "from cips_deploy.runtime.plugin_manager import get_registry\nregistry = get_registry()\n"
    script += "assert not registry.problems, registry.problems\n"
    script += "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\nassert not bad, bad[:5]\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_family_is_special_cased_outside_its_modules():
    """The architecture names of a family appear only in that family's own modules."""
    family_modules = {"creps": {"creps.py", "creps_spec.py", "creps_reference.py", "official_creps.py"}}
    offenders = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in family_modules:
                if path.name not in family_modules[node.value]:
                    offenders.append(f"{name}:{node.lineno}")
    assert offenders == []
