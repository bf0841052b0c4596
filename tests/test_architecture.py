"""The import contract of docs/architecture.md: packages import downward only.

Every `import` counts, at module level and inside functions (an in-function import hides a cycle,
it does not remove it). `KNOWN_UPWARD` would list tolerated upward imports, each with the move
that removes it; it is empty: every unit imports only the units below it. The test fails on any
upward import, and on a listed entry that no longer exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: bottom to top; a unit may import only units listed before it (and itself)
LAYERS = [
    "errors", "her2core", "util", "coords", "stain", "slide", "sample", "registration", "qupath",
    "tiling", "datasets", "models", "training", "inference", "evaluation", "pipelines",
    "demo_report", "demo",
    "cli", "__main__", "napari",
]

#: (importer, imported) -> the move that removes it
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "napari_her2stain":
        return "napari"
    if parts[0] != "her2core":
        return None
    return parts[1] if len(parts) > 1 else "her2core"


def imports_of(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported module, line) of every import statement in the file, nested ones included."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append((".".join(base + ([node.module] if node.module else [])), node.lineno))
            elif node.module:
                found.append((node.module, node.lineno))
    return found


def upward_imports(root: Path) -> dict[tuple[str, str], list[str]]:
    """(importer unit, imported unit) -> ['file:line', ...] for every import against LAYERS."""
    rank = {u: i for i, u in enumerate(LAYERS)}
    bad: dict[tuple[str, str], list[str]] = {}
    for pkg in ("her2core", "napari_her2stain"):
        for path in sorted((root / pkg).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            src = unit_of(module)
            for target, line in imports_of(path, module):
                dst = unit_of(target)
                if dst is None or dst == src:
                    continue
                if src not in rank or dst not in rank:
                    bad.setdefault((src, dst), []).append(f"{path.relative_to(root)}:{line} (unit not in LAYERS)")
                elif rank[dst] > rank[src]:
                    bad.setdefault((src, dst), []).append(f"{path.relative_to(root)}:{line}")
    return bad


def test_layers_cover_every_package():
    units = {unit_of(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
             for pkg in ("her2core", "napari_her2stain") for p in (ROOT / pkg).rglob("*.py")}
    assert units <= set(LAYERS), f"add these to LAYERS and docs/architecture.md: {units - set(LAYERS)}"


def test_imports_point_downward():
    found = upward_imports(ROOT)
    new = {k: v for k, v in found.items() if k not in KNOWN_UPWARD}
    assert not new, "upward imports (move the code down, do not import around it):\n" + "\n".join(
        f"  {a} -> {b}: {', '.join(v)}" for (a, b), v in sorted(new.items()))
    gone = set(KNOWN_UPWARD) - set(found)
    assert not gone, f"fixed, so remove from KNOWN_UPWARD (and docs/architecture.md): {sorted(gone)}"


def test_contract_catches_an_added_upward_import(tmp_path):
    """The checker itself: an in-function upward import in a copy of a low layer is reported."""
    (tmp_path / "her2core" / "slide").mkdir(parents=True)
    (tmp_path / "napari_her2stain").mkdir()
    (tmp_path / "her2core" / "__init__.py").write_text("")
    (tmp_path / "her2core" / "slide" / "__init__.py").write_text(
        "from her2core.errors import UserError\n\ndef f():\n    from ..training import engine\n")
    assert upward_imports(tmp_path) == {("slide", "training"): ["her2core/slide/__init__.py:4"]}


def test_architecture_doc_names_every_layer():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for unit in LAYERS:
        if unit not in ("her2core", "__main__"):
            assert f"`{unit}`" in doc, f"docs/architecture.md does not describe `{unit}`"


@pytest.mark.parametrize("name", ["pyramid_pix2pix", "asp", "bcistainer", "bbdm", "ddib", "consistency"])
def test_family_comes_from_the_registry(name):
    from her2core.evaluation.evaluate import framework_of
    from her2core.models import registry

    assert registry.family(name) == ("gan" if name in ("pyramid_pix2pix", "asp", "bcistainer") else "dm")
    assert framework_of(name) == registry.family(name) and framework_of("p2p_same") == ""
