"""The distribution's face: one version (sb_meta.__version__, which setup.cfg reads) shown
by ``sb-meta --version`` and CITATION.cff, and the Apache-2.0 licence it declares."""

import pathlib
import re

import pytest

from sb_meta import __version__
from sb_meta.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_sb_meta_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"sb-meta {__version__}"


def test_the_citation_and_setup_cfg_name_that_version_and_licence():
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(__version__)}$", citation, re.M)
    assert "license: Apache-2.0" in citation
    setup = (ROOT / "setup.cfg").read_text()
    assert "version = attr: sb_meta.__version__" in setup and "license = Apache-2.0" in setup
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]


#: add-on names the core must not use; the built-ins are found through their entry points
_ADDON_NAMES = re.compile(r"\b(lora|lhuc|houlsby|compress|peft)\b", re.IGNORECASE)
#: what remains, each for a reason: the public ``peft=`` keyword of ``AdaptableASR.adapt``
_ALLOWED = {("sb_meta/adapt/model.py", "peft")}


def _code_tokens(path):
    """``(line, text)`` of the names and strings of ``path`` outside docstrings and comments."""
    import ast
    import io
    import tokenize

    source = path.read_text(encoding="utf-8")
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    kinds = {tokenize.NAME, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in kinds and tok.start[0] not in docstrings:
            yield tok.start[0], tok.string


def test_the_core_names_no_addon():
    """What an add-on is and which options it adds, it declares (AddOn.kind,
    AddOn.command_options): sb_meta/ code names none of the built-in add-ons."""
    found = []
    for path in sorted((ROOT / "sb_meta").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line, text in _code_tokens(path):
            for name in {m.lower() for m in _ADDON_NAMES.findall(text)}:
                if (rel, name) not in _ALLOWED:
                    found.append(f"{rel}:{line}: {name}")
    assert not found, found
