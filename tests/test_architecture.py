"""The shape of the code: imports go one way, private TensorFlow/Keras names live in one module,
files stay small, and the flag-parsing path never starts TensorFlow. Pure Python (AST), no TensorFlow work."""

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGES = ("harness", "callbacks")
COMPAT = "harness.tf_compat"
PRIVATE_MODULES = ("tensorflow.python", "tensorflow.compiler", "keras.src", "tensorboard.")
LIBRARY_ROOTS = ("tf", "tensorflow", "keras", "tfds", "os", "np")  # a private attribute of these is someone else's
PRIVATE_CONVENTIONS = ("ag_pass_through",)  # AutoGraph's marker: private API without an underscore


def modules():
    for package in PACKAGES:
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith(".py"):
                module = f"{package}.{name[:-3]}".removesuffix(".__init__")
                yield module, os.path.join(ROOT, package, name)


def runtime_imports(tree):
    """Imported module names, skipping `if TYPE_CHECKING:` blocks (they never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def import_graph():
    known = dict(modules())
    graph = {}
    for module, path in known.items():
        tree = ast.parse(open(path).read())
        graph[module] = {name for name in runtime_imports(tree) if name in known and name != module}
    return graph


def test_callbacks_never_import_harness():
    upward = {m: sorted(d for d in deps if d.startswith("harness")) for m, deps in import_graph().items()
              if m.startswith("callbacks")}
    assert not {m: d for m, d in upward.items() if d}


def test_there_is_no_import_cycle():
    graph, state, cycles = import_graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_private_tensorflow_and_keras_names_live_in_tf_compat_only():
    offenders = []
    for module, path in modules():
        if module == COMPAT:
            continue
        tree = ast.parse(open(path).read())
        offenders += [f"{module}: import {name}" for name in runtime_imports(tree) if name.startswith(PRIVATE_MODULES)]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            private = node.attr.startswith("_") and not node.attr.endswith("__") or node.attr == "__internal__"
            if (private and root_name(node) in LIBRARY_ROOTS) or node.attr in PRIVATE_CONVENTIONS:
                offenders.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders


def root_name(node):
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.value if not isinstance(node, ast.Call) else node.func
    return getattr(node, "id", None)


@pytest.mark.parametrize("module, path", list(modules()))
def test_files_stay_under_400_lines(module, path):
    assert sum(1 for _ in open(path)) <= 400, module


def test_flag_parsing_and_the_launcher_never_import_tensorflow():
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import harness.run_config, harness.launch, "
            "harness.cluster_env; print(sorted(m for m in ('tensorflow', 'keras', 'tensorflow_datasets') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
