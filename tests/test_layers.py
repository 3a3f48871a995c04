"""The layer order of setup.cfg's import-linter contract holds, with no import cycles at all.

Imports inside functions and under TYPE_CHECKING count (grimp reads every import statement).
The contract itself runs in ``scripts/lint.sh``; here we check that it covers every module,
that no two modules import each other in a cycle, and that the contract and the cycle check
both fail on a copy of the package with an upward import or a cycle planted in it.
"""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("converter", "models", "third_party", "training")
#: Package __init__ modules that hold no code of a layer (containers).
CONTAINERS = {"facenet_convert", "facenet_convert.converter", "facenet_convert.models",
              "facenet_convert.third_party"}


def contract_layers() -> list[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    modules = []
    for line in config["importlinter:contract:layers"]["layers"].split("\n"):
        modules += [part.strip().strip("()") for part in line.split(":") if part.strip()]
    return modules


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if child < len(edges[node]):
                work.append((node, child + 1))
                nxt = edges[node][child]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
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
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return cycles


def build_graph() -> grimp.ImportGraph:
    return grimp.build_graph("facenet_convert", cache_dir=None)


def test_no_import_cycles_between_modules():
    assert import_cycles(build_graph()) == []


def test_every_module_sits_in_a_layer():
    layers = contract_layers()
    graph = build_graph()
    outside = sorted(m for m in graph.modules - CONTAINERS
                     if not any(m == layer or m.startswith(layer + ".") for layer in layers))
    assert outside == [], "add these modules to a layer of setup.cfg's import-linter contract"


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the package's sources as ``tmp_path/facenet_convert``."""
    target = tmp_path / "facenet_convert"
    target.mkdir()
    shutil.copy2(ROOT / "__init__.py", target / "__init__.py")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, target / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    shutil.copy2(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    return tmp_path


def _plant(copy: Path, module: str, line: str) -> None:
    path = copy / "facenet_convert" / module
    path.write_text(path.read_text() + f"\n\ndef _planted() -> None:\n    {line}\n")


def _lint_imports(copy: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache",
                           "setup.cfg"], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_contract_is_kept_by_the_package(package_copy: Path):
    done = _lint_imports(package_copy)
    assert done.returncode == 0, done.stdout + done.stderr


def test_contract_breaks_on_an_upward_import(package_copy: Path):
    _plant(package_copy, "converter/core/errors.py",
           "from facenet_convert.converter.conversion import convert  # noqa: F401")
    done = _lint_imports(package_copy)
    assert done.returncode != 0
    assert "facenet_convert.converter.core.errors" in done.stdout
    assert "BROKEN" in done.stdout


def test_cycle_check_finds_a_planted_cycle(package_copy: Path):
    # sources.base -> sources.memory -> sources.base: inside one layer, so only the cycle
    # check can see it.
    _plant(package_copy, "converter/sources/base.py",
           "from facenet_convert.converter.sources import memory  # noqa: F401")
    # a fresh process, so that the copy (not the installed package) is what grimp reads
    done = subprocess.run([sys.executable, __file__], env={"PYTHONPATH": str(package_copy)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    cycles = json.loads(done.stdout)
    assert any("facenet_convert.converter.sources.base" in cycle for cycle in cycles)


if __name__ == "__main__":
    print(json.dumps(import_cycles(build_graph())))


def test_every_import_of_our_names_resolves() -> None:
    """Imports inside functions run only when that path runs: every ``from facenet_convert...
    import name`` anywhere in the package, scripts and tests must name something that exists
    (a rename cannot leave a path that fails only when a user reaches it)."""
    import ast
    import importlib

    root = Path(__file__).resolve().parents[1]
    files = [p for folder in ("converter", "models", "third_party", "scripts", "tests")
             for p in (root / folder).rglob("*.py")]
    broken = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("facenet_convert")):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        broken.append(f"{path.relative_to(root)}:{node.lineno} "
                                      f"{node.module}.{alias.name}")
    assert broken == []
