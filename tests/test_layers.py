"""The house's rule: imports run one way, entry points -> inference / evaluation -> ensemble, models, datamodules ->
labels, metrics, utilities. Every import of a plid module inside plid (at the top of a file or inside a function)
is read from the source and checked against the layer of both ends."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "plid"

# what `python -m` runs: nothing imports these
ENTRY_POINTS = {"plid.train", "plid.detect", "plid.predict", "plid.evaluate", "plid.study", "plid.export",
                "plid.crop", "plid.ensemble.__main__", "plid.data.spider", "plid.grade_anatomy"}
# the middle floor's rooms, and the rooms of that floor each may not enter
MIDDLE = ("plid.ensemble", "plid.models", "plid.datamodules", "plid.callbacks", "plid.data")
FORBIDDEN = {
    "plid.models": ("plid.datamodules", "plid.data", "plid.ensemble"),
    "plid.ensemble": ("plid.models", "plid.datamodules", "plid.data"),
    "plid.datamodules": ("plid.models", "plid.ensemble"),
    # evaluation reads what inference writes; inference never needs evaluation
    "plid.inference": ("plid.evaluation",),
}
UPPER = ("plid.inference", "plid.evaluation", "plid.training", "plid.plots")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def in_room(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def floor(module: str) -> int:
    """3 entry points, 2 pipeline / evaluation, 1 the middle floor, 0 labels, metrics, utilities."""
    if module in ENTRY_POINTS:
        return 3
    if any(in_room(module, room) for room in UPPER):
        return 2
    if any(in_room(module, room) for room in MIDDLE):
        return 1
    return 0


def plid_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a plid module in the file, relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if in_room(a.name, "plid")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path).split(".")
                base = ".".join(package[: len(package) - node.level + (path.name == "__init__.py")] + [base])
            if in_room(base, "plid"):  # `from plid import plots` imports the module plid.plots
                found += [(node.lineno, f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base)
                          for a in node.names]
    return found


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def problem(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``; None where it may."""
    if imported in ENTRY_POINTS:
        return "an entry point"
    if floor(imported) > floor(importer):
        return "a floor above it"
    for room, closed in FORBIDDEN.items():
        if in_room(importer, room) and any(in_room(imported, c) for c in closed):
            return f"{room} may not import {'.'.join(imported.split('.')[:2])}"
    return None


def violations() -> list[str]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, imported in plid_imports(path):
            why = problem(module_name(path), imported)
            if why:
                found.add(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}: {why}")
    return sorted(found)


def test_imports_run_one_way():
    assert violations() == []


@pytest.mark.parametrize(("importer", "imported", "allowed"), [
    ("plid.models.grading", "plid.datamodules.contract", False),
    ("plid.ensemble.run", "plid.models.nets", False),
    ("plid.metrics", "plid.inference.pipeline", False),
    ("plid.evaluate", "plid.train", False),
    ("plid.datamodules.base", "plid.models.detection", False),
    ("plid.inference.pipeline", "plid.models.detection", True),
    ("plid.train", "plid.training", True),
    ("plid.inference.batch", "plid.evaluation.scoring", False),
    ("plid.evaluation.end_to_end", "plid.inference.batch", True),
    ("plid.models.grading", "plid.labels", True),
])
def test_the_rule_tells_a_violation_from_an_allowed_import(importer, imported, allowed):
    assert (problem(importer, imported) is None) == allowed
