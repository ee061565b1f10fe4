#!/usr/bin/env python3
"""Architecture metrics of an AlgoTerm source tree: `python .ci/architecture_report.py [PROJECT_ROOT] [--details]`.

Reads the source with `ast` only (nothing is imported or executed), so it runs on any checkout. What it counts:

Modules
    Every `.py` file under the top-level packages (PACKAGES), except tests (`tests/` folders, `test_*.py`,
    `conftest.py`, the shared test helpers `algoterm/testing.py`) and migrations (generated code).
    Module names are dotted paths (`orders.services.placement`).

Import edges
    `import a.b.c` and `from a.b import c` point at the deepest project module the statement names (`a.b.c` when
    that is a module, else `a.b`); relative imports are resolved. Imports guarded by `if TYPE_CHECKING:` are
    ignored. An import is *module-level* unless it sits inside a function body; imports from outside the project
    (stdlib, third-party) are not edges.

App
    The first component of the module name, except inside the project package, where `algoterm.core`,
    `algoterm.console` and `algoterm.sandbox` are apps of their own, the loose modules still waiting to move count
    with the app of their floor (below), and the rest is `algoterm`, the composition root.

Floor
    Ordered from the ground up (FLOORS), as in `.importlinter`: core (conventions every app may use), accounts,
    billing, brokers, marketdata, orders, rms, strategies, console, then the composition root (settings, URLs,
    ASGI/WSGI, Celery, routing, process entry points). Project-package modules are placed by name (CORE_MODULES,
    CONSOLE_MODULES, ROOT_MODULES) so the same report works before and after they move into sub-packages. The
    sandbox stands beside the floors: production modules must never import it.

Rows of the report
    cycles (module graph)       strongly connected components with more than one module in the graph of
                                module-level imports (the cycles that can break at import time), and the same
                                for all imports including function-level ones (the design cycles).
    cycles (app graph)          the same on the graph of apps (an edge when any module of one imports the other),
                                leaving out the composition root: it imports every app by design, and an import
                                into it from below is counted as an upward import.
    upward imports              import statements (module- or function-level) from a module on a lower floor to a
                                module on a higher floor, plus production modules importing the sandbox; the
                                composition root is exempt (it sits above everything).
    function-level imports      project imports inside a function body: total, and those whose target is in
                                another app.
    cross-app model queries     in a module of app A, an attribute `.objects`, `._default_manager` or
                                `._base_manager` taken on a name that was imported from another app's `models`
                                module (`from b.models import X` ... `X.objects`, or `import b.models as m` ...
                                `m.X.objects`). Each occurrence counts once. Reverse relations
                                (`user.orders.filter`) are not visible to a static scan and are not counted.
    imports into internals      import statements of app A (composition root and sandbox exempt) whose target is
                                a module of another app that is not its package root, `services`, `selectors`,
                                `signals`, `hooks` (or a submodule of those), one of the app's public
                                vocabulary modules (PUBLIC_MODULES), nor on the core floor.
    largest modules             the ten longest modules (physical lines) and how many exceed MAX_LINES.

`--details` lists every counted item after the table.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("algoterm", "accounts", "brokers", "orders", "strategies", "rms", "billing", "marketdata")
SUB_APPS = ("core", "console", "sandbox")
MAX_LINES = 800

FLOORS = (
    "core",
    "accounts",
    "billing",
    "brokers",
    "marketdata",
    "orders",
    "rms",
    "strategies",
    "console",
    "root",
)
# Project-package modules (before or after a move into algoterm.core / algoterm.console) by floor.
CORE_MODULES = (
    "algoterm.core",
    "algoterm.api",
    "algoterm.ids",
    "algoterm.crypto",
    "algoterm.logging",
    "algoterm.realtime",
    "algoterm.request_context",
    "algoterm.channel_layer",
    "algoterm.failpoints",
    "algoterm.outages",
    "algoterm.locking",
    "algoterm.tasking",
    "algoterm.models",
    "algoterm.admin_mixins",
    "algoterm.system",
    "algoterm.metrics",
    "algoterm.config",
    "algoterm.migrations",
)
CONSOLE_MODULES = (
    "algoterm.console",
    "algoterm.dashboard",
    "algoterm.system_api",
    "algoterm.config_api",
    "algoterm.ops_api",
    "algoterm.views",
    "algoterm.admin",
    "algoterm.tasks",
    "algoterm.health",
    "accounts.admin_api",
)
ROOT_MODULES = (
    "algoterm",
    "algoterm.settings",
    "algoterm.urls",
    "algoterm.system_urls",
    "algoterm.config_urls",
    "algoterm.ops_urls",
    "algoterm.asgi",
    "algoterm.wsgi",
    "algoterm.routing",
    "algoterm.celery",
    "algoterm.apps",
    "algoterm.supervisor",
    "algoterm.embedded",
    "algoterm.scheduling",
    "algoterm.management",
)
PUBLIC_SUBMODULES = ("services", "selectors", "signals", "hooks")
# Each app's public surface beyond those (README, "Architecture"): model classes and choices (queries are counted
# above), and its vocabulary modules.
PUBLIC_MODULES = (
    "accounts.models",
    "accounts.authentication",
    "accounts.profile",
    "accounts.validators",
    "billing.models",
    "billing.profile",
    "brokers.models",
    "brokers.protocol",
    "brokers.gateway",
    "brokers.prices",
    "brokers.instruments",
    "brokers.symbols",
    "brokers.protection",
    "brokers.sessions",
    "marketdata.models",
    "marketdata.calendar",
    "marketdata.instruments",
    "marketdata.quotes",
    "marketdata.candles",
    "marketdata.chain",
    "marketdata.options",
    "orders.models",
    "rms.models",
    "strategies.models",
)
MANAGER_ATTRIBUTES = ("objects", "_default_manager", "_base_manager")


def _matches(module: str, prefixes: tuple[str, ...]) -> str | None:
    best = None
    for prefix in prefixes:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


def app_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "algoterm":
        return parts[0]
    if len(parts) > 1 and parts[1] in SUB_APPS:
        return f"algoterm.{parts[1]}"
    # Loose modules of the project package count with the app of their floor (they move there).
    return {"core": "algoterm.core", "console": "algoterm.console"}.get(_floor_by_name(module), "algoterm")


def _floor_by_name(module: str) -> str | None:
    candidates = [
        (prefix, floor)
        for prefixes, floor in ((CORE_MODULES, "core"), (CONSOLE_MODULES, "console"), (ROOT_MODULES, "root"))
        if (prefix := _matches(module, prefixes))
    ]
    return max(candidates, key=lambda item: len(item[0]))[1] if candidates else None


def floor_of(module: str) -> str | None:
    """The floor name, or None for the sandbox (beside the floors)."""
    app = app_of(module)
    if app == "algoterm.sandbox":
        return None
    return _floor_by_name(module) or (app if app in FLOORS else "root")


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    function_level: bool


def is_test_or_generated(relative: Path) -> bool:
    parts = relative.parts
    return (
        "tests" in parts
        or "migrations" in parts
        or relative.name.startswith("test_")
        or relative.name == "conftest.py"
        or relative.as_posix() == "algoterm/testing.py"
    )


def discover(root: Path) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            if is_test_or_generated(relative):
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class ModuleScan(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.depth = 0
        self.imports: list[Import] = []
        self.model_names: dict[str, str] = {}  # local name -> the other app's models module it came from
        self.model_modules: dict[str, str] = {}  # local alias -> models module
        self.model_queries: list[tuple[int, str]] = []

    def _resolve(self, name: str) -> str | None:
        while name:
            if name in self.known:
                return name
            name = name.rpartition(".")[0]
        return None

    def _add(self, target: str | None, node: ast.stmt) -> None:
        if target and target != self.module:
            self.imports.append(Import(self.module, target, node.lineno, self.depth > 0))

    def _note_models(self, source: str, local: str, name: str | None) -> None:
        if source.endswith(".models") and app_of(source) != app_of(self.module) and source.split(".")[0] in PACKAGES:
            if name is None:
                self.model_modules[local] = source
            else:
                self.model_names[local] = source

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] not in PACKAGES:
                continue
            self._add(self._resolve(alias.name), node)
            if alias.asname:
                self._note_models(alias.name, alias.asname, None)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source.split(".")[0] not in PACKAGES:
            return
        for alias in node.names:
            self._add(self._resolve(f"{source}.{alias.name}"), node)
            local = alias.asname or alias.name
            if f"{source}.{alias.name}".endswith(".models") and f"{source}.{alias.name}" in self.known:
                self._note_models(f"{source}.{alias.name}", local, None)
            else:
                self._note_models(source, local, alias.name)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in MANAGER_ATTRIBUTES:
            value = node.value
            if isinstance(value, ast.Name) and value.id in self.model_names:
                self.model_queries.append((node.lineno, f"{self.model_names[value.id]}.{value.id}"))
            elif (
                isinstance(value, ast.Attribute)
                and isinstance(value.value, ast.Name)
                and value.value.id in self.model_modules
            ):
                self.model_queries.append((node.lineno, f"{self.model_modules[value.value.id]}.{value.attr}"))
        self.generic_visit(node)


def strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components with more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
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
                    components.append(sorted(component))
    return sorted(components, key=lambda c: (-len(c), c))


def analyse(root: Path) -> dict:
    modules = discover(root)
    known = set(modules)
    imports: list[Import] = []
    model_queries: list[tuple[str, int, str]] = []
    lines: dict[str, int] = {}
    for module, path in modules.items():
        source = path.read_text(encoding="utf-8")
        lines[module] = len(source.splitlines())
        scan = ModuleScan(module, path.name == "__init__.py", known)
        scan.visit(ast.parse(source, filename=str(path)))
        imports.extend(dict.fromkeys(scan.imports))  # one per statement and target
        model_queries.extend((module, line, what) for line, what in scan.model_queries)

    def graph(selected: list[Import], key) -> tuple[set[str], dict[str, set[str]]]:
        edges: dict[str, set[str]] = defaultdict(set)
        for item in selected:
            source, target = key(item.importer), key(item.target)
            if source != target:
                edges[source].add(target)
        return {key(m) for m in modules}, edges

    top_level = [i for i in imports if not i.function_level]

    def without_root(selected: list[Import]) -> list[Import]:
        return [i for i in selected if "algoterm" not in (app_of(i.importer), app_of(i.target))]

    identity = lambda name: name  # noqa: E731

    rank = {floor: position for position, floor in enumerate(FLOORS)}
    upward = []
    for item in imports:
        source_floor, target_floor = floor_of(item.importer), floor_of(item.target)
        if source_floor == "root" or app_of(item.importer) == "algoterm.sandbox":
            continue
        if target_floor is None or rank[target_floor] > rank[source_floor]:
            upward.append(item)

    function_level = [i for i in imports if i.function_level]
    function_cross_app = [i for i in function_level if app_of(i.importer) != app_of(i.target)]

    def is_internal(item: Import) -> bool:
        source_app, target_app = app_of(item.importer), app_of(item.target)
        if source_app == target_app or floor_of(item.importer) == "root" or source_app == "algoterm.sandbox":
            return False
        if floor_of(item.target) in ("core", "root"):
            return False
        rest = item.target.split(".")[len(target_app.split(".")) :]
        if _matches(item.target, PUBLIC_MODULES):
            return False
        return bool(rest) and rest[0] not in PUBLIC_SUBMODULES

    internals = [i for i in imports if is_internal(i)]
    largest = sorted(lines.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "modules": len(modules),
        "module_cycles_top": strongly_connected(*graph(top_level, identity)),
        "module_cycles_all": strongly_connected(*graph(imports, identity)),
        "app_cycles_top": strongly_connected(*graph(without_root(top_level), app_of)),
        "app_cycles_all": strongly_connected(*graph(without_root(imports), app_of)),
        "upward": upward,
        "function_level": function_level,
        "function_cross_app": function_cross_app,
        "model_queries": model_queries,
        "internals": internals,
        "largest": largest[:10],
        "over_limit": [kv for kv in largest if kv[1] > MAX_LINES],
    }


def _cycles(components: list[list[str]], unit: str = "modules") -> str:
    return f"{len(components)} ({sum(map(len, components))} {unit})" if components else "0"


def report(root: Path, details: bool) -> str:
    result = analyse(root)
    rows = [
        ("modules scanned (non-test, non-migration)", str(result["modules"])),
        ("module cycles, module-level imports: SCCs (modules)", _cycles(result["module_cycles_top"])),
        ("module cycles, all imports: SCCs (modules)", _cycles(result["module_cycles_all"])),
        ("app cycles, module-level imports: SCCs (apps)", _cycles(result["app_cycles_top"], "apps")),
        ("app cycles, all imports: SCCs (apps)", _cycles(result["app_cycles_all"], "apps")),
        ("upward imports (against the floor order)", str(len(result["upward"]))),
        ("function-level project imports: total", str(len(result["function_level"]))),
        ("function-level project imports: across apps", str(len(result["function_cross_app"]))),
        ("cross-app model queries/writes", str(len(result["model_queries"]))),
        ("imports into another app's internals", str(len(result["internals"]))),
        (f"modules over {MAX_LINES} lines", str(len(result["over_limit"]))),
    ]
    width = max(len(label) for label, _ in rows)
    out = [f"{'metric'.ljust(width)} | value", f"{'-' * width}-|------"]
    out += [f"{label.ljust(width)} | {value}" for label, value in rows]
    out.append("")
    out.append("largest non-test modules:")
    out += [f"  {count:5d}  {module}" for module, count in result["largest"]]
    out.append("")
    for title, key in (
        ("module cycles (module-level imports)", "module_cycles_top"),
        ("app cycles (module-level imports)", "app_cycles_top"),
        ("app cycles (all imports)", "app_cycles_all"),
    ):
        out.append(f"{title}:")
        out += [f"  {' <-> '.join(component)}" for component in result[key]] or ["  none"]
    if details:
        out.append("\nmodule cycles (all imports):")
        out += [f"  {' <-> '.join(c)}" for c in result["module_cycles_all"]] or ["  none"]
        for title, key in (
            ("upward imports", "upward"),
            ("function-level imports across apps", "function_cross_app"),
            ("imports into another app's internals", "internals"),
        ):
            out.append(f"\n{title}:")
            out += [
                f"  {i.importer}:{i.line} -> {i.target} [{floor_of(i.importer)} -> {floor_of(i.target) or 'sandbox'}]"
                for i in result[key]
            ]
        out.append("\ncross-app model queries:")
        out += [f"  {module}:{line} {what}" for module, line, what in result["model_queries"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=".", type=Path)
    parser.add_argument("--details", action="store_true", help="list every counted item")
    arguments = parser.parse_args(argv)
    sys.stdout.write(report(arguments.root.resolve(), arguments.details) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
