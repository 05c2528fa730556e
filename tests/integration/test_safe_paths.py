"""Names from data never become paths unchecked (issue 29).

Two checks:

* a static one: every call in sb_meta/, plugins/ and recipes/ that writes a file
  (``write_text``, ``open(..., "w")``, ``soundfile.write``, ``torch.save``,
  ``write_manifest``...) is traced back, through the assignments of its function,
  to the path joins (``folder / part``, ``os.path.join``) it writes under; every
  joined part must be a constant, a module constant, :func:`sb_meta.utils.safe_name`
  of something, or be built from those, or carry a reviewed ``# safe-path:``
  comment saying why it cannot escape its folder;
* a dynamic one: each writer fed hostile names (``../x``, ``/abs``, ``a/b``,
  ``..``, empty, 300 characters) writes inside its folder or refuses in one line.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: folders holding code that writes files
SCANNED = ["sb_meta", "plugins", "recipes"]
#: calls that write the file named by argument ``index`` (method calls: on the path itself)
WRITERS = {
    "open": 0, "soundfile.write": 0, "sf.write": 0, "torch.save": 1, "torchaudio.save": 0,
    "save_loadable": 1, "atomic_open": 0, "write_manifest": 0, "write_segments": 0,
    "shutil.copyfile": 1, "shutil.copy": 1, "shutil.copy2": 1, "shutil.copytree": 1,
    "os.replace": 1, "os.rename": 1, "os.makedirs": 0, "os.mkdir": 0, "np.save": 0,
}
PATH_METHODS = {"write_text", "write_bytes", "mkdir", "touch", "symlink_to", "save", "savefig"}
PRAGMA = "# safe-path:"


def _dotted(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _writes(call):
    """The path expression a call writes to, or None."""
    name = _dotted(call.func)
    if name == "open":
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        if not (isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")):
            return None
    if name in WRITERS:
        index = WRITERS[name]
        return call.args[index] if len(call.args) > index else None
    if isinstance(call.func, ast.Attribute) and call.func.attr in PATH_METHODS:
        if call.func.attr in ("save", "savefig"):
            return call.args[0] if call.args else None
        return call.func.value
    if isinstance(call.func, ast.Attribute) and call.func.attr == "open" and call.args:
        mode = call.args[0]
        if isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+"):
            return call.func.value
    return None


class Scope:
    """The assignments of a function (or a module), to follow names; names a nested
    function does not assign are looked up in the enclosing scopes."""

    def __init__(self, node, parent=None):
        self.node, self.parent, self.assigned = node, parent, {}
        for sub in self.own_nodes():
            if isinstance(sub, ast.Assign):
                for target in sub.targets:
                    self._bind(target, sub.value)
            elif isinstance(sub, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and sub.value is not None:
                self._bind(sub.target, sub.value)
            elif isinstance(sub, ast.For):  # a loop variable: an element of the iterable
                self._bind(sub.target, ast.Subscript(value=sub.iter, slice=ast.Constant(0)))
            elif isinstance(sub, ast.withitem) and sub.optional_vars is not None:
                self._bind(sub.optional_vars, sub.context_expr)

    @classmethod
    def comprehension(cls, node, parent):
        """The scope of a comprehension's own loop variables."""
        scope = cls(ast.Pass(), parent)
        for g in node.generators:
            scope._bind(g.target, ast.Subscript(value=g.iter, slice=ast.Constant(0)))
        return scope

    def own_nodes(self):
        """The nodes of this scope, nested functions left out (they are scopes of their own)."""
        todo = list(ast.iter_child_nodes(self.node))
        while todo:
            node = todo.pop()
            yield node
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                todo.extend(ast.iter_child_nodes(node))

    def _bind(self, target, value):
        if isinstance(target, ast.Name):
            self.assigned.setdefault(target.id, []).append(value)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:  # each element: the whole value (an over-approximation)
                self._bind(t, value)

    def values(self, name):
        """What ``name`` may hold (None: a parameter or a name from elsewhere)."""
        scope = self
        while scope is not None:
            if name in scope.assigned:
                return scope.assigned[name]
            scope = scope.parent
        return None


def _safe_part(node, scope, seen=frozenset()):
    """Whether a joined path part cannot hold a separator or '..' from data."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Call) and _dotted(node.func) in ("safe_name", "utils.safe_name", "int", "len"):
        return True  # checked, or digits
    if isinstance(node, ast.JoinedStr):
        return all(_safe_part(v.value, scope, seen) for v in node.values if isinstance(v, ast.FormattedValue))
    if isinstance(node, ast.Name):
        values = scope.values(node.id)
        if node.id.isupper():  # a module constant
            return True
        if node.id in seen or values is None:
            return False
        return all(_safe_part(v, scope, seen | {node.id}) for v in values)
    if isinstance(node, ast.Subscript):  # an element of a collection (a loop over SPLITS)
        return _safe_part(node.value, scope, seen)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_safe_part(e, scope, seen) for e in node.elts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _safe_part(node.left, scope, seen) and _safe_part(node.right, scope, seen)
    return False


def _joins(node, scope, seen=frozenset()):
    """The (join, part, scope) triples a path expression is built from, following the
    names it uses (a comprehension's loop variables are its own)."""
    out = []
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
        inner = Scope.comprehension(node, scope)
        for g in node.generators:
            out += _joins(g.iter, scope, seen)
        for part in ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
            out += _joins(part, inner, seen)
        return out
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        out.append((node, node.right, scope))
    elif isinstance(node, ast.Call) and _dotted(node.func) == "os.path.join":
        out.extend((node, a, scope) for a in node.args[1:])
    elif isinstance(node, ast.Name) and node.id not in seen:
        for value in scope.values(node.id) or []:
            out += _joins(value, scope, seen | {node.id})
    for child in ast.iter_child_nodes(node):
        out += _joins(child, scope, seen)
    return out


def _scopes(node, parent=None):
    scope = Scope(node, parent)
    yield scope
    for sub in scope.own_nodes():
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _scopes(sub, scope)


def unchecked_joins(path):
    """``(line, text)`` of each write whose path joins a part that is not checked."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = set()
    for scope in _scopes(ast.parse(source)):
        for node in scope.own_nodes():
            target = _writes(node) if isinstance(node, ast.Call) else None
            if target is None:
                continue
            for join, part, where in _joins(target, scope):
                if _safe_part(part, where):
                    continue
                marked = {join.lineno, getattr(join, "end_lineno", join.lineno), node.lineno}
                if not any(PRAGMA in lines[i - 1] for i in marked):
                    found.add((join.lineno, lines[join.lineno - 1].strip()))
    return sorted(found)


def test_the_checker_finds_an_unchecked_name_and_accepts_a_checked_one(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import soundfile\n"
        "def write(out, rows, wav):\n"
        "    for row in rows:\n"
        "        path = out / 'wav' / f\"{row['ID']}.wav\"\n"
        "        soundfile.write(str(path), wav, 16000)\n"
    )
    assert [line for line, _ in unchecked_joins(bad)] == [4]
    good = tmp_path / "good.py"
    good.write_text(bad.read_text().replace("f\"{row['ID']}.wav\"", "safe_name(row['ID'], suffix='.wav')"))
    assert unchecked_joins(good) == []
    constant = tmp_path / "constant.py"
    constant.write_text(
        "SPLITS = ('train', 'test')\n"
        "def write(out, text):\n"
        "    for s in SPLITS:\n"
        "        (out / f'{s}.csv').write_text(text)\n"
        "    (out / text).write_text(text)  # safe-path: reviewed\n"
    )
    assert unchecked_joins(constant) == []


def test_no_writer_joins_an_unchecked_name_onto_its_folder():
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 50
    problems = [f"{p.relative_to(ROOT)}:{line}: {text}" for p in files for line, text in unchecked_joins(p)]
    assert not problems, ("file writes that join a name not passed through sb_meta.utils.safe_name "
                          "(or marked '# safe-path: why'):\n  " + "\n  ".join(problems))


HOSTILE = ["../x", "../../../../victim", "/abs", "a/b", "..", ".", "", "x" * 300, "a\\b", "nul\0byte"]


def _files(folder):
    return {p: p.read_bytes() for p in pathlib.Path(folder).rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_channels_keep_every_hostile_id_inside_out_or_refuse_it(tmp_path, name, capsys):
    """The issue's case: an utterance ID of ``../../../../victim`` replaced a file outside --out."""
    import csv

    import numpy as np
    import soundfile

    from sb_meta.cli import main

    wav = tmp_path / "in" / "a.wav"
    wav.parent.mkdir()
    soundfile.write(str(wav), 0.1 * np.sin(np.arange(8000) / 5.0), 16000)
    (tmp_path / "victim.wav").write_bytes(b"precious")
    with open(tmp_path / "in" / "m.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["ID", "duration", "wav", "spk_id", "wrd"])
        rows.writerow([name, 0.5, wav, "s0", "A"])
    before = _files(tmp_path)
    out = tmp_path / "o" / "deeper"
    code = main(["channels", "--manifests", str(tmp_path / "in" / "m.csv"), "--out", str(out),
                 "--channels", "clean", "--quiet"])
    err = capsys.readouterr().err
    after = _files(tmp_path)
    assert {p: b for p, b in after.items() if p in before} == before  # nothing outside --out changed
    assert all(out in p.parents for p in set(after) - set(before))
    if code == 0:
        assert len(list((out / "wav" / "clean").iterdir())) == 1
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1 and ("ID" in err or "line 2" in err), err
        assert not (out / "wav").exists()  # refused before any audio was written


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_an_export_keeps_hostile_loadable_names_inside_its_folder_or_refuses_them(tmp_path, name):
    """Loadable names come from a model's YAML: a loaded folder could name ``../x``."""
    import torch
    from ruamel.yaml.comments import CommentedMap

    from sb_meta.export.plan import ExportPlan, write_export

    plan = ExportPlan(interface="speechbrain.inference.ASR.EncoderASR", yaml=CommentedMap(a=1),
                      loadables={name: torch.nn.Linear(1, 1)}, info={}, files={name: b"x"})
    dest = tmp_path / "exports" / "model"
    try:
        write_export(plan, dest, verify=False)
    except ValueError as exc:
        assert "name a file" in str(exc) or "too long" in str(exc)
        assert not dest.exists()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(dest in p.parents for p in files), files
