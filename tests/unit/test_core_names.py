"""The core names no plugin: outside docstrings, no built-in plugin's name appears in
``sb_meta/`` (code, string literals and comments alike, as ``grep -w`` would see them), so
a third-party plugin of the same kind is as much at home as a built-in one. The built-ins'
entry points are listed in ``setup.cfg``, not here."""

import ast
import io
import re
import tokenize
from pathlib import Path

import sb_meta

CORE = Path(sb_meta.__file__).parent
NAMES = ("lora", "lhuc", "houlsby", "compress", "peft", "dann", "distill", "augment", "entropy", "pseudo")
PATTERN = re.compile(r"(?<![\w])(" + "|".join(NAMES) + r")(?![\w])", re.IGNORECASE)


def docstring_lines(tree):
    """Line numbers of every module, class and function docstring."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def plugin_names(source):
    """``[(line, name)]`` of the plugin names outside docstrings."""
    skip = docstring_lines(ast.parse(source))
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT) and tok.start[0] not in skip:
            found += [(tok.start[0], m.group(1)) for m in PATTERN.finditer(tok.string)]
    return found


def test_the_checker_sees_code_strings_and_comments_but_not_docstrings():
    source = '"""Uses lora."""\n\ndef f():\n    """Compress it."""\n    x = "dann"  # pseudo\n    return lhuc\n'
    assert plugin_names(source) == [(5, "dann"), (5, "pseudo"), (6, "lhuc")]
    assert plugin_names("peft_rank = 1\n") == []  # a word of its own, as grep -w reads it


def test_no_plugin_name_in_the_core():
    hits = [f"{path.relative_to(CORE.parent)}:{line}: {name}"
            for path in sorted(CORE.rglob("*.py")) for line, name in plugin_names(path.read_text())]
    assert not hits, "the core names plugins:\n" + "\n".join(hits)
