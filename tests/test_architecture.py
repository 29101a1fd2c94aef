"""The shape of the code (docs/extending.md, "Layers"): the library (fedal/) never imports the
server side (strategies/); no import circle among fedal/, strategies/ and simulations/, also none
hidden in an import inside a function; no module over 450 lines; thin apps; each of a few names
that used to be spelled in several places defined once. Read from the source with ast, so an
import that runs only in some branch counts as much as one at the top."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedal", "strategies", "simulations")
MAX_LINES = 450
APP_MAX_LINES = 80


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    out = {}
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file (top level, functions,
    branches). An import of ``a.b.c`` is an edge to the deepest project module it names
    (``from a.b import c`` to ``a.b.c`` when that is a module, else to ``a.b``): a package's
    ``__init__`` that imports its submodules does not make every submodule import the package."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            edges |= {t for t in map(resolve, targets) if t is not None and t != mod}
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from the library (fedal) into the server side or the simulations."""
    return sorted((a, b) for a, bs in graph.items() for b in bs
                  if a.split(".")[0] == "fedal" and b.split(".")[0] != "fedal")


def test_no_import_circle_and_the_library_never_imports_the_server_side():
    graph = import_graph(modules())
    assert len(graph) > 100 and "fedal.config" in graph["strategies.active_learning"]
    assert cycles(graph) == []
    assert upward(graph) == []


def test_the_checks_see_a_circle_hidden_in_a_function_and_an_upward_import(tmp_path):
    # the same reading of a small tree: fedal.a imports fedal.b at the top, fedal.b imports fedal.a
    # inside a function, and fedal.b imports strategies.c inside a branch
    for rel, text in {"fedal/__init__.py": "", "fedal/a.py": "from fedal import b\n",
                      "fedal/b.py": "def f():\n    from fedal.a import x\n\nif 0:\n    import strategies.c\n",
                      "strategies/__init__.py": "", "strategies/c.py": "import numpy\n",
                      "simulations/__init__.py": ""}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = import_graph(modules(tmp_path))
    assert cycles(graph) == [["fedal.a", "fedal.b"]]
    assert upward(graph) == [("fedal.b", "strategies.c")]


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_apps_are_thin_and_where_pyproject_says():
    components = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "strategies.server_app:app", "clientapp": "fedal.client_app:app"}
    for ref in components.values():
        path = ROOT / (ref.split(":")[0].replace(".", "/") + ".py")
        assert len(path.read_text().splitlines()) <= APP_MAX_LINES, path
    # the ClientApp sets no process-wide thread count and reads nothing of /proc: fedal.client
    # does the one (once per process), fedal.deploy.timing the other (for a benchmark)
    client_app = (ROOT / "fedal" / "client_app.py").read_text()
    assert "set_num_threads" not in client_app and "/proc" not in client_app


@pytest.mark.parametrize("name", ["QUIET_ENV", "LAPLACIANS", "SIGMA_SCOPES", "PSEUDO_OPTIMIZERS", "CLIENT_KEY",
                                  "CLIENT", "array_fingerprint", "PoolStore", "MEASURES", "DATASETS",
                                  "resolve_backbone", "DiffusionParams", "NoParams"])
def test_a_name_is_defined_in_one_module_at_most(name):
    where = []
    for mod, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            names = ([t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else
                     [node.target.id] if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) else
                     [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [])
            if name in names:
                where.append(mod)
    assert len(where) <= 1, where
