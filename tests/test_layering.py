"""The house's floors run one way: no import cycle in sslr/, and the evaluation engine imports no
task module nor the application. Read from the source (every import, at module level or inside a
function), nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sslr

ROOT = Path(sslr.__file__).parent
ENGINE = ("sslr.robustness", "sslr.attacks")
ABOVE_ENGINE = (
    "sslr.tasks",
    "sslr.cli",
    "sslr.attack_run",
    "sslr.grid",
    "sslr.demo",
    "sslr.trainer",
    "sslr.callbacks",
    "sslr.report",
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The sslr modules ``name`` imports (a package's submodule where ``from pkg import sub``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` names a module or a package
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _is_face(name: str) -> bool:
    """A package's __init__ hands names on; its arrows are not the house's floors."""
    return MODULES[name].name == "__init__.py"


def test_the_import_reader_sees_lazy_and_package_imports():
    graph = _imports("sslr.robustness.suite")
    assert "sslr.robustness.reference" in graph  # imported inside a function
    assert "sslr.robustness.config" in graph
    assert "sslr.robustness.attacks" in _imports("sslr.robustness")


def test_no_import_cycle_in_sslr():
    graph = {n: {m for m in _imports(n) if not _is_face(m)} for n in MODULES if not _is_face(n)}
    # Tarjan's strongly connected components, iterative (a cycle is a component of 2 or more).
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def connect(start):
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
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

    for name in sorted(graph):
        if name not in index:
            connect(name)
    assert cycles == [], f"import cycles: {cycles}"


@pytest.mark.parametrize("module", sorted(n for n in MODULES if n.startswith(ENGINE)))
def test_the_engine_imports_nothing_above_it(module):
    above = sorted(m for m in _imports(module) if m.startswith(ABOVE_ENGINE))
    assert above == [], f"{module} imports {above}"
