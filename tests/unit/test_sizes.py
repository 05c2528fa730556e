"""No file a reader must scroll for long: every module under ``sb_meta/`` has at most
:data:`MAX_MODULE_LINES` lines and every function, methods included, at most
:data:`MAX_FUNCTION_LINES`, counting the whole def (decorators, signature, docstring
and body).

A module still over a limit is listed in :data:`EXEMPT`, with the work that splits
it; an exempted module that is already within the limits fails the test too, so an
exemption is removed as soon as it is no longer needed.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80

#: modules still over a limit, each with the work that will split it (none at present)
EXEMPT = set()


def oversized(package_dir, max_module=MAX_MODULE_LINES, max_function=MAX_FUNCTION_LINES):
    """``{path relative to the package's parent: [one line per excess]}`` of every ``.py``
    file under ``package_dir`` that is too long or holds a function that is."""
    package_dir = pathlib.Path(package_dir)
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent).as_posix()
        text = path.read_text(encoding="utf-8")
        problems = []
        lines = len(text.splitlines())
        if lines > max_module:
            problems.append(f"{rel}: {lines} lines (at most {max_module})")
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                length = node.end_lineno - first + 1
                if length > max_function:
                    problems.append(f"{rel}:{node.lineno}: def {node.name} is {length} lines "
                                    f"(at most {max_function})")
        if problems:
            found[rel] = problems
    return found


def test_every_module_and_function_of_sb_meta_is_short_enough():
    found = oversized(ROOT / "sb_meta")
    problems = [line for rel, lines in sorted(found.items()) if rel not in EXEMPT for line in lines]
    assert not problems, "split by meaning (a coherent group to a module of its own, helpers " \
                         "out of a long function):\n" + "\n".join(problems)
    stale = sorted(rel for rel in EXEMPT if rel not in found)
    assert not stale, f"within the limits now: remove from EXEMPT: {stale}"


def test_the_size_check_finds_a_long_module_and_a_long_method(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "short.py").write_text("def f():\n    return 1\n")
    (package / "long.py").write_text("x = 1\n" * 7)
    body = "".join(f"        y = {i}\n" for i in range(3))
    (package / "method.py").write_text(f"class C:\n    @staticmethod\n    def g():\n{body}")
    assert oversized(package, max_module=6, max_function=4) == {
        "pkg/long.py": ["pkg/long.py: 7 lines (at most 6)"],
        "pkg/method.py": ["pkg/method.py:3: def g is 5 lines (at most 4)"],  # the decorator counts
    }
