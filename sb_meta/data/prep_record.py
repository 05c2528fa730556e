"""Re-use of an earlier preparation: ``opts.json`` and the corpus fingerprint.

A preparation script (AN4, LibriSpeech, speechocean762) is skipped when its
manifests already exist for the same options and the same corpus, as
SpeechBrain recipes do: with the options, a preparation records in
``opts.json`` a cheap fingerprint of every input file it read (name, size and
modification time, from ``stat`` alone), and prepares again, saying which
files were added, removed or modified, when that changed. The checks of the
corpus itself are in :mod:`sb_meta.data.validate`, which also re-exports these
names.
"""

import hashlib
import json
import pathlib

from sb_meta.utils import atomic_open

__all__ = ["MAX_NAMED_CHANGES", "OPTIONS_FILE", "corpus_changes", "corpus_fingerprint", "describe_corpus_changes",
           "forget_prep_options", "load_prep_record", "prep_is_current", "prep_staleness", "record_prep_options"]

MAX_NAMED_CHANGES = 5  # files named per kind of corpus change
OPTIONS_FILE = "opts.json"


def corpus_fingerprint(root, files):
    """Fingerprint the input files of a preparation from their size and mtime.

    Only ``os.stat`` is called: no file is opened, so fingerprinting a whole
    corpus costs one ``stat`` per file. A file changed without changing its
    size within one modification-time tick would go unnoticed; anything else
    (a file added, removed, rewritten or touched) changes the fingerprint.

    Arguments
    ---------
    root : str or pathlib.Path
        The corpus root; files under it are named relative to it (so the
        listing stays readable and the same when ``root`` is recorded apart).
    files : iterable of str or pathlib.Path
        Every input file the preparation reads. Order does not matter; a file
        that vanished before it could be stat-ed is left out.

    Returns
    -------
    dict
        ``files`` (how many), ``digest`` (SHA-256 hex of the sorted listing)
        and ``listing`` (``{relative path: "size mtime_ns"}``, sorted), as
        stored in ``opts.json`` by :func:`record_prep_options`.

    Example
    -------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "a.txt").write_text("hello")
    >>> fp = corpus_fingerprint(root, [root / "a.txt", root / "gone.txt"])
    >>> fp["files"], fp["listing"]["a.txt"].split()[0], len(fp["digest"])
    (1, '5', 64)
    """
    root = pathlib.Path(root)
    listing = {}
    for path in files:
        path = pathlib.Path(path)
        try:
            st = path.stat()
        except OSError:
            continue
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = str(path)
        listing[name] = f"{st.st_size} {st.st_mtime_ns}"
    listing = dict(sorted(listing.items()))
    text = "".join(f"{name}\t{stat}\n" for name, stat in listing.items())
    return {
        "files": len(listing),
        "digest": hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest(),
        "listing": listing,
    }


def corpus_changes(old, new):
    """Compare two :func:`corpus_fingerprint` results, file by file.

    Returns
    -------
    dict
        ``added``, ``removed`` and ``modified``: sorted lists of file names.

    Example
    -------
    >>> old = {"listing": {"a": "1 10", "b": "2 10"}}
    >>> corpus_changes(old, {"listing": {"b": "2 11", "c": "3 10"}})
    {'added': ['c'], 'removed': ['a'], 'modified': ['b']}
    """
    before = (old or {}).get("listing") or {}
    after = (new or {}).get("listing") or {}
    return {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "modified": sorted(k for k in set(before) & set(after) if before[k] != after[k]),
    }


def describe_corpus_changes(old, new, limit=None):
    """Say how the corpus changed between two fingerprints, naming a few files.

    At most ``limit`` (default ``MAX_NAMED_CHANGES``) files are named per
    kind of change; all are counted.

    Example
    -------
    >>> old = {"listing": {"wav/a.sph": "1 10", "etc/t.txt": "5 10"}}
    >>> new = {"listing": {"etc/t.txt": "6 11"}}
    >>> describe_corpus_changes(old, new)
    'corpus changed since the manifests were written: 0 files added, 1 removed, 1 modified (removed wav/a.sph; modified etc/t.txt)'
    """
    limit = MAX_NAMED_CHANGES if limit is None else limit
    changes = corpus_changes(old, new)
    added, removed, modified = (len(changes[k]) for k in ("added", "removed", "modified"))
    text = (
        "corpus changed since the manifests were written: "
        f"{added} file{'' if added == 1 else 's'} added, {removed} removed, {modified} modified"
    )
    named = []
    for kind, names in changes.items():
        if names:
            more = f" and {len(names) - limit} more" if len(names) > limit else ""
            named.append(f"{kind} {', '.join(names[:limit])}{more}")
    if named:
        text += f" ({'; '.join(named)})"
    elif (old or {}).get("digest") != (new or {}).get("digest"):
        text += " (no file listing was recorded to tell which)"
    return text


def prep_staleness(save_folder, options, manifest_names, corpus=None):
    """Say why ``save_folder`` does not hold this preparation, or None if it does.

    The earlier preparation is current when every manifest in
    ``manifest_names`` exists, the ``opts.json`` written by
    :func:`record_prep_options` holds the same ``options`` and, when
    ``corpus`` is given, the same corpus fingerprint
    (:func:`corpus_fingerprint`). A record without a fingerprint (written by
    an older sb-meta) is not trusted when ``corpus`` is given.

    Arguments
    ---------
    save_folder : str or pathlib.Path
        Where the manifests are.
    options : dict
        JSON-serialisable options of the preparation.
    manifest_names : sequence of str
        File names expected in ``save_folder``.
    corpus : dict, optional
        The fingerprint of the corpus as it is now.

    Returns
    -------
    str or None
        A short reason (e.g. ``"corpus changed since the manifests were
        written: 0 files added, 1 removed, 0 modified (removed wav/x.sph)"``),
        or None when the manifests can be re-used.

    Example
    -------
    >>> import tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (tmp / "a.csv").write_text("ID,duration,wav,spk_id,wrd\\n")
    >>> old = {"files": 1, "digest": "d1", "listing": {"x.sph": "10 1"}}
    >>> record_prep_options(tmp, {"seed": 1}, skipped={}, corpus=old)
    >>> prep_staleness(tmp, {"seed": 1}, ["a.csv"], corpus=old) is None
    True
    >>> prep_staleness(tmp, {"seed": 2}, ["a.csv"], corpus=old)
    'options changed: seed'
    >>> prep_staleness(tmp, {"seed": 1}, ["a.csv"], corpus={"digest": "d2", "listing": {}})
    'corpus changed since the manifests were written: 0 files added, 1 removed, 0 modified (removed x.sph)'
    """
    save_folder = pathlib.Path(save_folder)
    missing = [name for name in manifest_names if not (save_folder / name).is_file()]
    if len(missing) == len(manifest_names) and not (save_folder / OPTIONS_FILE).exists():
        return "no earlier preparation found"
    if missing:
        return f"manifest{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing"
    recorded = load_prep_record(save_folder)
    if not isinstance(recorded, dict) or "options" not in recorded:
        return f"no readable record of the earlier preparation ({OPTIONS_FILE})"
    before, now = recorded["options"], _jsonable(options)
    if before != now:
        if isinstance(before, dict) and isinstance(now, dict):
            keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            return f"options changed: {', '.join(keys)}"
        return "options changed"
    if corpus is None:
        return None
    old = recorded.get("corpus")
    if not isinstance(old, dict):
        return "no corpus fingerprint was recorded with the earlier preparation"
    if old.get("digest") != corpus.get("digest"):
        return describe_corpus_changes(old, corpus)
    return None


def prep_is_current(save_folder, options, manifest_names, corpus=None):
    """Tell whether ``save_folder`` already holds this preparation.

    True when :func:`prep_staleness` finds no reason to prepare again: every
    manifest in ``manifest_names`` exists, ``opts.json`` holds the same
    ``options`` and (when ``corpus`` is given) the same corpus fingerprint.

    Arguments
    ---------
    save_folder : str or pathlib.Path
        Where the manifests are.
    options : dict
        JSON-serialisable options of the preparation.
    manifest_names : sequence of str
        File names expected in ``save_folder``.
    corpus : dict, optional
        The corpus fingerprint now (:func:`corpus_fingerprint`).

    Returns
    -------
    bool

    Example
    -------
    >>> import tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (tmp / "a.csv").write_text("ID,duration,wav,spk_id,wrd\\n")
    >>> prep_is_current(tmp, {"seed": 1}, ["a.csv"])
    False
    >>> record_prep_options(tmp, {"seed": 1}, skipped={})
    >>> prep_is_current(tmp, {"seed": 1}, ["a.csv"]), prep_is_current(tmp, {"seed": 2}, ["a.csv"])
    (True, False)
    """
    return prep_staleness(save_folder, options, manifest_names, corpus) is None


def load_prep_record(save_folder):
    """Return the content of ``save_folder/opts.json``, or None if absent/unreadable."""
    path = pathlib.Path(save_folder) / OPTIONS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record_prep_options(save_folder, options, skipped, corpus=None):
    """Write ``opts.json`` (atomically): the options, what was skipped and the corpus fingerprint.

    ``corpus`` should be taken (:func:`corpus_fingerprint`) *before* the
    corpus is read, so that a change made while preparing is seen next time.
    """
    save_folder = pathlib.Path(save_folder)
    save_folder.mkdir(parents=True, exist_ok=True)
    record = {"options": _jsonable(options), "skipped": skipped}
    if corpus is not None:
        record["corpus"] = corpus
    content = json.dumps(record, indent=2)
    with atomic_open(save_folder / OPTIONS_FILE) as f:
        f.write(content + "\n")


def forget_prep_options(save_folder):
    """Remove ``opts.json`` so that manifests being rewritten are never re-used half-done."""
    path = pathlib.Path(save_folder) / OPTIONS_FILE
    if path.exists():
        path.unlink()


def _jsonable(options):
    # Round-trip so that tuples compare equal to the lists read back from JSON.
    return json.loads(json.dumps(options))
