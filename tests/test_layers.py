"""Imports point down: every import in src/vlmops agrees with the layer order in vlmops' docstring.

The order is written once, in `vlmops.__doc__` ("Layers, top to bottom"); this test reads it there.
Imports inside functions and under `if TYPE_CHECKING:` count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import vlmops

SRC = Path(vlmops.__file__).parent
BASE = "base"  # the layer of the modules at the package's top level (config, errors, ...)

# Upward imports known today, each with the issue item that removes it. The test asserts this is
# exactly the current set, so a new upward import fails, and so does fixing one without deleting it.
KNOWN: set[tuple[str, str]] = {
    # the deprecated to_rgb_on_white shim forwards to models.preprocess.to_rgb; goes with the shim
    ("vlmops.data.images", "vlmops.models.preprocess"),
}


def layer_order(doc: str | None = vlmops.__doc__) -> list[set[str]]:
    """The layers, top first, as written in the package docstring (a layer may name several packages)."""
    block = re.search(r"Layers, top to bottom.*?\n\n(.*?)(?:\n\n|\Z)", doc or "", re.S)
    assert block, "vlmops.__doc__ must hold a 'Layers, top to bottom' block"
    layers = []
    for line in block.group(1).splitlines():
        names = re.split(r"\s{2,}", line.strip())[0]
        layers.append({name.strip() for name in names.split(",")})
    return layers


def module_sources(root: Path = SRC) -> dict[str, str]:
    """Dotted module name -> source, for every .py file under the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path.read_text(encoding="utf-8")
    return out


def imported_modules(module: str, source: str, modules: set[str]) -> set[str]:
    """The vlmops modules `source` imports, anywhere in the file (relative imports resolved)."""
    found = set()
    is_package = any(name.startswith(module + ".") for name in modules)
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from vlmops import progress` imports the module vlmops.progress
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name == "vlmops" or name.startswith("vlmops.")}


def layer_of(module: str, ranks: dict[str, int], modules: set[str]) -> int | None:
    """The rank (0 = top) of a module's layer; None for the package root (the public facade)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    top = f"vlmops.{parts[1]}"
    if not any(name.startswith(top + ".") for name in modules):  # a module at the top level
        return ranks[BASE]
    assert parts[1] in ranks, f"{top} is in no layer: add it to the 'Layers' block of vlmops/__init__.py"
    return ranks[parts[1]]


def upward_imports(sources: dict[str, str], doc: str | None = vlmops.__doc__) -> set[tuple[str, str]]:
    """Every (importer, imported) pair where the imported module sits in a higher layer."""
    ranks = {name: rank for rank, layer in enumerate(layer_order(doc)) for name in layer}
    modules = set(sources)
    out = set()
    for module, source in sources.items():
        mine = layer_of(module, ranks, modules)
        if mine is None:
            continue
        for target in imported_modules(module, source, modules):
            theirs = layer_of(target, ranks, modules)
            if theirs is not None and theirs < mine:
                out.add((module, target))
    return out


def _describe(pairs: set[tuple[str, str]]) -> str:
    return "; ".join(f"{a} imports {b}" for a, b in sorted(pairs))


def test_every_import_points_down() -> None:
    found = upward_imports(module_sources())
    new, fixed = found - KNOWN, KNOWN - found
    assert not new, f"upward import(s), against the layer order in vlmops/__init__.py: {_describe(new)}"
    assert not fixed, f"no longer upward, remove from KNOWN in tests/test_layers.py: {_describe(fixed)}"


def test_an_added_upward_import_fails_with_its_name() -> None:
    sources = module_sources()
    sources["vlmops.data.sneaky"] = "def f():\n    from vlmops.cli._common import console\n"
    sources["vlmops.models.sneaky2"] = "from ..evaluate import task\n"
    found = upward_imports(sources) - KNOWN
    assert found == {
        ("vlmops.data.sneaky", "vlmops.cli._common"),
        ("vlmops.models.sneaky2", "vlmops.evaluate.task"),
    }
    assert "vlmops.data.sneaky imports vlmops.cli._common" in _describe(found)


def test_the_order_is_read_from_the_docstring() -> None:
    layers = layer_order()
    assert layers[0] == {"cli"} and layers[-1] == {BASE}
    assert {"audit", "report"} in layers
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert packages <= set().union(*layers), "every package sits in a layer"


def mutual_imports(sources: dict[str, str]) -> set[tuple[str, str]]:
    """Pairs of modules (not packages) that import each other, lazily or not: each pair must point one way."""
    modules = set(sources)
    packages = {m for m in modules if any(n.startswith(m + ".") for n in modules)}
    edges = {m: imported_modules(m, s, modules) for m, s in sources.items()}
    return {
        (a, b)
        for a, targets in edges.items()
        for b in targets
        if a < b and a in edges.get(b, set()) and not {a, b} & packages
    }


def test_no_two_modules_import_each_other() -> None:
    found = mutual_imports(module_sources())
    assert not found, "modules importing each other: " + "; ".join(f"{a} <-> {b}" for a, b in sorted(found))


def test_an_added_circle_is_found() -> None:
    sources = module_sources()
    sources["vlmops.audit.labels"] += "\ndef _g():\n    from vlmops.audit.label_views import build_views\n"
    assert mutual_imports(sources) == {("vlmops.audit.label_views", "vlmops.audit.labels")}
