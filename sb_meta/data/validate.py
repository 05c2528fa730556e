"""Checks shared by the corpus preparation scripts (AN4, LibriSpeech).

A preparation script reads a corpus in its original layout, collects every
problem it finds in a :class:`ProblemReport` (missing or unreadable audio,
empty or malformed transcript lines, audio nobody transcribed...) and only
then decides, through :func:`raise_or_warn`, whether to stop with a
:class:`DataPreparationError` that lists all of them, or (``skip_bad=True``)
to leave the bad utterances out with a single warning. Either way this
happens before any manifest is written, so a failed preparation never leaves
a half-written or mixed set of manifests behind.

The module also holds the small ``opts.json`` bookkeeping that lets a
preparation be skipped when its manifests already exist for the same options
and the same corpus, as SpeechBrain recipes do: with the options, a
preparation records a cheap fingerprint of every input file it read (name,
size and modification time, from ``stat`` alone), and prepares again, saying
which files were added, removed or modified, when that changed.
"""

import hashlib
import json
import logging
import pathlib

import soundfile

from sb_meta.utils import atomic_open

logger = logging.getLogger(__name__)

# Kinds of problems, in the order they are reported.
MALFORMED_LINE = "malformed transcript line"
DUPLICATE_ID = "duplicate utterance id"
EMPTY_TRANSCRIPT = "empty transcript"
TRANSCRIPT_WITHOUT_AUDIO = "transcript without audio"
UNREADABLE_AUDIO = "unreadable audio"
AUDIO_WITHOUT_TRANSCRIPT = "audio without transcript"
EMPTY_SPLIT = "split without usable utterances"

PROBLEM_KINDS = (
    MALFORMED_LINE,
    DUPLICATE_ID,
    EMPTY_TRANSCRIPT,
    TRANSCRIPT_WITHOUT_AUDIO,
    UNREADABLE_AUDIO,
    AUDIO_WITHOUT_TRANSCRIPT,
    EMPTY_SPLIT,
)

MAX_LISTED_PER_KIND = 20
MAX_NAMED_CHANGES = 5  # files named per kind of corpus change
OPTIONS_FILE = "opts.json"


class ProblemReport:
    """Problems found in a corpus, grouped by kind, in the order found.

    Example
    -------
    >>> report = ProblemReport()
    >>> bool(report)
    False
    >>> report.add(EMPTY_TRANSCRIPT, "u1 (trans.txt:3)")
    >>> report.add(UNREADABLE_AUDIO, "/data/u2.flac: 0 frames")
    >>> report.counts()
    {'empty transcript': 1, 'unreadable audio': 1}
    >>> print(report.format())
    empty transcript (1):
      u1 (trans.txt:3)
    unreadable audio (1):
      /data/u2.flac: 0 frames
    """

    def __init__(self):
        self._by_kind = {}

    def add(self, kind, item):
        """Record one problem ``item`` (a short string naming the culprit)."""
        self._by_kind.setdefault(kind, []).append(str(item))

    def __bool__(self):
        return any(self._by_kind.values())

    def __len__(self):
        return sum(len(v) for v in self._by_kind.values())

    def _kinds(self):
        known = [k for k in PROBLEM_KINDS if self._by_kind.get(k)]
        other = [k for k in self._by_kind if k not in PROBLEM_KINDS and self._by_kind[k]]
        return known + other

    def as_dict(self):
        """Return ``{kind: [item, ...]}`` for the kinds that have problems."""
        return {k: list(self._by_kind[k]) for k in self._kinds()}

    def counts(self):
        """Return ``{kind: number of problems}``."""
        return {k: len(self._by_kind[k]) for k in self._kinds()}

    def format(self, limit=MAX_LISTED_PER_KIND):
        """Return the problems as indented text, ``limit`` items per kind at most."""
        lines = []
        for kind in self._kinds():
            items = self._by_kind[kind]
            lines.append(f"{kind} ({len(items)}):")
            lines.extend(f"  {item}" for item in items[:limit])
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")
        return "\n".join(lines)


class DataPreparationError(ValueError):
    """Bad input found while preparing a corpus; lists every problem found.

    Arguments
    ---------
    report : ProblemReport
        The problems, all of them (the message lists up to
        ``MAX_LISTED_PER_KIND`` per kind, then says how many more).
    title : str
        What was being prepared, e.g. ``"AN4 in /data/an4"``.

    Attributes
    ----------
    problems : dict
        ``{kind: [item, ...]}``, complete (not truncated).

    Example
    -------
    >>> report = ProblemReport()
    >>> for i in range(22):
    ...     report.add(TRANSCRIPT_WITHOUT_AUDIO, f"utt{i}: no file /d/utt{i}.flac")
    >>> err = DataPreparationError(report, "toy corpus")
    >>> isinstance(err, ValueError), len(err.problems[TRANSCRIPT_WITHOUT_AUDIO])
    (True, 22)
    >>> print(err)  # doctest: +ELLIPSIS
    toy corpus: 22 problems found, nothing was written
    transcript without audio (22):
      utt0: no file /d/utt0.flac
    ...
      utt19: no file /d/utt19.flac
      ... and 2 more
    Fix or remove the files named above, or pass skip_bad=True (--skip_bad) to leave them out with a warning.
    """

    def __init__(self, report, title="data preparation"):
        self.problems = report.as_dict()
        self.counts = report.counts()
        message = (
            f"{title}: {len(report)} problem{'s' if len(report) != 1 else ''} found, "
            f"nothing was written\n{report.format()}\n"
            "Fix or remove the files named above, or pass skip_bad=True (--skip_bad) "
            "to leave them out with a warning."
        )
        super().__init__(message)


def raise_or_warn(report, skip_bad, title, log=None):
    """Stop on ``report``'s problems, or warn once about what is skipped.

    Arguments
    ---------
    report : ProblemReport
        Everything found wrong in the corpus.
    skip_bad : bool
        False: raise. True: log one warning listing and counting the problems.
    title : str
        What was being prepared, used in the message.
    log : logging.Logger, optional
        Logger for the warning (default: this module's).

    Returns
    -------
    dict
        ``{kind: [item, ...]}`` of what was skipped (empty when no problems).

    Raises
    ------
    DataPreparationError
        If there are problems and ``skip_bad`` is False.

    Example
    -------
    >>> report = ProblemReport()
    >>> raise_or_warn(report, skip_bad=False, title="toy")
    {}
    >>> report.add(EMPTY_TRANSCRIPT, "u1 (t.txt:1)")
    >>> raise_or_warn(report, skip_bad=True, title="toy")
    {'empty transcript': ['u1 (t.txt:1)']}
    >>> try:
    ...     raise_or_warn(report, skip_bad=False, title="toy")
    ... except DataPreparationError as e:
    ...     print(e)  # doctest: +ELLIPSIS
    toy: 1 problem found, nothing was written
    empty transcript (1):
      u1 (t.txt:1)
    Fix or remove ...
    """
    if not report:
        return {}
    if not skip_bad:
        raise DataPreparationError(report, title)
    counts = ", ".join(f"{n} {kind}" for kind, n in report.counts().items())
    (log or logger).warning(
        "%s: skipped %d problem%s (%s):\n%s",
        title,
        len(report),
        "s" if len(report) != 1 else "",
        counts,
        report.format(),
    )
    return report.as_dict()


def check_audio(path):
    """Read an audio file's header and return its duration, or why it is unusable.

    Only the header is read (``soundfile.info``), so this is fast. A file
    soundfile cannot open, one with 0 frames, and a NIST SPHERE file shorter
    than its header's ``sample_count`` (a truncated download) are unusable.

    Arguments
    ---------
    path : str or pathlib.Path
        The audio file.

    Returns
    -------
    tuple
        ``(duration_in_seconds, None)`` if usable, else ``(None, reason)``.

    Example
    -------
    >>> import tempfile, pathlib, numpy as np, soundfile
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> soundfile.write(tmp / "ok.flac", np.zeros(8000, dtype="int16"), 16000)
    >>> check_audio(tmp / "ok.flac")
    (0.5, None)
    >>> _ = (tmp / "bad.flac").write_bytes(b"not audio")
    >>> check_audio(tmp / "bad.flac")[0] is None
    True
    """
    try:
        info = soundfile.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        reason = str(e).replace(f"Error opening {str(path)!r}: ", "")
        return None, f"cannot be read ({reason.strip() or type(e).__name__})"
    if info.frames <= 0 or info.samplerate <= 0:
        return None, "has 0 frames (empty audio)"
    if info.format == "NIST":
        declared = _nist_sample_count(path)
        if declared is not None and declared > info.frames:
            return None, (
                f"is truncated (header declares {declared} samples, file holds {info.frames})"
            )
    return info.frames / info.samplerate, None


def _nist_sample_count(path):
    """Return ``sample_count`` from a NIST SPHERE header, or None if absent."""
    try:
        with open(path, "rb") as f:
            header = f.read(1024).decode("ascii", errors="replace")
    except OSError:
        return None
    for line in header.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == "sample_count" and fields[1] == "-i":
            try:
                return int(fields[2])
            except ValueError:
                return None
        if line.startswith("end_head"):
            break
    return None


def read_transcript_lines(path, report):
    """Read a transcript file's non-blank lines, with their 1-based numbers.

    Lines that are not valid UTF-8 are reported as malformed (naming the file
    and line number) instead of stopping the whole read.

    Arguments
    ---------
    path : pathlib.Path
        The transcript file.
    report : ProblemReport
        Where undecodable lines are recorded.

    Returns
    -------
    list of (int, str)
        Line number and stripped text of each non-blank line.

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.txt"
    >>> _ = p.write_bytes(b"A-1-2 HELLO\\r\\n\\n\\xff\\xfe\\nA-1-3 BYE\\n")
    >>> report = ProblemReport()
    >>> read_transcript_lines(p, report)
    [(1, 'A-1-2 HELLO'), (4, 'A-1-3 BYE')]
    >>> report.counts()
    {'malformed transcript line': 1}
    """
    out = []
    for number, raw in enumerate(pathlib.Path(path).read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            report.add(MALFORMED_LINE, f"{path}:{number}: not UTF-8 text: {raw[:60]!r}")
            continue
        if line:
            out.append((number, line))
    return out


# --------------------------------------------------------------------------
# Re-use of an earlier preparation (opts.json and the corpus fingerprint)
# --------------------------------------------------------------------------


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
