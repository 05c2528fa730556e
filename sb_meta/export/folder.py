"""Writing model folders without ever losing what was there.

Every command that writes a model (the recipes' export, ``sb-meta adapt``,
adapter exports) goes through :func:`atomic_folder`:

* the new folder is assembled in a hidden temporary folder beside the
  destination (``.<name>.tmp-<pid>-…``) and swapped in only once complete, so
  a crash or ``kill -9`` never leaves a half-written model at the destination;
  temporary folders of killed writers are removed by the next writer to the
  same destination;
* a destination that exists is replaced only when it is an sb-meta export
  (recognised by its own metadata file, ``sbmeta.json`` or ``adapters.json``,
  never by SpeechBrain's ``hyperparams.yaml``, which every experiment folder
  holds) **and** ``force=True`` (``--force``), and only when it holds nothing
  but the files that export wrote; anything else is refused with the reason.

Example
-------
>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_folder(root / "out") as tmp:
...     _ = (tmp / "sbmeta.json").write_text('{"format": "sb-meta-pretrained/1", "files": ["sbmeta.json"]}')
>>> with atomic_folder(root / "out") as tmp:
...     pass
Traceback (most recent call last):
...
sb_meta.export.folder.DestinationError: .../out already holds an sb-meta export; pass --force (force=True) to replace it
>>> _ = (root / "exp").mkdir(); _ = (root / "exp" / "hyperparams.yaml").write_text("a: 1")
>>> with atomic_folder(root / "exp", force=True) as tmp:
...     pass
Traceback (most recent call last):
...
sb_meta.export.folder.DestinationError: .../exp exists and is not an sb-meta export (it holds hyperparams.yaml); nothing was written: choose a new or empty folder
"""

import contextlib
import ctypes
import json
import os
import pathlib
import re
import shutil
import tempfile

__all__ = [
    "DestinationError",
    "atomic_folder",
    "check_destination",
    "is_sbmeta_export",
    "META_FILE",
    "ADAPTERS_META_FILE",
]

#: sb-meta's metadata file of a model export (also its marker).
META_FILE = "sbmeta.json"
#: metadata file of an adapter-only export (also its marker).
ADAPTERS_META_FILE = "adapters.json"
_FORMATS = {META_FILE: "sb-meta-pretrained/", ADAPTERS_META_FILE: "sb-meta-adapters/"}
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-")


class DestinationError(FileExistsError):
    """The destination of a model folder cannot be written without losing data."""

    def __str__(self):
        return str(self.args[0])


def _metadata(folder):
    """(marker file name, its JSON) when ``folder`` is an sb-meta export, else None."""
    for name, prefix in _FORMATS.items():
        path = pathlib.Path(folder) / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and str(data.get("format", "")).startswith(prefix):
            return name, data
    return None


def is_sbmeta_export(folder):
    """Whether ``folder`` holds an sb-meta model or adapter export."""
    return _metadata(folder) is not None


def _listing(paths, limit=8):
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in paths)
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def check_destination(dest, force=False):
    """Raise :class:`DestinationError` unless writing a model to ``dest`` is safe.

    Safe: ``dest`` does not exist, is an empty folder, or (with ``force``) is
    an sb-meta export holding only the files it lists. Call it before long
    work, so that a refusal comes first; :func:`atomic_folder` checks again.
    """
    dest = pathlib.Path(dest)
    if not os.path.lexists(dest):
        return
    if not dest.is_dir():
        raise DestinationError(f"{dest} exists and is not a folder; nothing was written")
    entries = list(dest.iterdir())
    if not entries:
        return
    meta = _metadata(dest)
    if meta is None:
        raise DestinationError(
            f"{dest} exists and is not an sb-meta export (it holds {_listing(entries)}); "
            "nothing was written: choose a new or empty folder"
        )
    if not force:
        raise DestinationError(
            f"{dest} already holds an sb-meta export; pass --force (force=True) to replace it"
        )
    marker, data = meta
    ours = set(data.get("files") or []) | {marker}
    extra = [p for p in entries if p.name not in ours]
    if extra:
        raise DestinationError(
            f"{dest} holds an sb-meta export but also {_listing(extra)}, which the export did "
            "not write; nothing was replaced: move them away or choose another folder"
        )


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(dest):
    """Remove the temporary folders that killed writers to ``dest`` left behind.

    Returns the removed paths.
    """
    dest = pathlib.Path(dest)
    removed = []
    if not dest.parent.is_dir():
        return removed
    for path in dest.parent.iterdir():
        m = _TMP_RE.match(path.name)
        if m and m.group("name") == dest.name and not _pid_alive(int(m.group("pid"))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _exchange(a, b):
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _replace_dir(new, dest):
    """Put folder ``new`` at ``dest``; an existing ``dest`` is kept until ``new`` is in place."""
    if not os.path.lexists(dest):
        os.rename(new, dest)
        return
    if _exchange(new, dest):  # `new` now holds the previous export
        shutil.rmtree(new, ignore_errors=True)
        return
    old = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-{os.getpid()}-", dir=dest.parent))
    os.rmdir(old)
    os.rename(dest, old)
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _umask():
    """The process's umask (reading it means setting it: set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_folder(dest, force=False):
    """Yield a temporary folder that replaces ``dest`` when the block succeeds.

    See the module documentation for when an existing ``dest`` may be
    replaced. The temporary folder is removed if the block raises. The new
    folder gets the permissions the umask gives a new folder (``mkdir``'s).
    """
    dest = pathlib.Path(dest).absolute()
    check_destination(dest, force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the model from other users
        check_destination(dest, force)  # nothing appeared meanwhile
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
