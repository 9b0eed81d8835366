"""The package's seams: no import circles (lazy imports included), and the API loads no
adapter (scikit-learn, ONNX, MPI) or tool (the command line, benchmarks, profile) until used."""
import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fastnn"


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path, name):
    """Every fastnn module that ``path`` imports, at any depth of its code (lazy ones too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - (node.level - 1)] if node.level else []
            target = ".".join(base + [node.module]) if node.module else ".".join(base)
            if not target.startswith("fastnn"):
                continue
            for alias in node.names:  # ``from . import training`` imports a module
                sub = f"{target}.{alias.name}"
                found.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                          or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fastnn")}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args \
                and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("fastnn"):
            found.add(node.args[0].value)
    return found - {name}


def import_graph():
    return {module_name(p): imports(p, module_name(p)) for p in PACKAGE.rglob("*.py")}


def circles(graph):
    """Every import circle, as the list of modules around it (found by depth-first search)."""
    found, done = [], set()

    def visit(node, path):
        if node in path:
            found.append(path[path.index(node):] + [node])
            return
        if node in done or node not in graph:
            return
        for target in sorted(graph[node]):
            visit(target, path + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def test_no_import_circles_lazy_imports_included():
    graph = import_graph()
    assert "fastnn.nn.training" in graph["fastnn.nn.model"]  # (the graph sees imports)
    assert not circles(graph), "\n".join(" -> ".join(c) for c in circles(graph))


def test_the_check_finds_a_circle_made_by_a_lazy_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c", "a"]]


def test_importing_the_api_loads_no_adapter_or_tool():
    code = ("import sys, fastnn; fastnn.Sequential(fastnn.Dense(2, 2)); "
            "print(sorted(m for m in sys.modules if m.startswith(('fastnn.', 'sklearn', 'onnx', 'mpi4py', 'torch', "
            "'jax'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for later in ("fastnn.integrations", "fastnn.tools", "fastnn.sklearn", "fastnn.cli", "'sklearn", "'onnx",
                  "'mpi4py"):
        assert later not in loaded, f"{later} loaded by the API: {loaded}"


NUMBA_NAMES = {"_load_index"}  # Numba's own method names, which the kernel cache overrides


def underscore_names_defined(tree):
    """The underscore names a module defines: functions, classes, module names, attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_"):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id.startswith("_"):
            names.add(node.id)
    return {n for n in names if not n.startswith("__")}


def private_uses(trees):
    """``module: name`` for each use of another module's underscore member: ``x._name`` (x not
    self or cls) where only other modules define ``_name``, or ``from m import _name``."""
    defined = {name: underscore_names_defined(tree) for name, tree in trees.items()}
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue
                if node.attr in defined[name] or node.attr in NUMBA_NAMES:
                    continue
                if any(node.attr in names for names in defined.values()):
                    found.append(f"{name}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.ImportFrom):
                found += [f"{name}:{node.lineno} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__") and (node.level or "fastnn" in (
                              node.module or "")) and not (PACKAGE / (a.name + ".py")).exists()
                          and not any((p / (a.name + ".py")).exists() for p in PACKAGE.rglob("*") if p.is_dir())]
    return found


def test_no_module_uses_another_modules_underscore_names():
    """Parts meet at documented names (the model's seam, the kernels' BARE tables); underscore
    modules (``kernels._jit``, ``_files``) are the package's own and may be imported in it."""
    trees = {module_name(p): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}
    assert not private_uses(trees), "\n".join(private_uses(trees))


def test_the_check_finds_a_private_member_used_elsewhere():
    trees = {"fastnn.a": ast.parse("class A:\n    def _secret(self):\n        return self._x\n"),
             "fastnn.b": ast.parse("from .a import A\nfrom .c import _helper\nA()._secret()\n")}
    assert sorted(private_uses(trees)) == ["fastnn.b:2 import _helper", "fastnn.b:3 ._secret"]


# The parts, lowest first: a module imports from its own part or from lower ones only
# (fastnn/__init__.py's docstring states the rule).
RANK = {"kernels": 0, "_install": 0, "engine": 1, "io": 1, "reference": 1, "nn": 2, "testing": 3, "api": 3,
        "integrations": 4, "tools": 5}
# imports upward that load an adapter only when it is used (``Sequential.to_onnx``)
WHEN_USED = {("fastnn.nn.model", "fastnn.integrations.onnx")}


def part(module):
    parts = module.split(".")
    return "api" if len(parts) == 1 else parts[1]


def upward(graph):
    return sorted(f"{m} ({part(m)}) imports {t} ({part(t)})" for m, targets in graph.items() for t in targets
                  if RANK[part(t)] > RANK[part(m)] and (m, t) not in WHEN_USED)


def test_imports_run_one_way_between_the_parts():
    graph = import_graph()
    assert set(map(part, graph)) <= set(RANK), "a new part: give it its place in RANK and the package docstring"
    assert not upward(graph), "\n".join(upward(graph))


def test_the_check_finds_an_import_against_the_direction():
    graph = {"fastnn.kernels.dense": {"fastnn.nn.model"}, "fastnn.tools.cli": {"fastnn.nn.model"}}
    assert upward(graph) == ["fastnn.kernels.dense (kernels) imports fastnn.nn.model (nn)"]
