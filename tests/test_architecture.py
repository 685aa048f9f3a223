"""The package's architecture, read from its source with ``ast``.

Every import counts, at module level or hidden inside a function. The rules:

- Layers, bottom to top: ``errors``, ``resources``, ``fileio``, ``schema``, ``zoo_check``,
  ``zoo``, ``zoo_cache``, ``choices``; ``data`` and ``model`` side by side; ``recipe``;
  ``engine``; ``cli``, ``commands``, ``showcase``, ``__main__``. An import never climbs a floor,
  and ``data`` and ``model`` never import each other. ``tsmcli/__init__`` (the lazy public
  API) is exempt; a name taken from it counts as an import of the module that defines the
  name.
- No import cycle between modules.
- No module above ``MAX_MODULE_LINES`` lines.
- No function above ``MAX_FUNCTION_LINES`` lines (from its ``def`` to its last line, its
  docstring not counted) unless its docstring gives the reason in a sentence starting with
  ``LONG_MARKER``.

Known faults would be listed below (there are none). A list entry that no longer matches a
fault fails the test too, so the lists only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import tsmcli

PACKAGE = Path(__file__).resolve().parents[1] / "tsmcli"
LAYERS = {
    "errors": 0,
    "resources": 0,
    "fileio": 0,
    "schema": 0,
    "zoo": 0,
    "zoo_cache": 0,
    "zoo_check": 0,
    "choices": 0,
    "view_request": 0,
    "data": 1,
    "model": 1,
    "recipe": 2,
    "engine": 3,
    "cli": 4,
    "commands": 4,
    "showcase": 4,
    "__main__": 4,
}
SIDE_BY_SIDE = {"data", "model"}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
LONG_MARKER = "Long because"

# Known faults: none.
KNOWN_CLIMBS: set[tuple[str, str]] = set()
KNOWN_SIDEWAYS: set[tuple[str, str]] = set()
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_LONG_MODULES: set[str] = set()
KNOWN_LONG_FUNCTIONS: set[str] = set()


# ---------------------------------------------------------------------------- reading the source


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = _sources()


def _imports(module: str, tree: ast.AST, known: dict[str, Path]) -> Iterator[str]:
    """The package modules ``module`` imports anywhere in ``tree`` (``known``: every module)."""
    is_package = known[module].name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("tsmcli"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            if not base.startswith("tsmcli"):
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    yield f"{base}.{alias.name}"  # a submodule
                elif base == "tsmcli" and alias.name in tsmcli._API:
                    yield tsmcli._API[alias.name]  # the lazy API: where the name lives
                else:
                    yield base


def _edges(known: dict[str, Path]) -> set[tuple[str, str]]:
    """``(importer, imported)`` between the modules; the lazy API ``tsmcli`` is left out."""
    edges = set()
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for target in _imports(module, tree, known):
            if target != module and "tsmcli" not in (module, target):
                edges.add((module, target))
    return edges


def _layer(module: str) -> tuple[str, int]:
    """``(room, floor)`` of a module: ``tsmcli.data.lists`` -> ``("data", 1)``."""
    top = module.split(".")[1]
    return top, LAYERS[top]


def _cycles(edges: set[tuple[str, str]]) -> set[frozenset[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    graph: dict[str, list[str]] = {}
    for src, dst in sorted(edges):
        graph.setdefault(src, []).append(dst)
        graph.setdefault(dst, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                found.add(frozenset(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _functions(tree: ast.AST, prefix: str) -> Iterator[tuple[str, ast.FunctionDef]]:
    """``(qualified name, node)`` of every function and method, nested ones too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield f"{prefix}.{node.name}", node
            yield from _functions(node, f"{prefix}.{node.name}")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}.{node.name}")
        else:
            yield from _functions(node, prefix)


def _function_lines(node: ast.FunctionDef) -> int:
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if ast.get_docstring(node) is not None:
        lines -= first.end_lineno - first.lineno + 1
    return lines


# ---------------------------------------------------------------------------- the rules


EDGES = _edges(MODULES)


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if m != "tsmcli" and m.split(".")[1] not in LAYERS]
    assert unplaced == [], f"add them to LAYERS in {__file__}"


def test_no_import_climbs_a_floor():
    climbs = {(src, dst) for src, dst in EDGES if _layer(dst)[1] > _layer(src)[1]}
    assert climbs == KNOWN_CLIMBS


def test_data_and_model_never_import_each_other():
    sideways = {
        (src, dst) for src, dst in EDGES if {_layer(src)[0], _layer(dst)[0]} == SIDE_BY_SIDE
    }
    assert sideways == KNOWN_SIDEWAYS


def test_no_import_cycle():
    assert _cycles(EDGES) == KNOWN_CYCLES


def test_no_module_is_longer_than_the_limit():
    long = {
        module
        for module, path in MODULES.items()
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_MODULE_LINES
    }
    assert long == KNOWN_LONG_MODULES


def test_no_function_is_longer_than_the_limit_without_a_reason():
    long = set()
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, node in _functions(tree, module):
            reason = LONG_MARKER in (ast.get_docstring(node) or "")
            if _function_lines(node) > MAX_FUNCTION_LINES and not reason:
                long.add(name)
    assert long == KNOWN_LONG_FUNCTIONS


# ---------------------------------------------------------------------------- the reader itself


def test_the_reader_sees_hidden_relative_and_lazy_api_imports_and_cycles(tmp_path):
    source = {
        "tsmcli/__init__.py": "",
        "tsmcli/data/__init__.py": "",
        "tsmcli/data/a.py": (
            "from . import b\n"
            "def f():\n"
            "    from tsmcli.engine import run\n"
            "    import tsmcli.recipe\n"
            "    from tsmcli import build_list, __version__\n"
        ),
        "tsmcli/data/b.py": "from .a import f\nfrom tsmcli.errors import TSMError\n",
        "tsmcli/engine/__init__.py": "",
        "tsmcli/engine/run.py": "",
        "tsmcli/recipe.py": "",
        "tsmcli/errors.py": "",
    }
    for name, text in source.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    known = {
        name.removesuffix(".py").removesuffix("/__init__").replace("/", "."): tmp_path / name
        for name in source
    }
    edges = _edges(known)
    assert edges == {
        ("tsmcli.data.a", "tsmcli.data.b"),
        ("tsmcli.data.a", "tsmcli.engine.run"),
        ("tsmcli.data.a", "tsmcli.recipe"),
        ("tsmcli.data.a", tsmcli._API["build_list"]),
        ("tsmcli.data.b", "tsmcli.data.a"),
        ("tsmcli.data.b", "tsmcli.errors"),
    }
    assert _cycles(edges) == {frozenset({"tsmcli.data.a", "tsmcli.data.b"})}


@pytest.mark.parametrize(
    ("body", "lines"),
    [("    return 1\n", 2), ('    """Doc.\n\n    More."""\n    x = 1\n    return x\n', 3)],
)
def test_function_length_counts_code_not_the_docstring(body, lines):
    node = ast.parse("def f():\n" + body).body[0]
    assert _function_lines(node) == lines
