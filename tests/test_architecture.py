"""The package's structure: one-way imports, small units, no private names across modules.

These read the source (``ast``), so they fail as soon as a change breaks a rule the
architecture page (docs/architecture.rst) states.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "graft_select"
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        yield name.removesuffix(".__init__"), path, ast.parse(path.read_text())


MODULES = {name: (path, tree) for name, path, tree in _modules()}


def _resolve(module, node):
    """Absolute module name of an ``ImportFrom`` inside ``module``."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".")
    is_package = MODULES[module][0].name == "__init__.py"
    base = package if is_package else package[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module):
    """(imported module, names) of every import of the package in ``module``, lazy ones too."""
    _, tree = MODULES[module]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if not target.startswith("graft_select"):
                continue
            names = [a.name for a in node.names]
            for name in names:  # `from . import _plan` imports a module
                if f"{target}.{name}" in MODULES:
                    yield f"{target}.{name}", []
            yield target, names
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("graft_select"):
                    yield alias.name, []


def _graph():
    graph = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _ in _imports(module):
            if target in MODULES and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    return graph


class TestImports:
    def test_no_cycle(self):
        """No module imports itself back through others, lazy imports included."""
        graph = _graph()
        state = {}
        cycles = []

        def visit(node, path):
            state[node] = "open"
            for nxt in sorted(graph[node]):
                if state.get(nxt) == "open":
                    cycles.append([*path[path.index(nxt):], nxt])
                elif nxt not in state:
                    visit(nxt, [*path, nxt])
            state[node] = "done"

        for node in sorted(graph):
            if node not in state:
                visit(node, [node])
        assert not cycles, f"import cycles: {cycles}"

    def test_no_private_name_across_modules(self):
        """No underscore name of one module is imported by another (private modules are fine)."""
        found = []
        for module in MODULES:
            for target, names in _imports(module):
                private = [n for n in names if n.startswith("_")
                           and f"{target}.{n}" not in MODULES and n != "__version__"]
                if private and target != module:
                    found.append(f"{module} <- {target}: {', '.join(private)}")
        assert not found, "\n".join(found)


def _docstring_lines(node):
    """Lines of the docstring of a class or function node (0 without one)."""
    doc = node.body[0] if node.body else None
    if (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)):
        return doc.end_lineno - doc.lineno + 1
    return 0


def _units():
    """(module, node, lines of code) of every class and function.

    Docstrings are not counted: numpydoc sections (Parameters, Returns, Examples)
    make a public class's or function's text long, not its code. A class's count
    leaves out its own docstring and those of its methods.
    """
    for module, (_, tree) in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
                if isinstance(node, ast.ClassDef):
                    size -= sum(_docstring_lines(child) for child in node.body
                                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
                yield module, node, size


class TestSizes:
    def test_classes_small(self):
        """No class has over about 300 lines of code (docstrings aside)."""
        big = [f"{m}.{n.name}: {size}" for m, n, size in _units()
               if isinstance(n, ast.ClassDef) and size > MAX_CLASS_LINES]
        assert not big, big

    def test_functions_small(self):
        """No function or method has over about 60 lines of code (its docstring aside)."""
        big = [f"{m}.{n.name}: {size}" for m, n, size in _units()
               if not isinstance(n, ast.ClassDef) and size > MAX_FUNCTION_LINES]
        assert not big, big


@pytest.mark.parametrize("module", ["graft_select", "graft_select.selector"])
def test_light_imports(module):
    """The package and the estimators load without torch or cupy (in a fresh process)."""
    import subprocess
    import sys

    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('torch', 'cupy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"
