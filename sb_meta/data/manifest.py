"""SpeechBrain CSV manifests: writing (atomically), reading and summarising.

A manifest is SpeechBrain's CSV layout ``ID,duration,wav,spk_id,wrd`` plus any
task columns (``lang``, ``voice``, ``accent``...). Every writer in sb-meta goes
through :func:`write_manifest`, which writes to a temporary file and renames it,
so an interrupted preparation never leaves a half-written manifest behind.
Every reader goes through :func:`read_manifest`, which checks the file (UTF-8
CSV with a header, whole rows, required columns, no empty values where one is
needed, unique IDs) and raises a :class:`ManifestError` naming the file, the
line, the row's ID and the column of each problem.
"""

import collections
import csv
import functools
import io
import math
import pathlib

from sb_meta.utils import atomic_open

BASE_COLUMNS = ("ID", "duration", "wav", "spk_id", "wrd")


def write_manifest(path, rows, extra_columns=()):
    """Write ``rows`` (dicts) as a SpeechBrain CSV manifest, atomically.

    Arguments
    ---------
    path : str or pathlib.Path
        Destination CSV file; its folder is created if needed.
    rows : list of dict
        One dict per utterance with at least the keys of ``BASE_COLUMNS``.
    extra_columns : sequence of str
        Task columns written after the base ones, in this order.

    Returns
    -------
    pathlib.Path
        The written file.

    Example
    -------
    >>> import tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> row = dict(ID="u1", duration=1.5, wav="/a.wav", spk_id="s1", wrd="HI", lang="en")
    >>> p = write_manifest(tmp / "train.csv", [row], extra_columns=["lang"])
    >>> p.read_text().splitlines()[0]
    'ID,duration,wav,spk_id,wrd,lang'
    >>> read_manifest(p)[0]["lang"]
    'en'
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fieldnames = list(BASE_COLUMNS) + [c for c in extra_columns if c not in BASE_COLUMNS]
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            missing = [c for c in fieldnames if c not in row]
            if missing:
                raise ValueError(f"manifest row {row.get('ID', row)!r} lacks columns {missing}")
            out = dict(row)
            if isinstance(out["duration"], float):
                out["duration"] = f"{out['duration']:.3f}"
            writer.writerow(out)
    return path


REQUIRED_COLUMNS = ("ID", "duration", "wav")
NONEMPTY_COLUMNS = ("ID", "wav")
MAX_LISTED_PROBLEMS = 10


class ManifestProblem(collections.namedtuple("ManifestProblem", "line column id message")):
    """One problem in a manifest: where it is and what is wrong.

    ``line`` is the 1-based line of the file (the header is line 1; None for
    the file as a whole), ``column`` the column name (or None), ``id`` the
    row's ID when known, and ``message`` what is wrong there.

    Example
    -------
    >>> str(ManifestProblem(7, "wav", "spk024_0003", "empty 'wav'"))
    "line 7 (ID spk024_0003): empty 'wav'"
    """

    __slots__ = ()

    def __str__(self):
        where = [] if self.line is None else [f"line {self.line}"]
        if self.id:
            where.append(f"(ID {self.id})")
        return f"{' '.join(where)}: {self.message}" if where else self.message


class ManifestError(ValueError):
    """A manifest that cannot be used, naming the file and each problem's line and column.

    Arguments
    ---------
    path : str or pathlib.Path
        The manifest.
    problems : list of ManifestProblem
        Everything found wrong (the message lists the first
        ``MAX_LISTED_PROBLEMS`` and counts the rest).

    Attributes
    ----------
    path : str
        The manifest.
    problems : list of ManifestProblem
        All of them, not truncated.

    Example
    -------
    >>> err = ManifestError("data/test.csv", [ManifestProblem(7, "wav", "spk024_0003", "empty 'wav'")])
    >>> print(err)
    manifest data/test.csv, line 7 (ID spk024_0003): empty 'wav'
    >>> isinstance(err, ValueError), err.problems[0].column
    (True, 'wav')
    """

    def __init__(self, path, problems):
        self.path = str(path)
        self.problems = list(problems)
        if len(self.problems) == 1:
            problem = self.problems[0]
            sep = ", " if problem.line is not None else ": "
            message = f"manifest {self.path}{sep}{problem}"
        else:
            shown = [f"  {p}" for p in self.problems[:MAX_LISTED_PROBLEMS]]
            if len(self.problems) > MAX_LISTED_PROBLEMS:
                shown.append(f"  ... and {len(self.problems) - MAX_LISTED_PROBLEMS} more")
            message = f"manifest {self.path}: {len(self.problems)} problems\n" + "\n".join(shown)
        super().__init__(message)


def read_manifest(path, required=REQUIRED_COLUMNS, nonempty=NONEMPTY_COLUMNS, unique_ids=True, numeric=(),
                  id_column="ID"):
    """Read and check a CSV manifest; return its rows as dicts of strings.

    This is the one manifest reader of sb-meta: every command reads its CSV
    through it, so the same mistakes get the same message everywhere. The
    file must be UTF-8 text (a leading byte-order mark is accepted) in CSV
    with a header line. Every row must have as many fields as the header, and
    the checks chosen below must hold. All problems found are reported at
    once, each naming its line (the header is line 1), the row's ID and the
    column.

    Arguments
    ---------
    path : str or pathlib.Path
        The manifest.
    required : sequence of str
        Columns the header must have (``ID,duration,wav`` by default).
    nonempty : sequence of str
        Columns whose values may not be empty or blank (``ID`` and ``wav`` by
        default). They must be in the header too (so a caller that overrides
        ``required`` for a CSV without ``wav`` passes ``nonempty=()`` too).
    unique_ids : bool
        If True (the default, as SpeechBrain's own loader requires), an ID
        used twice is an error naming both lines; ``id_column`` must then be
        in the header and filled in every row.
    numeric : sequence of str
        Columns whose values must be finite numbers, so not empty either
        (e.g. ``("duration",)``). They must be in the header too.
    id_column : str
        The column that identifies a row (``ID``).

    Returns
    -------
    list of dict
        One ``{column: value}`` dict per row, in file order; all values are
        strings, as written.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or is a folder.
    ManifestError
        (a ``ValueError``) if the file is not UTF-8 CSV text, has no header,
        lacks a column, or has bad rows: it lists up to
        ``MAX_LISTED_PROBLEMS`` problems, and keeps all of them in
        ``.problems``.

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "test.csv"
    >>> _ = p.write_text(
    ...     "ID,duration,wav,spk_id,wrd\\n"
    ...     "spk024_0001,1.5,a.wav,spk024,HELLO\\n"
    ...     "spk024_0002,2.0,b.wav,spk024,\\n"
    ... )
    >>> rows = read_manifest(p)
    >>> rows[0]["wav"], rows[1]["wrd"]
    ('a.wav', '')
    >>> try:
    ...     read_manifest(p, required=("ID", "wav", "wrd", "gender"))
    ... except ManifestError as e:
    ...     print(str(e).replace(str(p), "test.csv"))
    manifest test.csv, line 1: missing column 'gender'; the header is ID,duration,wav,spk_id,wrd
    """
    path = pathlib.Path(path)
    records = _csv_records(csv.reader(io.StringIO(_read_text(path), newline="")), functools.partial(_fail, path))
    header, seen = _read_header(path, records, required, nonempty, numeric, unique_ids, id_column)
    return _read_rows(path, records, header, seen, nonempty, numeric, unique_ids, id_column)


def _fail(path, line, message, column=None):
    raise ManifestError(path, [ManifestProblem(line, column, None, message)])


def _read_text(path):
    """The text of the manifest ``path``: UTF-8 (a leading byte-order mark dropped), no NUL byte."""
    if path.is_dir():
        raise FileNotFoundError(f"manifest {path} is a folder, not a CSV file")
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        hint = " (it looks UTF-16: save it as UTF-8)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        _fail(path, line, f"not UTF-8 text (byte {raw[e.start]:#04x}){hint}; a manifest is a CSV text file")
    if "\x00" in text:  # binary data (csv itself accepts NUL since Python 3.11)
        _fail(path, text[: text.index("\x00")].count("\n") + 1, "holds a NUL byte; a manifest is a CSV text file")
    return text


def _read_header(path, records, required, nonempty, numeric, unique_ids, id_column):
    """``(header, {column: position})`` of the first record: names present, unique, and
    holding every column :func:`read_manifest` was asked for."""
    header_line, header = next(records, (None, None))
    if header is None:
        _fail(path, None,
              f"empty file, no header line (a manifest starts with a header such as {','.join(BASE_COLUMNS)})")
    blank = [i for i, name in enumerate(header, start=1) if not name.strip()]
    if blank:
        _fail(
            path, header_line,
            f"header column {blank[0]} has no name (a stray comma?); the header is {','.join(header)}",
        )
    seen = {}
    for i, name in enumerate(header, start=1):
        if name in seen:
            _fail(path, header_line,
                  f"column {name!r} appears twice in the header (columns {seen[name]} and {i})", name)
        seen[name] = i
    wanted = list(dict.fromkeys([*required, *nonempty, *numeric, *([id_column] if unique_ids else [])]))
    missing = [c for c in wanted if c not in seen]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        message = f"missing column{'s' if len(missing) > 1 else ''} {names}; the header is {','.join(header)}"
        stripped = {name.strip() for name in header}
        if len(header) == 1 and any(sep in header[0] for sep in ("\t", ";", "|", " ")):
            message += " (one column: is the file comma-separated?)"
        elif all(c in stripped for c in missing):
            message += " (remove the spaces around the column names)"
        raise ManifestError(path, [ManifestProblem(header_line, missing[0], None, message)])
    return header, seen


def _read_rows(path, records, header, seen, nonempty, numeric, unique_ids, id_column):
    """The rows of ``records`` as dicts; every problem of every row at once, in one
    :class:`ManifestError`.

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "test.csv"
    >>> _ = p.write_text(
    ...     "ID,duration,wav,spk_id,wrd\\n"
    ...     "spk024_0001,1.5,a.wav,spk024,HELLO\\n"
    ...     "spk024_0003,1.0,,spk024,YES\\n"
    ...     "spk024_0001,2.0,b.wav,spk024,NO\\n"
    ... )
    >>> try:
    ...     read_manifest(p)
    ... except ManifestError as e:
    ...     print(str(e).replace(str(p), "test.csv"))
    manifest test.csv: 2 problems
      line 3 (ID spk024_0003): empty 'wav'
      line 4 (ID spk024_0001): duplicate ID, first at line 2
    """
    problems, rows, first_line = [], [], {}
    id_index = seen.get(id_column)
    nonempty = list(dict.fromkeys([*([id_column] if unique_ids else []), *nonempty, *numeric]))
    for line, fields in records:
        row_id = fields[id_index - 1] if id_index and id_index <= len(fields) else None
        if len(fields) != len(header):
            hint = "a comma in an unquoted value?" if len(fields) > len(header) else "a missing comma?"
            problems.append(ManifestProblem(
                line, None, row_id,
                f"{len(fields)} field{'s' if len(fields) != 1 else ''} but the header has {len(header)} "
                f"columns ({hint})",
            ))
            continue
        row = dict(zip(header, fields))
        for column in nonempty:
            if not row[column].strip():
                problems.append(ManifestProblem(line, column, row_id, f"empty {column!r}"))
        for column in numeric:
            value = row[column]
            if value.strip() and not _is_finite_number(value):
                problems.append(ManifestProblem(line, column, row_id, f"{column!r} is {value!r}, not a number"))
        if unique_ids and row[id_column].strip():
            uid = row[id_column]
            if uid in first_line:
                problems.append(ManifestProblem(
                    line, id_column, uid, f"duplicate {id_column}, first at line {first_line[uid]}"))
            else:
                first_line[uid] = line
        rows.append(row)
    if problems:
        raise ManifestError(path, problems)
    return rows


def _csv_records(reader, fail):
    """Yield ``(first line number, fields)`` of each non-blank CSV record."""
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # e.g. a field over csv.field_size_limit()
            fail(reader.line_num or line, f"not readable as CSV ({e})")
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line
        yield line, fields


def _is_finite_number(value):
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def summarize_manifest(path, task_column="spk_id"):
    """Count tasks, utterances and hours in a manifest.

    Example
    -------
    >>> import tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> rows = [dict(ID=f"u{i}", duration=1800.0, wav="w", spk_id=f"s{i%2}", wrd="A") for i in range(4)]
    >>> _ = write_manifest(tmp / "x.csv", rows)
    >>> summarize_manifest(tmp / "x.csv")
    {'tasks': 2, 'utterances': 4, 'hours': 2.0}
    """
    rows = read_manifest(path, numeric=("duration",))
    tasks = {r.get(task_column, "") for r in rows}
    hours = sum(float(r["duration"]) for r in rows) / 3600.0
    return {"tasks": len(tasks), "utterances": len(rows), "hours": round(hours, 4)}


def format_summary_table(folder, splits=("train", "valid", "test"), task_column="spk_id"):
    """Return a plain-text table summarising the manifests of ``folder``.

    Splits whose CSV is absent are left out; a folder with none of them is an
    error (``FileNotFoundError`` naming the folder and the files looked for).
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"manifest folder {folder} does not exist or is not a folder")
    lines = [f"{'split':<8}{task_column + 's':>10}{'utterances':>12}{'hours':>9}"]
    for split in splits:
        csv_path = folder / f"{split}.csv"
        if not csv_path.is_file():
            continue
        s = summarize_manifest(csv_path, task_column)
        lines.append(f"{split:<8}{s['tasks']:>10}{s['utterances']:>12}{s['hours']:>9.3f}")
    if len(lines) == 1:
        raise FileNotFoundError(
            f"{folder} holds none of the manifests {', '.join(f'{s}.csv' for s in splits)}; give the folder "
            "that `sb-meta synth` or a recipe's prepare script wrote (or --splits naming its CSVs)"
        )
    return "\n".join(lines)
