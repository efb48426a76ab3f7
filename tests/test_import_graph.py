"""The package follows the data flow: no module imports a later stage, and no module imports cycle.

Stages, in order (a module may import only its own stage and earlier ones, function-level imports
included): errors/registry → core → cache → sampling → schedules → default → io → metrics → run →
search, bench, diagnostics → cli. `ebtune/__init__.py` is the public face and may import any stage.
"""
from __future__ import annotations

import ast
from pathlib import Path

import ebtune

PACKAGE = Path(ebtune.__file__).parent
STAGES = [{"errors", "registry"}, {"core"}, {"cache"}, {"sampling"}, {"schedules"}, {"default"}, {"io"}, {"metrics"},
          {"run"}, {"search", "bench", "diagnostics"}, {"cli"}]
RANK = {name: i for i, names in enumerate(STAGES) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "ebtune" or m.startswith("ebtune.")}


def _stage(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_module_belongs_to_a_stage():
    unknown = {m for m in _modules() if m != "ebtune" and _stage(m) not in RANK}
    assert not unknown, f"modules outside the stages {sorted(RANK)}: {sorted(unknown)}"


def test_no_module_imports_a_later_stage():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        if name == "ebtune":
            continue
        for target in _imports(path, top_level_only=False):
            if target == "ebtune":  # `from ebtune import __version__`: the version, not a stage
                continue
            if _stage(target) in RANK and RANK[_stage(target)] > RANK[_stage(name)]:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports against the data flow:\n" + "\n".join(sorted(upward))


def test_module_level_imports_have_no_cycle():
    modules = _modules()
    graph = {name: {t for t in _imports(path, top_level_only=True) if t in modules and t != name}
             for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how packages re-export; that is not a cycle.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (t.startswith(name + "."))}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] if nxt in trail else []
                raise AssertionError("import cycle: " + " -> ".join([*cycle, node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
