"""Checks shared by the corpus preparation scripts (AN4, LibriSpeech).

A preparation script reads a corpus in its original layout, collects every
problem it finds in a :class:`ProblemReport` (missing or unreadable audio,
empty or malformed transcript lines, audio nobody transcribed...) and only
then decides, through :func:`raise_or_warn`, whether to stop with a
:class:`DataPreparationError` that lists all of them, or (``skip_bad=True``)
to leave the bad utterances out with a single warning. Either way this
happens before any manifest is written, so a failed preparation never leaves
a half-written or mixed set of manifests behind.

The small ``opts.json`` bookkeeping that lets a preparation be skipped when
its manifests already exist for the same options and the same corpus lives in
:mod:`sb_meta.data.prep_record`; its names are importable from here too.
"""

import logging
import pathlib

import soundfile

# the opts.json bookkeeping lives in prep_record; the preparation scripts import it from here
from sb_meta.data.prep_record import (  # noqa: F401
    MAX_NAMED_CHANGES,
    OPTIONS_FILE,
    corpus_changes,
    corpus_fingerprint,
    describe_corpus_changes,
    forget_prep_options,
    load_prep_record,
    prep_is_current,
    prep_staleness,
    record_prep_options,
)

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
