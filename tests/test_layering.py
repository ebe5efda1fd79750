"""The package's layers import one way: core -> nn -> fill -> phasing -> validation ->
integrations -> workflow -> cli (docs/design.md).

Read from the source (no import), so that a violation is reported even when it would only
fail at run time: an upward or circular import, an import of another module's private name
(``from x import _y`` or ``x._y``), argparse outside ``cli/``, anything importing ``cli``, or
an import of one of our light modules inside a function (only modules that pull a heavy
library at import time may be imported lazily).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bcdi_gapfill"
LAYERS = ("core", "nn", "fill", "phasing", "validation", "integrations", "workflow", "cli")
#: Libraries slow to import or optional: a module importing one at its top is "heavy", and may
#: be imported inside a function (lazily) so that lighter callers stay light.
HEAVY_LIBRARIES = {"torch", "pynx", "cdiutils", "dask", "distributed", "dask_jobqueue", "ewokscore", "numba",
                   "bcdi", "matplotlib", "pytorch_msssim", "xrayutilities"}


def _module_name(path: Path) -> str:
    parts = ("bcdi_gapfill", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _imports(path: Path):
    """(node, target module, imported names, at module top) for every import of the file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                yield node, None, [], id(node) in top  # relative imports are refused below
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                target = full if full in MODULES else node.module
                yield node, target, [] if full in MODULES else [alias.name], id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, [], id(node) in top


def _graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for _, target, _, _ in _imports(path):
            if target in MODULES and target != module:
                graph[module].add(target)
    return graph


def _heavy_modules() -> set[str]:
    direct = {m for m, p in MODULES.items()
              if any(at_top and target and target.split(".")[0] in HEAVY_LIBRARIES
                     for _, target, _, at_top in _imports(p))}
    heavy = set(direct)
    changed = True
    while changed:
        changed = False
        for module, path in MODULES.items():
            if module not in heavy and any(at_top and target in heavy for _, target, _, at_top in _imports(path)):
                heavy.add(module)
                changed = True
    return heavy


def test_every_module_belongs_to_a_layer():
    loose = [m for m in MODULES if m != "bcdi_gapfill" and _layer(m) is None]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_imports_go_down_the_layers_and_never_into_cli():
    bad = []
    for module, targets in _graph().items():
        for target in targets:
            if target == "bcdi_gapfill" or _layer(module) is None:
                continue  # the package root holds only __version__ and the lazy exports
            if _layer(target) is None or _layer(target) > _layer(module):
                bad.append(f"{module} -> {target}")
            elif _layer(target) == LAYERS.index("cli") and _layer(module) != LAYERS.index("cli"):
                bad.append(f"{module} -> {target}")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_name_of_another_module_is_used():
    bad = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node, target, names, _ in _imports(path):
            if node.__class__ is ast.ImportFrom and node.level:
                bad.append(f"{module}: relative import (write bcdi_gapfill.{node.module or ''})")
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    bad.append(f"{module}: from {target} import {name}")
            if target in MODULES and target != module:
                for alias in node.names:
                    full = f"{getattr(node, 'module', None)}.{alias.name}" if isinstance(node, ast.ImportFrom) \
                        else alias.name
                    if full == target or alias.name == target:
                        aliases[alias.asname or alias.name.split(".")[0]] = target
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                bad.append(f"{module}: {aliases[node.value.id]}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(sorted(set(bad)))


def test_argparse_only_in_cli():
    bad = [m for m, p in MODULES.items() if _layer(m) != LAYERS.index("cli")
           and any(target == "argparse" for _, target, _, _ in _imports(p))]
    assert not bad, f"argparse outside cli/: {bad}"


def test_light_modules_are_imported_at_module_top():
    heavy = _heavy_modules()
    bad = []
    for module, path in MODULES.items():
        for node, target, _, at_top in _imports(path):
            if not at_top and target in MODULES and target not in heavy and target != "bcdi_gapfill":
                bad.append(f"{module} line {node.lineno}: {target}")
    assert not bad, ("light modules imported inside functions (import them at the module's top; only modules "
                     "that import a heavy library at their top may be imported lazily):\n" + "\n".join(sorted(bad)))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_docstring(module):
    assert ast.get_docstring(ast.parse(MODULES[module].read_text())), f"{module} has no docstring"
