"""The layout shows the architecture: packages depend downwards only, and no module imports itself back.

Imports are read from the source (every ``import`` statement, including the ones inside functions,
which is where an import cycle usually hides), so a late import cannot paper over a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("fsguard", "fsguard_testing")

# Each layer may import the ones listed before it, never one after it (the README's "How it is built").
LAYERS = ("config", "esl", "store", "rules", "call", "stages", "service", "ops")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The fsguard modules ``path`` imports (``from pkg import mod`` counts as the module when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
             if "migrations" not in p.parts}
    known = set(files)
    return {name: imports_of(path, name, known) for name, path in files.items()}


def cycle_from(start: str, edges: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start, if there is one (depth first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "fsguard" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def test_no_module_imports_itself_back_through_others():
    edges = graph()
    # a package's __init__ re-exporting its modules is not a cycle of behaviour: leave facades out
    edges = {m: {n for n in targets if not m.startswith(n + ".")} for m, targets in edges.items()}
    cycles = {tuple(c) for m in edges if (c := cycle_from(m, edges))}
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in sorted(cycles))


def test_each_package_imports_only_the_layers_below_it():
    upward = []
    for module, targets in graph().items():
        mine = layer_of(module)
        if mine is None:
            continue
        for target in targets:
            theirs = layer_of(target)
            if theirs is not None and LAYERS.index(theirs) > LAYERS.index(mine):
                upward.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


@pytest.mark.parametrize("flat", ["esl.py", "call.py", "app.py", "inbound.py", "outbound.py", "records.py",
                                  "routing_table.py", "testing"])
def test_the_old_flat_modules_are_gone(flat):
    assert not (REPO / "fsguard" / flat).exists()


def test_the_readme_tree_names_every_package_and_only_packages_that_exist():
    text = (REPO / "README.rst").read_text()
    tree = text[text.index("How it is built"):text.index("The areas, command by command")]
    named = set()
    for line in tree.splitlines():
        stripped = line.strip()
        if line.startswith("      ") and not line.startswith("       ") and stripped.split()[0].endswith(("/", ".py")):
            named.add(stripped.split()[0])
    assert named, "no tree found in README.rst's How it is built"
    missing = {n for n in named if not (REPO / "fsguard" / n).exists()}
    assert not missing, f"README.rst names what fsguard/ does not hold: {sorted(missing)}"
    packages = {f"{p.name}/" for p in (REPO / "fsguard").iterdir() if (p / "__init__.py").exists()}
    assert packages <= named, f"README.rst's tree leaves out {sorted(packages - named)}"
