"""The package's shape: no import cycle, no private cross-module import, no oversized module.

Static checks over ``tfcompress/`` (``ast``, nothing imported), so a newcomer can trust the file list:
one concept per file, data flowing one way.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tfcompress"
MAX_LINES = 520  # "about 500": a module past it holds more than one concept


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]):
    """``(line, target module, imported name or None, in a function)`` for every tfcompress import.
    ``from tfcompress.pkg import sub`` targets the submodule ``tfcompress.pkg.sub`` when it is one."""
    tree = ast.parse(path.read_text())
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(sub) for function in functions for sub in ast.walk(function)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tfcompress"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    yield node.lineno, submodule, None, id(node) in nested
                else:
                    yield node.lineno, node.module, alias.name, id(node) in nested
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tfcompress"):
                    yield node.lineno, alias.name, None, id(node) in nested


def test_no_module_imports_a_private_name_of_another():
    modules = _modules()
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: {target}.{name}"
                 for module, path in modules.items()
                 for line, target, name, _ in _imports(path, modules)
                 if name and name.startswith("_") and target != module and name != "__version__"]
    assert not offenders, offenders


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {module: sorted({target for _, target, _, _ in _imports(path, modules)
                             if target in modules and target != module})
             for module, path in modules.items()}
    # A package's __init__ re-exports its own submodules; importing a submodule runs the parent
    # package's __init__ first, which is not an edge of the submodule.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str):
        state[module] = 1
        stack.append(module)
        for target in graph[module]:
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module)


def test_function_level_imports_of_the_package_say_why():
    """Imports inside functions only defer a heavy dependency (TensorFlow) and say so."""
    modules = _modules()
    offenders = []
    for module, path in modules.items():
        lines = path.read_text().split("\n")
        for line, target, _, in_function in _imports(path, modules):
            if not in_function or line > len(lines):
                continue
            context = " ".join(lines[max(0, line - 3):line])
            if "deferred" not in context:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target}")
    assert not offenders, offenders


def test_no_module_is_over_about_500_lines():
    long = {str(path.relative_to(PACKAGE.parent)): count for path in PACKAGE.rglob("*.py")
            if (count := len(path.read_text().split("\n"))) > MAX_LINES}
    assert not long, long


def test_the_public_api_does_not_import_the_pipeline():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(module.startswith(("tfcompress.pipeline", "tfcompress.cli")) for module in imported)


def test_the_layout_guide_names_every_part_of_the_package():
    """docs/layout.md is the newcomer's map: a subpackage or module missing from it is a part nobody can find."""
    guide = (PACKAGE.parent / "docs" / "layout.md").read_text()
    parts = sorted(path.name for path in PACKAGE.iterdir()
                   if path.name != "__init__.py" and (path.suffix == ".py" or (path / "__init__.py").exists()))
    missing = [name for name in parts if f"  {name if name.endswith('.py') else name + '/'} " not in guide]
    assert not missing, f"docs/layout.md does not describe {missing}"
