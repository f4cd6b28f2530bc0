"""The import graph of ``src/ppmech`` points one way: no circles, no arrow up the layers.

Every module of the package is parsed (never imported) and each of its imports of a
``ppmech`` module becomes an arrow: top-level, function-level and ``TYPE_CHECKING``
imports alike (a type-only import is still a dependency of the design), relative ones
resolved, and a module named by a string literal in a module that calls
``importlib.import_module`` (the package's lazy public surface, the CLI's command list).

Each module sits in one layer of :data:`LAYERS` (the longest matching prefix decides,
so a new module inside a package inherits the package's layer; a new top-level module
must be added to the table). The test fails on:

* a module that no row of the table covers;
* an import circle, of any length;
* an arrow from a lower layer to a higher one;
* an arrow from the read-only layer (analyses, claims, figures, report, tracking) to
  anything that loads or runs a model: only :data:`READ_ONLY_MAY_USE` of the layers
  between it and the foundation.

:data:`KNOWN_VIOLATIONS` lists arrows not yet fixed. It may only shrink: the test fails
when a listed arrow no longer exists or is no longer a violation, so the list cannot rot.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from pathlib import Path

import ppmech

PACKAGE_DIR = Path(ppmech.__file__).resolve().parent

#: ``(layer, why it sits there, module prefixes)``, from the bottom up. A module may import
#: from its own layer (without a circle) and from any layer below it, never from one above.
LAYERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "foundation",
        # Pure math and statistics, and the utilities every layer uses: errors, settings and
        # their roles, versions, the one output-write rule, tables, console notes and progress.
        # Nothing here loads a model or knows a run directory's layout.
        "pure math, statistics and base utilities",
        (
            "ppmech.errors",
            "ppmech.settings",
            "ppmech.run_settings",
            "ppmech.provenance",
            "ppmech.progress",
            "ppmech.artifacts",
            "ppmech.tables",
            "ppmech.mechanics",
            "ppmech.statistics",
            "ppmech.nulls",
            "ppmech.monitor.scoring",
            "ppmech.monitor.detection",
        ),
    ),
    (
        "models",
        # Getting a model and its inputs: loading, identity, architectures (the readout),
        # where a model runs (--device), and the prompt corpora.
        "model access",
        ("ppmech.models", "ppmech.corpus"),
    ),
    (
        "engine",
        # The one decoding loop and what it needs: sampling, hook points, the compiled
        # step, batch sizing. It decodes; it does not decide what to record.
        "the decoding engine",
        ("ppmech.engine",),
    ),
    (
        "recording",
        # What runs a model to produce per-step results: the trajectory recorder, steering
        # (Algorithm 1, baselines, steered generation, judges), the monitor's stream and its
        # calibration, the per-layer lens.
        "recording",
        ("ppmech.engine.recorder", "ppmech.steering", "ppmech.monitor", "ppmech.claims.layers"),
    ),
    (
        "store",
        # The run store (run directories: read and write) and the commands that record into
        # a store: measure, steer, evaluate-steering, the monitor benchmark.
        "the run store",
        (
            "ppmech.runs",
            "ppmech.measure",
            "ppmech.steering.run",
            "ppmech.steering.evaluation",
            "ppmech.monitor.benchmark",
        ),
    ),
    (
        "analyses",
        # Everything that reads stored runs only: analyses, the claims ledger and its rules,
        # figures and the report, experiment tracking. Never runs a model (see READ_ONLY_MAY_USE).
        "analyses, claims, figures, report, tracking (read stored runs only)",
        ("ppmech.claims", "ppmech.report", "ppmech.tracking"),
    ),
    (
        "orchestrators",
        # What plans and drives the others: verify's planner, the sweep runner, the CLI,
        # and the package's public surface (it re-exports measure and load_model).
        "orchestrators",
        ("ppmech", "ppmech.__main__", "ppmech.claims.verify", "ppmech.sweep", "ppmech.cli"),
    ),
)

#: The read-only layer may use these modules from the layers between it and the foundation:
#: plain data and pure formulas, and the run store's reader. Nothing that loads or runs a model.
READ_ONLY_LAYER = "analyses"
READ_ONLY_MAY_USE: frozenset[str] = frozenset(
    {"ppmech.models.identity", "ppmech.models.architectures", "ppmech.runs"}
)

#: Arrows not fixed yet: ``(importer, imported)``. Must shrink to empty; see the module docstring.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


# --------------------------------------------------------------------------- the graph


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _owner(name: str, modules: Iterable[str]) -> str | None:
    """The module that ``name`` (a module, or a name inside one) belongs to."""
    known = set(modules)
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The ``ppmech`` modules that ``module`` imports (see the module docstring)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str | None] = set()
    dynamic = False
    strings: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(
                _owner(alias.name, modules) for alias in node.names if alias.name.startswith("ppmech")
            )
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "ppmech":
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                # `from ppmech.engine import recorder` imports a module; `from ppmech.x import f` a name.
                found.add(full if full in modules else _owner(source, modules))
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            dynamic = True
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # A dotted module name only: the bare "ppmech" is a word in messages, not an import.
            strings.add(node.value)
    strings = {name for name in strings if "." in name and name in modules}
    if dynamic:
        found.update(strings)
    found.discard(module)
    return {name for name in found if name is not None}


@functools.cache
def import_graph() -> dict[str, set[str]]:
    files = module_files()
    names = set(files)
    return {module: imports_of(module, path, names) for module, path in files.items()}


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of the longest prefix that covers ``module``."""
    best: tuple[int, int] | None = None
    for index, (_, _, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # The root package covers only itself: a new top-level module needs its own row.
            covers = module == prefix or (prefix != "ppmech" and module.startswith(prefix + "."))
            if covers and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def arrow_problem(graph: dict[str, set[str]], src: str, dst: str) -> str | None:
    """Why the arrow ``src -> dst`` breaks the layering (``None`` when it does not)."""
    a, b = layer_of(src), layer_of(dst)
    assert a is not None and b is not None
    if b > a:
        return f"goes up from {LAYERS[a][0]} to {LAYERS[b][0]}"
    if LAYERS[a][0] == READ_ONLY_LAYER and 0 < b < a and dst not in READ_ONLY_MAY_USE:
        return f"the read-only layer uses {LAYERS[b][0]} (may use only {sorted(READ_ONLY_MAY_USE)})"
    if reaches(graph, dst, src):
        return "closes an import circle"
    return None


# --------------------------------------------------------------------------- tests


def test_the_graph_is_built_from_real_imports() -> None:
    graph = import_graph()
    # A top-level, a function-level, a relative-free `from a.b import c` and a lazy string import.
    assert "ppmech.errors" in graph["ppmech.engine.decoder"]
    assert "ppmech.measure" in graph["ppmech"]  # the lazy public surface, by string
    assert "ppmech.mechanics" in graph["ppmech.engine.recorder"]
    assert len(graph) > 50


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in import_graph() if layer_of(m) is None)
    assert not missing, f"modules without a layer (add them to LAYERS in {__file__}): {missing}"


def test_no_circles_and_no_arrow_up_the_layers() -> None:
    graph = import_graph()
    pruned = {src: {dst for dst in dsts if (src, dst) not in KNOWN_VIOLATIONS} for src, dsts in graph.items()}
    problems = [
        f"{src} -> {dst}: {why}"
        for src in sorted(pruned)
        for dst in sorted(pruned[src])
        if (why := arrow_problem(pruned, src, dst)) is not None
    ]
    assert not cycles(pruned), f"import circles: {cycles(pruned)}"
    assert not problems, "arrows that break the layers:\n" + "\n".join(problems)


def test_known_violations_still_exist() -> None:
    """A fixed violation must leave :data:`KNOWN_VIOLATIONS` (the list only shrinks)."""
    graph = import_graph()
    stale = sorted(
        (src, dst)
        for src, dst in KNOWN_VIOLATIONS
        if dst not in graph.get(src, set()) or arrow_problem(graph, src, dst) is None
    )
    assert not stale, f"fixed: remove these from KNOWN_VIOLATIONS: {stale}"


def test_the_checker_catches_a_circle_and_an_upward_arrow() -> None:
    graph = {"ppmech.mechanics": {"ppmech.runs"}, "ppmech.runs": {"ppmech.mechanics"}}
    assert cycles(graph) == [["ppmech.mechanics", "ppmech.runs"]]
    assert arrow_problem(graph, "ppmech.mechanics", "ppmech.runs") == "goes up from foundation to store"
    assert arrow_problem({}, "ppmech.report.build", "ppmech.engine.decoder") is not None
    assert arrow_problem({}, "ppmech.report.build", "ppmech.runs") is None
    assert layer_of("ppmech.engine.recorder") == 3 and layer_of("ppmech.engine.decoder") == 2
    assert layer_of("ppmech.brand_new_module") is None
