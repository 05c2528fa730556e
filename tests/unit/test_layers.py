"""The house without back-and-forth: the modules of ``sb_meta/`` import one another
in one direction only.

:data:`LAYERS` writes the order once, lowest first. A module may import modules
of its own layer or of a lower one, never of a higher one; and no module
imports itself back through others (no cycle, at module granularity). Every
``import`` and ``from ... import`` counts, those inside functions (lazy imports)
included, relative ones resolved, and so does ``importlib.import_module`` of a
literal name. ``from package import name`` reaches ``package.name`` when that is
a module, else the package's ``__init__``.

A name in :data:`LAYERS` places that module and, for a package, every module
under it, unless a longer name places one elsewhere; the package's own
``__init__`` (``sb_meta``: the public façade) is placed by its exact name only,
so a new module must be given a layer.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: the layers of ``sb_meta``, lowest first: a module imports only from its own or lower ones
LAYERS = [
    # what everything may use: helpers, the plugin contract, its options and the meta keys, losses,
    # the model families' forward,
    # parameter selection
    {"sb_meta.version", "sb_meta.utils", "sb_meta.contract", "sb_meta.hookspecs", "sb_meta.options",
     "sb_meta.meta_config", "sb_meta.ctc_hessian", "sb_meta.losses", "sb_meta.schedules", "sb_meta.functional",
     "sb_meta.checkpointing", "sb_meta.forward"},
    # corpora and manifests, tasks and episodes drawn from them
    {"sb_meta.data", "sb_meta.episodes"},
    # meta-training: strategies and add-ons, the plugin manager, the brain, the recipe glue
    {"sb_meta.strategy", "sb_meta.plugins", "sb_meta.trust", "sb_meta.brain_hooks", "sb_meta.ranks", "sb_meta.brain",
     "sb_meta.tokenizers", "sb_meta.recipe"},
    # the SpeechBrain pretrained-folder format: write, verify, load
    {"sb_meta.export"},
    # test-time adaptation of a loaded model
    {"sb_meta.adapt"},
    # the k-shot protocol, its statistics and reports
    {"sb_meta.evaluation"},
    # applications built on all of the above: spoken words, the demo, test helpers
    {"sb_meta.words", "sb_meta.demo", "sb_meta.testing"},
    # the command line and the package's façade
    {"sb_meta.cli", "sb_meta.adapt.commands", "sb_meta.words.commands", "sb_meta"},
]


def modules_of(package_dir):
    """``{module name: path}`` of every ``.py`` file under ``package_dir``."""
    package_dir = pathlib.Path(package_dir)
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name, path, modules):
    """``(line, imported module)`` of every import in ``path`` (module ``name``) that
    reaches one of ``modules``, at any depth of the file (lazy imports too)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        elif isinstance(node, ast.Call) and _names_import(node.func) and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            targets = [node.args[0].value]  # importlib.import_module("pkg.mod"), __import__("pkg.mod")
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` of a name inside ``a.b``
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((node.lineno, target))
    return found


def _names_import(func):
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("import_module", "__import__")


def import_graph(package_dir):
    """``{module: [(line, imported module), ...]}`` inside the package at ``package_dir``."""
    modules = modules_of(package_dir)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module, layers, root):
    """Index in ``layers`` of the longest name placing ``module`` (``None``: unplaced)."""
    best = (-1, None)
    for index, names in enumerate(layers):
        for entry in names:
            covers = module == entry or (entry != root and module.startswith(entry + "."))
            if covers and len(entry) > best[0]:
                best = (len(entry), index)
    return best[1]


def upward_imports(graph, layers, root):
    """One line per import from a lower layer to a higher one, naming module, line and target."""
    out = []
    for module, edges in sorted(graph.items()):
        for line, target in edges:
            low, high = layer_of(module, layers, root), layer_of(target, layers, root)
            if low is not None and high is not None and high > low:
                out.append(f"{module}:{line} imports {target} (layer {low} imports layer {high})")
    return out


def unplaced(graph, layers, root):
    """The modules no name of ``layers`` places."""
    return sorted(m for m in graph if layer_of(m, layers, root) is None)


def cycles(graph):
    """One line per import cycle (each strongly connected group of modules), naming
    every import that closes it: ``module:line imports target``."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for _, target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return ["cycle: " + "; ".join(f"{m}:{line} imports {t}" for m in sorted(group)
                                  for line, t in graph[m] if t in group)
            for group in groups]


def test_sb_meta_imports_go_down_the_layers_without_cycles():
    graph = import_graph(ROOT / "sb_meta")
    problems = unplaced(graph, LAYERS, "sb_meta")
    assert not problems, f"modules with no layer in LAYERS: {problems}"
    stale = sorted(name for names in LAYERS for name in names if name not in graph)
    assert not stale, f"LAYERS names modules that do not exist: {stale}"
    problems = cycles(graph) + upward_imports(graph, LAYERS, "sb_meta")
    assert not problems, "\n".join(problems)


def _write(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_walker_finds_a_cycle_and_an_upward_lazy_import(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "def f():\n    from pkg.sub import high\n",  # lazy, upward
        "pkg/sub/__init__.py": "from .high import g\n",
        "pkg/sub/high.py": "import os\nfrom .. import low\nfrom . import other\n",
        "pkg/sub/other.py": "from pkg.sub.high import g\n",  # closes high <-> other
    })
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg.sub.high"] == [(2, "pkg.low"), (3, "pkg.sub.other")]
    assert graph["pkg.sub"] == [(1, "pkg.sub.high")]
    layers = [{"pkg.low"}, {"pkg.sub"}, {"pkg"}]
    assert upward_imports(graph, layers, "pkg") == [
        "pkg.low:2 imports pkg.sub.high (layer 0 imports layer 1)"]
    assert cycles(graph) == [
        "cycle: pkg.low:2 imports pkg.sub.high; pkg.sub.high:2 imports pkg.low; "
        "pkg.sub.high:3 imports pkg.sub.other; pkg.sub.other:1 imports pkg.sub.high"]
    assert unplaced(graph, [{"pkg.sub"}], "pkg") == ["pkg", "pkg.low"]


@pytest.mark.parametrize("source, target", [
    ("import pkg.sub.high as h\n", "pkg.sub.high"),
    ("import pkg.sub.high.g\n", "pkg.sub.high"),  # an attribute path: the module holding it
    ("from pkg.sub import g\n", "pkg.sub"),  # a name of the package's __init__
    ("from .sub import high\n", "pkg.sub.high"),
    ("import importlib\ndef f():\n    return importlib.import_module('pkg.sub.high')\n", "pkg.sub.high"),
])
def test_the_walker_resolves_each_form_of_import(tmp_path, source, target):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": source, "pkg/sub/__init__.py": "g = 1\n",
                      "pkg/sub/high.py": "g = 1\n"})
    assert [t for _, t in import_graph(tmp_path / "pkg")["pkg.a"]] == [target]


#: private attributes set on objects other than ``self``, each for a reason: torch's own
#: state-dict metadata; the mark ``_call_named`` leaves on an exception it already explained
_FOREIGN_PRIVATE_ALLOWED = {("sb_meta/export/plan.py", "_metadata"), ("sb_meta/brain_hooks.py", "_sbmeta_hook")}


def private_attributes_set_from_outside(package_dir):
    """``path:line sets obj._name`` for each assignment to a private attribute of
    something other than ``self`` / ``cls``."""
    out = []
    package_dir = pathlib.Path(package_dir)
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
            for target in targets:
                if not (isinstance(target, ast.Attribute) and target.attr.startswith("_")
                        and not target.attr.startswith("__")):
                    continue
                owner = target.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                if (rel, target.attr) not in _FOREIGN_PRIVATE_ALLOWED:
                    out.append(f"{rel}:{node.lineno} sets {ast.unparse(target)}")
    return out


def test_no_private_attribute_is_set_from_outside_its_object():
    problems = private_attributes_set_from_outside(ROOT / "sb_meta")
    assert not problems, "give the owner a public method instead:\n" + "\n".join(problems)


def test_the_private_attribute_check_finds_one(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "def f(clock):\n    clock._t0 = None\n"
                                                            "class C:\n    def g(self):\n        self._x = 1\n"})
    assert private_attributes_set_from_outside(tmp_path / "pkg") == ["pkg/a.py:2 sets clock._t0"]
