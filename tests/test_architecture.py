"""The design rules of docs/architecture.md, checked on the source so they stay true.

Each test reads featviz's Python files with ``ast`` (nothing is imported) and names every
offending place, so a failure says exactly what to move or rename.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "featviz"
MAX_PARAMETERS = 12
# The front ends: they may import the library, the library never imports them.
FRONT_ENDS = ("featviz.cli", "featviz.server", "featviz.__main__")
HTML_TAG = re.compile(r"<\s*/?\s*(!doctype|html|head|body|div|span|p|a|img|table|thead|tbody|tr|td|th|ul|ol|li|"
                      r"h[1-6]|section|nav|header|footer|main|script|style|link|meta|form|input|button|figure|"
                      r"figcaption|details|summary|br|hr|code|pre|em|strong|small|label|select|option)\b[^>]*>",
                      re.IGNORECASE)


@lru_cache(maxsize=None)
def modules() -> dict[str, ast.Module]:
    """Dotted module name -> parsed source, for every file of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = ast.parse(path.read_text(), filename=str(path))
    return out


def is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name a ``from ... import`` statement in ``module`` reads from."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, tree: ast.Module, top_level_only: bool):
    """(line, imported module, imported names) for each import statement of ``module``."""
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, node)
            names = [alias.name for alias in node.names]
            submodules = [f"{source}.{n}" for n in names if f"{source}.{n}" in modules()]
            yield node.lineno, source, [n for n in names if f"{source}.{n}" not in modules()]
            for sub in submodules:
                yield node.lineno, sub, []


def owner(name: str) -> str:
    return name if name in modules() else name.rsplit(".", 1)[0]


def test_no_module_imports_a_private_name_of_another_module():
    offences = []
    for module, tree in modules().items():
        for line, source, names in imports(module, tree, top_level_only=False):
            if not source.startswith("featviz") or source == module:
                continue
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    offences.append(f"{module}:{line} imports {name} from {source}")
    assert not offences, "\n".join(offences)


def test_no_import_cycles():
    # Imports inside functions count too: a lazy import hides a cycle from Python, not from a reader.
    graph: dict[str, set[str]] = {}
    for module, tree in modules().items():
        edges = set()
        for _, source, _ in imports(module, tree, top_level_only=False):
            if source.startswith("featviz"):
                target = owner(source)
                if target != module and target in modules():
                    edges.add(target)
        graph[module] = edges

    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # A package importing its own submodules (and them importing siblings) is how packages are
            # built; a cycle counts only when it does not run through an __init__ that is an ancestor.
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                if not any(is_package(m) and all(o == m or o.startswith(m + ".") for o in cycle) for m in cycle):
                    cycles.append(" -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(cycles)


def test_the_library_never_imports_the_cli_or_the_server():
    offences = []
    for module, tree in modules().items():
        if module.startswith(FRONT_ENDS):
            continue
        for line, source, _ in imports(module, tree, top_level_only=False):
            if source.startswith(FRONT_ENDS):
                offences.append(f"{module}:{line} imports {source}")
    assert not offences, "\n".join(offences)
    import featviz.microscope

    assert not hasattr(featviz.microscope, "create_app")


def test_no_import_cycles_between_parts():
    # Coarser than modules: featviz.engine must not need featviz.examples while examples needs the engine.
    def part(name: str) -> str:
        return ".".join(name.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for module, tree in modules().items():
        for _, source, _ in imports(module, tree, top_level_only=False):
            if source.startswith("featviz.") and part(source) != part(module) and owner(source) in modules():
                graph.setdefault(part(module), set()).add(part(source))

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

    assert sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a)) == []
    assert "featviz.examples" not in graph.get("featviz.engine", set())


def is_click_command(node: ast.FunctionDef) -> bool:
    return any("click" in ast.unparse(d) or ast.unparse(d).endswith((".command", ".group")) or "_option" in
               ast.unparse(d) or "argument" in ast.unparse(d) for d in node.decorator_list)


def test_no_library_function_takes_more_than_twelve_parameters():
    offences = []
    for module, tree in modules().items():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or is_click_command(node):
                continue
            args = node.args
            names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
            names = [n for n in names if n not in ("self", "cls")]
            if len(names) > MAX_PARAMETERS:
                offences.append(f"{module}.{node.name}:{node.lineno} takes {len(names)} parameters")
    assert not offences, "\n".join(offences)


def docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes: they may name URL placeholders such as ``/<a>--<b>/``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def test_no_html_in_python_strings():
    offences = []
    for module, tree in modules().items():
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and HTML_TAG.search(node.value):
                offences.append(f"{module}:{node.lineno} {node.value.strip()[:60]!r}")
    assert not offences, "\n".join(offences)
