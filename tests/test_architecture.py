"""The import graph keeps the architecture: imports only point down the layers (entry points → ui/cli →
jobs/preview/checkpoints → projects/dataset/presets → hosts → trainer → the shared leaf), there are no import
cycles, the trainer imports nothing above it but the shared leaf, and only the WebUI host (and the WebUI entry in
scripts/) imports the WebUI's ``modules``. Imports inside functions count too: they run in the same process."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lib_trainer"

# Lower layers are imported by higher ones, never the other way round; a module may import its own layer.
LAYERS = [
    ("common",),
    ("trainer",),
    ("hosts", "demo"),
    ("projects", "dataset", "presets", "deps"),
    ("jobs", "preview", "checkpoints"),
    ("ui", "cli"),
    ("api", "app"),
]
# Programs of their own that drive the layers below them like an entry point does.
ENTRY_POINTS = {"lib_trainer.demo.run", "lib_trainer.demo.__main__", "lib_trainer.demo.pretrain"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def imports_of(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports (top-level and inside functions), relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # "from pkg import submodule"
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {}
    for name, path in known.items():
        edges[name] = {m for m in imports_of(path, name) if m in known and m != name}
    return edges


def layer_of(name: str) -> int:
    if name in ENTRY_POINTS:
        return len(LAYERS) - 1
    top = name.split(".")[1] if "." in name else ""
    for index, group in enumerate(LAYERS):
        if top in group:
            return index
    raise AssertionError(f"{name} belongs to no layer: add its package to LAYERS in tests/test_architecture.py")


def test_every_module_has_a_layer():
    for name in modules():
        if name != "lib_trainer":
            layer_of(name)


def test_imports_point_down_the_layers():
    upward = [f"{a} imports {b}" for a, targets in graph().items() if a != "lib_trainer"
              for b in targets if b != "lib_trainer" and layer_of(b) > layer_of(a)]
    assert upward == []


def test_there_are_no_import_cycles():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_trainer_imports_only_itself_and_the_shared_leaf():
    wrong = [f"{a} imports {b}" for a, targets in graph().items() if a.startswith("lib_trainer.trainer")
             for b in targets if not b.startswith(("lib_trainer.trainer", "lib_trainer.common"))]
    assert wrong == []


def test_the_shared_leaf_imports_nothing_above_it():
    wrong = [f"{a} imports {b}" for a, targets in graph().items() if a.startswith("lib_trainer.common")
             for b in targets if not b.startswith("lib_trainer.common")]
    assert wrong == []


def test_only_the_webui_host_and_the_webui_entry_import_the_webuis_modules():
    importers = []
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
    for path in files:
        name = module_name(path)
        if any(m == "modules" or m.startswith("modules.") for m in imports_of(path, name)):
            importers.append(name)
        text = path.read_text(encoding="utf-8")
        if 'import_module(f"modules.' in text or "import_module('modules." in text:
            importers.append(name)
    assert importers and all(n.startswith(("lib_trainer.hosts.webui", "scripts.")) for n in importers), importers
