"""Small helpers shared across sb-meta."""

import contextlib
import importlib.util
import logging
import os
import pathlib
import tempfile

__all__ = ["RecipeError", "load_script", "atomic_open", "safe_name", "check_output", "quiet"]


class RecipeError(ValueError):
    """A mistake in a recipe's configuration or data, reported in one line
    (also :class:`sb_meta.recipe.RecipeError`)."""


#: characters a name from data cannot hold in a file name, and their percent encoding
_ENCODED = {c: f"%{ord(c):02X}" for c in "%/\\" + "".join(map(chr, range(32))) + "\x7f"}
#: the longest file name most file systems allow, in bytes
NAME_MAX = 255


def load_script(path, name=None):
    """Import a Python file that is not part of a package (a recipe script,
    a test helper) and return it as a module.

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "prep.py"
    >>> _ = p.write_text("ANSWER = 42\\n")
    >>> load_script(p).ANSWER
    42
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such script {path}")
    spec = importlib.util.spec_from_file_location(name or f"sbmeta_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def atomic_open(path, mode="w", suffix=".tmp", **kwargs):
    """Open a temporary file beside ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it
    was, so a reader never sees a half-written file.

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_open(p) as f:
    ...     _ = f.write("done")
    >>> p.read_text()
    'done'
    >>> try:
    ...     with atomic_open(p) as f:
    ...         _ = f.write("half")
    ...         raise RuntimeError("interrupted")
    ... except RuntimeError:
    ...     pass
    >>> p.read_text(), sorted(x.name for x in p.parent.iterdir())
    ('done', ['out.txt'])
    """
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_output(out, inputs=(), flag="--out"):
    """Raise before any work unless ``out`` (a folder or file a command will write)
    can be written without touching an input.

    ``out`` must not be, nor contain, any of ``inputs`` (files or folders; those
    that do not exist are ignored), and it must be writable: the folder itself
    when it exists, else its nearest existing parent.

    Raises
    ------
    ValueError
        Naming the input ``out`` would overwrite.
    PermissionError
        Naming the folder that is not writable.

    Example
    -------
    >>> import tempfile, pathlib
    >>> corpus = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (corpus / "test.csv").write_text("ID\\n")
    >>> check_output(corpus / "new", [corpus / "test.csv"])
    >>> check_output(corpus, [corpus / "test.csv"])
    Traceback (most recent call last):
    ...
    ValueError: --out ... contains the input .../test.csv; an input is never an output: choose another folder
    """
    given, out = out, pathlib.Path(out).absolute()
    target = out.resolve()
    for item in inputs:
        if item is None or not os.path.exists(item):
            continue
        source = pathlib.Path(item).resolve()
        if source == target or target in source.parents:
            relation = "is" if source == target else "contains"
            raise ValueError(f"{flag} {given} {relation} the input {item}; an input is never an output: "
                             "choose another folder")
    existing = next(p for p in [out, *out.parents] if p.exists())
    if not existing.is_dir() and existing != out:
        raise FileExistsError(f"cannot write {flag} {given}: {existing} is a file")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {flag} {given}: {folder} is not writable; nothing was done")


def safe_name(name, what="name", suffix=""):
    """``name`` (an utterance ID, a task, a speaker, a word...) as one file name.

    Every writer that makes a file name from data goes through this: the
    result never leaves the folder it is joined to. Path separators, NUL and
    control characters are percent-encoded (and ``%`` itself, so two names
    never meet), as are the names ``.`` and ``..``; an empty name, or one too
    long for a file name, is refused naming ``what``.

    Arguments
    ---------
    name : str
        The name from data.
    what : str
        What it is, for the error (``"utterance ID"``, ``"task"``...).
    suffix : str
        Appended (e.g. ``".wav"``); counted in the length limit.

    Example
    -------
    >>> safe_name("spk1_utt3", suffix=".wav")
    'spk1_utt3.wav'
    >>> safe_name("../../victim"), safe_name("/abs"), safe_name(".."), safe_name("50%")
    ('..%2F..%2Fvictim', '%2Fabs', '%2E%2E', '50%25')
    >>> safe_name("", "utterance ID")
    Traceback (most recent call last):
    ...
    ValueError: utterance ID '' is empty: it cannot name a file
    """
    text = str(name)
    if not text.strip():
        raise ValueError(f"{what} {text!r} is empty: it cannot name a file")
    out = "".join(_ENCODED.get(c, c) for c in text)
    if out in (".", ".."):
        out = out.replace(".", "%2E")
    out += suffix
    if len(out.encode("utf-8")) > NAME_MAX:
        raise ValueError(
            f"{what} {text[:40]!r}... is too long to name a file ({len(out.encode('utf-8'))} bytes "
            f"with {suffix!r}; file names hold at most {NAME_MAX}): shorten it"
        )
    return out


@contextlib.contextmanager
def quiet(name, level=logging.WARNING):
    """Within the block, the logger ``name`` shows nothing below ``level``.

    Example
    -------
    >>> with quiet("speechbrain.core"):
    ...     logging.getLogger("speechbrain.core").info("not shown")
    """
    log = logging.getLogger(name)
    saved = log.level
    log.setLevel(max(level, saved))
    try:
        yield
    finally:
        log.setLevel(saved)
