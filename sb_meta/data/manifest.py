"""SpeechBrain CSV manifests: writing (atomically), reading and summarising.

A manifest is SpeechBrain's CSV layout ``ID,duration,wav,spk_id,wrd`` plus any
task columns (``lang``, ``voice``, ``accent``...). Every writer in sb-meta goes
through :func:`write_manifest`, which writes to a temporary file and renames it,
so an interrupted preparation never leaves a half-written manifest behind.
"""

import csv
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


def read_manifest(path):
    """Read a manifest into a list of dicts (all values are strings).

    Raises
    ------
    FileNotFoundError
        Naming the missing manifest.
    ValueError
        If a base column is missing from the header, naming the file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("ID", "duration", "wav") if c not in header]
        if missing:
            raise ValueError(f"manifest {path} lacks columns {missing}; header is {header}")
        return list(reader)


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
    rows = read_manifest(path)
    tasks = {r.get(task_column, "") for r in rows}
    hours = sum(float(r["duration"]) for r in rows) / 3600.0
    return {"tasks": len(tasks), "utterances": len(rows), "hours": round(hours, 4)}


def format_summary_table(folder, splits=("train", "valid", "test"), task_column="spk_id"):
    """Return a plain-text table summarising the manifests of ``folder``.

    Splits whose CSV is absent are left out.
    """
    folder = pathlib.Path(folder)
    lines = [f"{'split':<8}{task_column + 's':>10}{'utterances':>12}{'hours':>9}"]
    for split in splits:
        csv_path = folder / f"{split}.csv"
        if not csv_path.is_file():
            continue
        s = summarize_manifest(csv_path, task_column)
        lines.append(f"{split:<8}{s['tasks']:>10}{s['utterances']:>12}{s['hours']:>9.3f}")
    return "\n".join(lines)
