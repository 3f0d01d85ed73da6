"""How the code is put together, held true: the import graph (layers, no circles) and who owns
each journal table. Both read the source with ``ast``; the layers come from docs/design.md."""

from __future__ import annotations

import ast
import fnmatch
import json
import pickle
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pytest

from edgehub.config import load_config
from edgehub.hub import Hub
from edgehub.store.schema import JOURNAL
from tests.conftest import ALL_TABLES, REPO, write_config

DESIGN = REPO / "docs" / "design.md"
PACKAGES = ("edgehub", "drivers")


# --- the import graph ------------------------------------------------------------------------------


def modules(root: Path = REPO) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


# Parses in a fresh child process and hands the trees back pickled: in a long-lived pytest-xdist
# worker that had run other files, CPython 3.11.7's ast.parse failed with "AST constructor
# recursion depth mismatch" (SystemError), a fault of the interpreter's state, not of the source.
_PARSE = ("import ast, json, pickle, sys; "
          "sys.stdout.buffer.write(pickle.dumps([ast.parse(s) for s in json.load(sys.stdin)]))")


def parse_all(sources: Sequence[str]) -> list[ast.Module]:
    done = subprocess.run([sys.executable, "-c", _PARSE], input=json.dumps(list(sources)).encode(),
                          capture_output=True, check=True, timeout=120)
    trees: list[ast.Module] = pickle.loads(done.stdout)
    return trees


def _target(name: str, known: Mapping[str, object]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, tree: ast.Module, known: Mapping[str, object], is_package: bool) -> set[str]:
    """The project modules a module imports: anywhere in it (in a function, under
    TYPE_CHECKING), each ``from a import b`` counted as ``a.b`` when that is a module."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            module = _target(target, known)
            if module is not None and module != name:
                found.add(module)
    return found


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    known = modules(root)
    trees = parse_all([path.read_text() for path in known.values()])
    return {name: imports_of(name, tree, known, path.name == "__init__.py")
            for (name, path), tree in zip(known.items(), trees, strict=True)}


def layers(text: str) -> list[tuple[str, list[str]]]:
    """The layer table of docs/design.md, from the top: (layer, module patterns)."""
    block = re.search(r"<!-- layers:.*?-->\s*```text\n(.*?)```", text, re.S)
    assert block, "docs/design.md has no layers block"
    table: list[tuple[str, list[str]]] = []
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        if line[0] != " ":
            layer, _, rest = line.partition(" ")
            table.append((layer, rest.split()))
        else:
            table[-1][1].extend(line.split())
    return table


def layer_of(module: str, table: list[tuple[str, list[str]]]) -> int | None:
    """The layer (0 at the top) of the most specific pattern that names ``module``."""
    best: tuple[int, int] | None = None  # (specificity, layer)
    for rank, (_, patterns) in enumerate(table):
        for pattern in patterns:
            if fnmatch.fnmatchcase(module, pattern):
                specific = len(pattern.replace("*", ""))
                if best is None or specific > best[0]:
                    best = (specific, rank)
    return best[1] if best is not None else None


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every circle (strongly connected part of more than one node, or a node on itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1 or v in graph.get(v, ()):
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_graph(graph: Mapping[str, Iterable[str]], table: list[tuple[str, list[str]]] | None = None
                  ) -> dict[str, set[str]]:
    """The graph between the first-level packages and modules (``edgehub.kitchen``, ``drivers``),
    without the modules of the top layer (commands, and the pair's node, which runs hubs): they
    sit above every package by design, wherever their file is."""

    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    entry = {m for m in graph if table is not None and layer_of(m, table) == 0}
    out: dict[str, set[str]] = {}
    for a, targets in graph.items():
        if a in entry:
            continue
        out.setdefault(top(a), set()).update(top(b) for b in targets if top(b) != top(a) and b not in entry)
    return out


def wrong_way(graph: Mapping[str, Iterable[str]], table: list[tuple[str, list[str]]]) -> list[str]:
    """Imports from a lower layer to a higher one, and modules without a layer."""
    problems = []
    names = [layer for layer, _ in table]
    for module in sorted(graph):
        mine = layer_of(module, table)
        if mine is None:
            problems.append(f"{module}: no layer in docs/design.md")
            continue
        for target in sorted(graph[module]):
            theirs = layer_of(target, table)
            if theirs is not None and theirs < mine:
                problems.append(f"{module} ({names[mine]}) imports {target} ({names[theirs]})")
    return problems


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_no_circle_between_modules(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_no_circle_between_packages(graph: dict[str, set[str]]) -> None:
    assert cycles(package_graph(graph, layers(DESIGN.read_text()))) == []


def test_every_import_goes_down_the_layers_of_the_design(graph: dict[str, set[str]]) -> None:
    assert wrong_way(graph, layers(DESIGN.read_text())) == []


def test_the_checks_see_a_wrong_way_arrow_and_a_circle() -> None:
    table = layers(DESIGN.read_text())
    # The store reaching into the kitchen (what retention once did), and roles <-> print queue.
    sneaky = {"edgehub.store.retention": {"edgehub.kitchen.tickets"}, "edgehub.kitchen.tickets": set(),
              "edgehub.roles.roles": {"edgehub.roles.printqueue"},
              "edgehub.roles.printqueue": {"edgehub.roles.roles"}}
    assert wrong_way(sneaky, table) == [
        "edgehub.store.retention (platform) imports edgehub.kitchen.tickets (components)"]
    assert cycles(sneaky) == [["edgehub.roles.printqueue", "edgehub.roles.roles"]]
    assert wrong_way({"edgehub.newthing": set()}, table) == ["edgehub.newthing: no layer in docs/design.md"]


def test_an_import_inside_a_function_or_for_types_counts() -> None:
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edgehub.hub import Hub\n"
              "def f():\n    from edgehub.kitchen import tickets\n")
    known = {"edgehub.hub": 1, "edgehub.kitchen": 1, "edgehub.kitchen.tickets": 1}
    (tree,) = parse_all([source])
    assert imports_of("edgehub.store.x", tree, known, False) == {"edgehub.hub", "edgehub.kitchen.tickets"}


# --- who owns each table ---------------------------------------------------------------------------

SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|REPLACE)\b")
TABLE_REF = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE|EXISTS|ON)\s+([A-Za-z_][A-Za-z0-9_]*)")


def sql_tables(tree: ast.Module) -> set[str]:
    """The tables named in the SQL text of a module (its string literals and f-strings)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):  # a formatted part stands for a name given elsewhere
            text = "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else " {} "
                           for v in node.values)
        else:
            continue
        if SQL.search(text):
            found |= {m.group(1) for m in TABLE_REF.finditer(text)}
    return found


def owners() -> dict[str, str]:
    """Table -> the package that owns it, from the tables each component of a real hub declares."""
    hub = Hub(load_config(write_config(Path("/nonexistent-edgehub-test/box"))))
    owned = {name: "edgehub.store" for name in JOURNAL.names}
    for component in hub.components:
        package = ".".join(type(component).__module__.split(".")[:2])
        for tables in component.tables():
            for name in tables.names:
                assert name not in owned, f"{name} is owned twice"
                owned[name] = package
    return owned


# Modules that copy the journal as a whole, whatever owns each row: a pair's replication, its
# standby's copy and the salvage of what a box took alone (docs/pair.md).
WHOLE_JOURNAL = ("edgehub.pair",)


def foreign_sql(sources: Mapping[str, str], owned: Mapping[str, str]) -> list[str]:
    """Modules whose SQL names a table another package owns, or a table nobody owns."""
    problems = []
    names = sorted(n for n in sources if not any(n == w or n.startswith(w + ".") for w in WHOLE_JOURNAL))
    for module, tree in zip(names, parse_all([sources[n] for n in names]), strict=True):
        for table in sorted(sql_tables(tree)):
            owner = owned.get(table)
            if owner is None:
                if table.lower() not in SQL_WORDS:
                    problems.append(f"{module}: table {table} has no owner")
            elif module != owner and not module.startswith(owner + "."):
                problems.append(f"{module}: SQL on {table}, which {owner} owns")
    return problems


# What the pattern takes for a table where none is: SQL words (ON CONFLICT, DO UPDATE SET, IF NOT
# EXISTS), SQLite's own tables and table functions, a trigger's NEW and OLD rows.
SQL_WORDS = {"conflict", "set", "select", "if", "sqlite_master", "sqlite_sequence", "json_each", "new", "old"}


def test_each_table_is_read_and_written_by_its_owner_alone() -> None:
    sources = {name: path.read_text() for name, path in modules().items()}
    assert foreign_sql(sources, owners()) == []


def test_the_check_sees_a_module_reading_another_components_table() -> None:
    owned = owners()
    sources = {
        "edgehub.kitchen.kitchen": 'def f(conn):\n    return conn.execute("SELECT state FROM payments")\n',
        "edgehub.support": 'Q = f"SELECT role FROM {x} JOIN role_bindings USING (role)"\n',
        "edgehub.roles.payments": 'conn.execute("UPDATE payments SET state=? WHERE payment_id=?")\n',
    }
    assert foreign_sql(sources, owned) == [
        "edgehub.kitchen.kitchen: SQL on payments, which edgehub.roles owns",
        "edgehub.support: SQL on role_bindings, which edgehub.roles owns",
    ]


def test_the_tests_list_of_tables_is_the_hubs() -> None:
    hub = Hub(load_config(write_config(Path("/nonexistent-edgehub-test/box"))))
    assert [t for c in hub.components for t in c.tables()] == list(ALL_TABLES)
