"""Prepare LibriSpeech splits as SpeechBrain CSV manifests, one task per speaker.

The corpus is read in its native layout::

    <root>/SPEAKERS.TXT                                   (optional: gender column)
    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac

where ``<root>`` is the ``LibriSpeech`` folder and ``<split>`` e.g.
``test-other`` or ``train-clean-100``. Each transcript line is
``<speaker>-<chapter>-<utt> TRANSCRIPT`` and its audio is the ``.flac`` of that
name beside the transcript. One ``<split>.csv`` is written per split with
columns ``ID,duration,wav,spk_id,wrd,chapter`` (+ ``gender`` when
``SPEAKERS.TXT`` exists); ``spk_id`` is the speaker number.

All splits are read and checked (see :mod:`sb_meta.data.validate`) before any
manifest is written: either a ``DataPreparationError`` lists every problem,
or (``skip_bad=True``) the bad utterances are left out with one warning.
Run again, the preparation is skipped only when the options and the corpus
(every file's size and modification time) are unchanged.

Usage::

    python recipes/LibriSpeech/librispeech_prepare.py --data_folder /data/LibriSpeech \\
        --save_folder results/libri --splits test-other,dev-clean
"""

import argparse
import logging
import pathlib
import re
import sys

from sb_meta.data.manifest import format_summary_table, read_manifest, write_manifest
from sb_meta.utils import safe_name
from sb_meta.data.validate import (
    AUDIO_WITHOUT_TRANSCRIPT,
    DUPLICATE_ID,
    EMPTY_SPLIT,
    EMPTY_TRANSCRIPT,
    MALFORMED_LINE,
    TRANSCRIPT_WITHOUT_AUDIO,
    UNREADABLE_AUDIO,
    DataPreparationError,
    ProblemReport,
    check_audio,
    corpus_fingerprint,
    forget_prep_options,
    load_prep_record,
    prep_staleness,
    raise_or_warn,
    read_transcript_lines,
    record_prep_options,
)

logger = logging.getLogger("sb_meta.recipes.librispeech_prepare")

PREP_VERSION = 1
SPEAKERS_FILE = "SPEAKERS.TXT"
_ID_RE = re.compile(r"^\d+-\d+-\d+$")


def prepare_librispeech(
    data_folder,
    save_folder,
    splits=("test-other",),
    skip_bad=False,
    skip_prep_if_exists=True,
):
    """Write ``<split>.csv`` in ``save_folder`` for each LibriSpeech split.

    Arguments
    ---------
    data_folder : str or pathlib.Path
        The ``LibriSpeech`` folder holding the split folders (a folder holding
        ``LibriSpeech/`` is accepted too).
    save_folder : str or pathlib.Path
        Where the manifests and ``opts.json`` are written.
    splits : sequence of str
        Split folder names, e.g. ``("test-other", "dev-clean")``.
    skip_bad : bool
        If True, leave bad utterances out with one warning instead of raising.
    skip_prep_if_exists : bool
        If True and ``save_folder`` holds the manifests of a preparation with
        the same options and the same corpus (``opts.json`` records both: the
        corpus as the size and modification time of every file read), do
        nothing. When the corpus changed, the log says which files were
        added, removed or modified, and the splits are prepared again.

    Returns
    -------
    dict
        ``manifests`` (split -> path), ``utterances`` and ``speakers`` (split
        -> count), ``skipped`` (problem kind -> list of what was left out;
        empty when nothing was) and ``reused`` (True when an earlier
        preparation was kept).

    Raises
    ------
    FileNotFoundError
        If a split folder does not exist, naming it and the splits found.
    DataPreparationError
        If the corpus has problems and ``skip_bad`` is False; it lists them
        all and nothing is written.

    Example
    -------
    >>> import os, tempfile
    >>> root = os.environ["SBMETA_LIBRISPEECH_ROOT"]  # doctest: +SKIP
    >>> prepare_librispeech(root, tempfile.mkdtemp())["utterances"]  # doctest: +SKIP
    {'test-other': 100}
    """
    if isinstance(splits, str):
        splits = [s for s in splits.split(",") if s]
    splits = list(dict.fromkeys(splits))
    if not splits:
        raise ValueError("no split given")
    save_folder = pathlib.Path(save_folder)
    root = _find_root(pathlib.Path(data_folder), splits).resolve()
    speakers_file = root / SPEAKERS_FILE
    options = {
        "corpus": "librispeech",
        "version": PREP_VERSION,
        "data_folder": str(root),
        "splits": splits,
        "skip_bad": bool(skip_bad),
    }
    manifests = {s: save_folder / safe_name(s, "split", suffix=".csv") for s in splits}
    # Taken before the corpus is read: a change made while preparing is seen next time.
    corpus = corpus_fingerprint(root, corpus_files(root, splits))
    if skip_prep_if_exists:
        stale = prep_staleness(save_folder, options, [p.name for p in manifests.values()], corpus)
        if stale is None:
            logger.info("LibriSpeech manifests in %s are up to date; skipping preparation", save_folder)
            return _summary_from_files(save_folder, manifests, load_prep_record(save_folder))
        logger.info("Preparing LibriSpeech manifests in %s: %s", save_folder, stale)

    # 1. Read and check all splits; nothing is written before this is over.
    genders = _read_speakers(speakers_file) if speakers_file.is_file() else None
    report = ProblemReport()
    rows = {split: _read_split(root / split, report) for split in splits}
    title = f"LibriSpeech preparation of {', '.join(splits)} in {root}"
    skipped = raise_or_warn(report, skip_bad, title, logger)
    empty = ProblemReport()
    for split in splits:
        if not rows[split]:
            empty.add(EMPTY_SPLIT, f"{split}: no usable utterance under {root / split}")
    if empty:
        raise DataPreparationError(empty, title)
    extra = ["chapter"]
    if genders is not None:
        extra.append("gender")
        unknown = sorted({r["spk_id"] for rs in rows.values() for r in rs} - set(genders), key=int)
        if unknown:
            logger.warning(
                "%s lists no gender for speaker(s) %s; their gender column is left empty",
                speakers_file,
                " ".join(unknown),
            )
        for split_rows in rows.values():
            for r in split_rows:
                r["gender"] = genders.get(r["spk_id"], "")

    # 2. Write: forget the old options first, so an interrupted rewrite is never re-used.
    forget_prep_options(save_folder)
    for split in splits:
        write_manifest(manifests[split], rows[split], extra_columns=extra)
    record_prep_options(save_folder, options, skipped, corpus=corpus)
    result = {
        "save_folder": str(save_folder),
        "manifests": {s: str(p) for s, p in manifests.items()},
        "utterances": {s: len(r) for s, r in rows.items()},
        "speakers": {s: len({x["spk_id"] for x in r}) for s, r in rows.items()},
        "skipped": skipped,
        "reused": False,
    }
    logger.info("LibriSpeech manifests written to %s: %s", save_folder, result["utterances"])
    return result


def _find_root(folder, splits):
    """Return the folder holding the splits: ``folder`` or ``folder/LibriSpeech``."""
    for candidate in (folder, folder / "LibriSpeech"):
        if all((candidate / s).is_dir() for s in splits):
            return candidate
    base = folder / "LibriSpeech" if (folder / "LibriSpeech").is_dir() else folder
    missing = [s for s in splits if not (base / s).is_dir()]
    found = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    raise FileNotFoundError(
        f"LibriSpeech split folder(s) {', '.join(missing)} not found in {base} "
        f"(split folders there: {', '.join(found) or 'none'}). Download them from "
        "https://www.openslr.org/12 and unpack them there."
    )


def corpus_files(root, splits):
    """Return every file a preparation of ``splits`` under ``root`` reads.

    These are ``SPEAKERS.TXT`` (when present) and each split's
    ``*.trans.txt`` and ``*.flac`` files; their sizes and modification times
    make the corpus fingerprint recorded in ``opts.json``. Other splits and
    other files are not part of it.

    Example
    -------
    >>> import os
    >>> files = corpus_files(os.environ["SBMETA_LIBRISPEECH_ROOT"], ["test-other"])  # doctest: +SKIP
    >>> sorted({f.suffix for f in files})  # doctest: +SKIP
    ['.TXT', '.flac', '.txt']
    """
    root = pathlib.Path(root)
    files = [root / SPEAKERS_FILE] if (root / SPEAKERS_FILE).is_file() else []
    for split in splits:
        for path in sorted((root / split).rglob("*")):
            if path.name.endswith((".trans.txt", ".flac")) and path.is_file():
                files.append(path)
    return files


def _read_speakers(path):
    """Return ``{speaker: gender}`` from LibriSpeech's ``SPEAKERS.TXT``."""
    genders = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|", 4)]  # names may hold '|'
        if len(fields) < 2 or not fields[0].isdigit() or fields[1] not in ("F", "M"):
            logger.warning("%s:%d: cannot read speaker line %r; ignored", path, number, line[:80])
            continue
        genders[fields[0]] = fields[1]
    return genders


def _read_split(split_dir, report):
    """Read one split; return its rows and record its problems in ``report``."""
    rows = []
    seen = {}  # id -> where first seen
    expected = set()
    for trans in sorted(split_dir.rglob("*.trans.txt")):
        prefix = trans.name[: -len(".trans.txt")]
        for number, line in read_transcript_lines(trans, report):
            where = f"{trans}:{number}"
            utt, _, text = line.partition(" ")
            if not _ID_RE.match(utt):
                report.add(
                    MALFORMED_LINE,
                    f"{where}: does not start with a <speaker>-<chapter>-<utt> id: {line[:80]!r}",
                )
                continue
            if utt.rsplit("-", 1)[0] != prefix:
                report.add(MALFORMED_LINE, f"{where}: id {utt} does not belong in {trans.name}")
                continue
            wav = trans.parent / f"{utt}.flac"
            expected.add(wav)
            if utt in seen:
                report.add(DUPLICATE_ID, f"{utt} ({where}; first at {seen[utt]})")
                rows = [r for r in rows if r["ID"] != utt]  # keep neither copy
                continue
            seen[utt] = where
            text = " ".join(text.split()).upper()
            if not text:
                report.add(EMPTY_TRANSCRIPT, f"{utt} ({where})")
                continue
            if not wav.is_file():
                report.add(TRANSCRIPT_WITHOUT_AUDIO, f"{utt} ({where}): no file {wav}")
                continue
            duration, reason = check_audio(wav)
            if duration is None:
                report.add(UNREADABLE_AUDIO, f"{wav} ({utt}): {reason}")
                continue
            speaker, chapter, _ = utt.split("-")
            rows.append(
                dict(ID=utt, duration=duration, wav=str(wav), spk_id=speaker, wrd=text, chapter=chapter)
            )
    for path in sorted(split_dir.rglob("*.flac")):
        if path not in expected:
            report.add(AUDIO_WITHOUT_TRANSCRIPT, f"{path} (no transcript line for {path.stem})")
    return rows


def _summary_from_files(save_folder, manifests, record):
    rows = {s: read_manifest(p) for s, p in manifests.items()}
    return {
        "save_folder": str(save_folder),
        "manifests": {s: str(p) for s, p in manifests.items()},
        "utterances": {s: len(r) for s, r in rows.items()},
        "speakers": {s: len({x["spk_id"] for x in r}) for s, r in rows.items()},
        "skipped": (record or {}).get("skipped", {}),
        "reused": True,
    }


def main(argv=None):
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description="Prepare LibriSpeech splits as SpeechBrain CSV manifests.")
    parser.add_argument("--data_folder", required=True, help="the LibriSpeech folder (holding the splits)")
    parser.add_argument("--save_folder", required=True, help="where <split>.csv go")
    parser.add_argument("--splits", default="test-other", help="comma-separated, e.g. test-other,dev-clean")
    parser.add_argument("--skip_bad", action="store_true", help="leave bad utterances out, with a warning")
    parser.add_argument("--force", action="store_true", help="prepare again even if up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        result = prepare_librispeech(
            args.data_folder,
            args.save_folder,
            splits=splits,
            skip_bad=args.skip_bad,
            skip_prep_if_exists=not args.force,
        )
    except (DataPreparationError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_summary_table(args.save_folder, splits=list(result["manifests"])))
    if result["reused"]:
        print("(manifests were up to date; use --force to prepare again)")
    for kind, items in result["skipped"].items():
        print(f"skipped {len(items)} x {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
