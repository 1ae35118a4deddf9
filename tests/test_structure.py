"""Structure of the project, checked without importing TensorFlow.

* The import graph of serving/, trainer/ and tfx_pipeline/ (every import statement,
  function-level ones included, read with ``ast``): no cycle, the layering
  serving/ <- trainer/ <- tfx_pipeline/ (a package imports only those below it), and no
  module reaching into another project module's private names.
* The installed protobuf runs on the upb C backend (the lock keeps protobuf 4.25.x).
* ``uv pip check`` reports only the known, accepted incompatibilities of the lock.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("serving", "trainer", "tfx_pipeline")
# A package may import only the packages listed for it (besides itself).
ALLOWED_BELOW = {
    "serving": set(),
    "trainer": {"serving"},
    "tfx_pipeline": {"trainer", "serving"},
}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    path: str
    line: int
    function_level: bool

    def __str__(self) -> str:
        where = " (function-level)" if self.function_level else ""
        return f"{self.path}:{self.line}: {self.src} -> {self.dst}{where}"


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the project packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _module_files()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _resolve_relative(module: str, path: Path, level: int, target: Optional[str]) -> str:
    """``from .x import y`` in ``module`` -> the absolute name of ``.x``."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join(base + ([target] if target else []))


def _longest_module_prefix(dotted: str) -> Optional[str]:
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in MODULES:
            return candidate
    return None


class _ModuleScan(ast.NodeVisitor):
    """Import edges, private-name imports and private attribute uses of one module."""

    def __init__(self, module: str, path: Path):
        self.module = module
        self.path = path
        self.edges: list[Edge] = []
        self.private: list[str] = []
        self.bound: dict[str, str] = {}  # local name -> project module it is bound to
        self._depth = 0

    def _edge(self, dst: str, node: ast.AST) -> None:
        if dst != self.module:
            self.edges.append(Edge(self.module, dst, _rel(self.path), node.lineno, self._depth > 0))

    def _function(self, node) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] not in PACKAGES:
                continue
            target = _longest_module_prefix(alias.name)
            if target is None:
                continue
            self._edge(target, node)
            if any(_is_private(p) for p in alias.name.split(".")[1:]):
                self.private.append(f"{_rel(self.path)}:{node.lineno}: {self.module} imports {alias.name}")
            if alias.asname:
                self.bound[alias.asname] = target
            else:  # ``import a.b.c`` binds ``a``
                top = alias.name.split(".")[0]
                if top in MODULES:
                    self.bound[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = _resolve_relative(self.module, self.path, node.level, node.module)
        else:
            base = node.module or ""
        if base.split(".")[0] not in PACKAGES:
            return
        base_module = _longest_module_prefix(base)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            if full in MODULES:  # ``from pkg import mod``: the edge goes to the module
                self._edge(full, node)
                self.bound[alias.asname or alias.name] = full
            elif base_module is not None:
                self._edge(base_module, node)
            if _is_private(alias.name) and (full in MODULES or base_module not in (None, self.module)):
                self.private.append(
                    f"{_rel(self.path)}:{node.lineno}: {self.module} imports {alias.name} from {base}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = []
        cur: ast.AST = node
        while isinstance(cur, ast.Attribute):
            chain.append(cur.attr)
            cur = cur.value
        if isinstance(cur, ast.Name) and cur.id in self.bound:
            chain.reverse()
            module = self.bound[cur.id]
            for attr in chain:
                if _is_private(attr):
                    if module != self.module:
                        self.private.append(
                            f"{_rel(self.path)}:{node.lineno}: {self.module} uses {module}.{attr}")
                    break
                if f"{module}.{attr}" in MODULES:
                    module = f"{module}.{attr}"
                else:
                    break
            return  # the inner attributes of this chain were walked here
        self.generic_visit(node)


def _scan_all() -> tuple[list[Edge], list[str], list[str]]:
    edges, private, unparsable = [], [], []
    for module, path in MODULES.items():
        try:
            tree = ast.parse(path.read_text(), filename=str(path))
        except SyntaxError as e:
            unparsable.append(f"{_rel(path)}:{e.lineno}: {e.msg}")
            continue
        scan = _ModuleScan(module, path)
        scan.visit(tree)
        edges += scan.edges
        private += scan.private
    return edges, private, unparsable


EDGES, PRIVATE_USES, UNPARSABLE = _scan_all()


def _cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One concrete cycle (as edges) for each strongly connected component with a cycle."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.src, {}).setdefault(e.dst, e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan; the graph is small
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for component in components:
        start = min(component)
        # Shortest path back to ``start`` inside the component (BFS).
        parent: dict[str, Edge] = {}
        frontier = [start]
        seen = {start}
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w, e in sorted(graph.get(v, {}).items()):
                    if w not in component:
                        continue
                    if w == start:
                        found = e
                        break
                    if w not in seen:
                        seen.add(w)
                        parent[w] = e
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while path[-1].src != start:
            path.append(parent[path[-1].src])
        path.reverse()
        cycles.append(path)
    return cycles


def test_the_scan_sees_the_project():
    if UNPARSABLE:
        pytest.fail("modules that do not parse (their imports are not checked):\n  " + "\n  ".join(UNPARSABLE))
    assert len(MODULES) > 50, sorted(MODULES)
    assert any(e.src.startswith("tfx_pipeline.") and e.dst.startswith("trainer.") for e in EDGES)


def test_no_import_cycle():
    cycles = _cycles(EDGES)
    message = "\n\n".join(
        "cycle " + " -> ".join([c[0].src] + [e.dst for e in c]) + ":\n  " + "\n  ".join(map(str, c))
        for c in cycles)
    if cycles:
        pytest.fail(f"{len(cycles)} import cycle(s) among project modules:\n{message}")


@pytest.mark.parametrize("package", PACKAGES)
def test_layering(package):
    allowed = ALLOWED_BELOW[package] | {package}
    bad = [e for e in EDGES if e.src.split(".")[0] == package and e.dst.split(".")[0] not in allowed]
    above = sorted(set(PACKAGES) - allowed)
    if bad:
        pytest.fail(f"{package}/ must not import from {', '.join(p + '/' for p in above)} "
                    f"(layering serving/ <- trainer/ <- tfx_pipeline/):\n  " + "\n  ".join(map(str, bad)))


def test_no_private_names_across_modules():
    if PRIVATE_USES:
        pytest.fail("private names used from another project module (make them public, or move the "
                    "code):\n  " + "\n  ".join(PRIVATE_USES))


def test_protobuf_runs_on_upb():
    from google.protobuf.internal import api_implementation

    backend = api_implementation.Type()
    assert backend == "upb", (
        f"protobuf backend is {backend!r}, not 'upb': the lock fell back to the pure-Python "
        f"protobuf (every parse/serialize in Python, ~100x slower). requirements.lock.txt must "
        f"keep protobuf 4.25.x (upb C backend); see ../shared/stack/STACK.md, 'The faster set'.")


# The incompatibilities `uv pip check` reports for the lock on Python 3.11, all accepted:
KNOWN_INCOMPATIBILITIES = {
    # tfx 1.16 declares Requires-Python <3.11; the whole stack runs on 3.11.
    "tfx Requires-Python <3.11": re.compile(
        r"The package `tfx` requires Python >=3\.9, <3\.11, but `3\.11\.\d+` is installed"),
    "ml-pipelines-sdk Requires-Python <3.11": re.compile(
        r"The package `ml-pipelines-sdk` requires Python >=3\.9, <3\.11, but `3\.11\.\d+` is installed"),
    # apache-beam 2.74 on 3.11 wants envoy-data-plane>=1.0.3, whose only release pins a
    # betterproto that is not on PyPI; overrides.txt keeps 0.2.6.
    "apache-beam wants envoy-data-plane>=1.0.3": re.compile(
        r"The package `apache-beam` requires `envoy-data-plane>=1\.0\.3.*`, but `0\.2\.6` is installed"),
}


def _uv_binary() -> Optional[str]:
    for candidate in (Path(sys.executable).parent / "uv", ROOT / ".venv" / "bin" / "uv"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("uv")


def test_uv_pip_check_reports_only_known_incompatibilities():
    uv = _uv_binary()
    if uv is None:
        pytest.skip("no uv binary next to the interpreter, in .venv/bin or on PATH")
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run([uv, "pip", "check", "--python", sys.executable],
                          capture_output=True, text=True, timeout=300, env=env)
    output = proc.stdout + proc.stderr
    reported = [line.strip() for line in output.splitlines() if line.strip().startswith("The package ")]
    if proc.returncode != 0:
        assert reported, f"`uv pip check` failed (rc {proc.returncode}) without any parsable line:\n{output}"
    unknown = [line for line in reported
               if not any(p.fullmatch(line) for p in KNOWN_INCOMPATIBILITIES.values())]
    if unknown:
        pytest.fail("`uv pip check` reports incompatibilities beyond the known ones "
                    f"({'; '.join(KNOWN_INCOMPATIBILITIES)}):\n  " + "\n  ".join(unknown)
                    + f"\nfull output:\n{output}")
