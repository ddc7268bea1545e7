"""The layers of docs/architecture.md, checked on the code: every import (at the top of a module or inside a
function) goes to the module's own layer or one below it, and no two modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gtpcli"

# bottom to top, as docs/architecture.md lists them
LAYERS = (
    ("errors", "files", "distributed", "profiles"),  # profiles: the shipped YAML files, data
    ("cost", "reference"),
    ("methods",),
    ("config",),
    ("models",),
    ("measure",),
    ("results",),
    ("report",),
    ("commands",),
    ("cli", "__main__"),
)
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The gtpcli modules `path` imports, anywhere in its body."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "gtpcli":
                continue
            for alias in node.names:  # `from . import sweep` imports a module, `from .x import f` a name
                candidate = f"{target}.{alias.name}"
                found.add(candidate if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists()
                          or (PACKAGE.parent / Path(*candidate.split("."))).is_dir() else target)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "gtpcli"}
    return found


def level(module: str) -> int | None:
    parts = module.split(".")
    return LEVEL.get(parts[1]) if len(parts) > 1 else None


MODULES = {module_name(p): imported(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_top_level_module_and_folder_has_a_layer():
    unplaced = {m.split(".")[1] for m in MODULES if "." in m} - set(LEVEL)
    assert not unplaced, f"add {unplaced} to LAYERS here and to docs/architecture.md"


@pytest.mark.parametrize("module", [m for m in MODULES if level(m) is not None])
def test_a_module_imports_only_its_own_layer_or_below(module):
    above = {target for target in MODULES[module]
             if level(target) is not None and level(target) > level(module)}
    assert not above, f"{module} imports from a higher layer: {sorted(above)}"


def test_no_import_cycles():
    graph = {m: {t for t in targets if t in MODULES and t != m} for m, targets in MODULES.items()}
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}  # a package's own modules
    seen, on_path = set(), []

    def visit(node):
        if node in on_path:
            raise AssertionError("import cycle: " + " -> ".join(on_path[on_path.index(node):] + [node]))
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for target in sorted(graph[node]):
            visit(target)
        on_path.pop()

    for module in sorted(graph):
        visit(module)


def test_the_registry_imports_cards_only():
    """Importing gtpcli.methods must not import a patch (torch): the cards name their patches."""
    registry = (PACKAGE / "methods" / "__init__.py").read_text()
    assert "patch" not in {a for a in MODULES["gtpcli.methods"]}
    for card in PACKAGE.glob("methods/*/card.py"):
        assert not any(t.endswith(".patch") for t in MODULES[module_name(card)]), card
    assert 'import_module(f"{__name__}.{_module}.card")' in registry


def test_shared_code_names_no_method():
    """Method-specific behaviour lives in the method's folder: shared modules ask the card."""
    cards = [p.parent.name for p in PACKAGE.glob("methods/*/card.py")]
    for path in PACKAGE.rglob("*.py"):
        if path.parent.parent.name == "methods" and path.parent.name in cards:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in cards
                                                     for c in [node.left, *node.comparators]):
                pytest.fail(f"{path.relative_to(PACKAGE)}:{node.lineno} compares with a method's name")
