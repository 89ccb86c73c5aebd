"""The packages of featviz import each other without cycles (issue 14: engine -> examples -> engine),
and the library never imports the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "featviz"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of featviz that ``path`` imports anywhere (module level or inside functions)."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            prefix = base[:len(base) - node.level + 1] if node.level else []
            target = ".".join(prefix + ([node.module] if node.module else []))
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def package_graph() -> dict[str, set[str]]:
    """featviz.<part> -> the other parts it imports."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    part = lambda module: ".".join(module.split(".")[:2])  # noqa: E731
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        for target in _imports(path, name, set(paths)):
            if part(target) != part(name):
                graph.setdefault(part(name), set()).add(part(target))
    return graph


def test_no_import_cycles_between_packages():
    graph = package_graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert cycles == []
    assert "featviz.examples" not in graph.get("featviz.engine", set())


def test_library_never_imports_the_cli():
    graph = package_graph()
    assert [part for part, targets in graph.items() if "featviz.cli" in targets and part != "featviz.cli"
            and part != "featviz.__main__"] == []


def test_library_never_imports_the_server():
    graph = package_graph()
    assert [part for part, targets in graph.items() if "featviz.server" in targets
            and part not in ("featviz.cli", "featviz.server")] == []
    import featviz.microscope

    assert not hasattr(featviz.microscope, "create_app")
