"""Small helpers shared across sb-meta."""

import contextlib
import importlib.util
import os
import pathlib
import tempfile

__all__ = ["load_script", "atomic_open"]


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
