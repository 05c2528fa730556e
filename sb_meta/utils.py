"""Small helpers shared across sb-meta."""

import importlib.util
import pathlib

__all__ = ["load_script"]


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
