"""Prepare the CMU AN4 ("census") corpus as SpeechBrain CSV manifests.

The corpus is read in the layout of CMU's ``an4_sphere.tar.gz``::

    <data_folder>/etc/an4_train.transcription   <s> YES </s> (an251-fash-b)
    <data_folder>/etc/an4_test.transcription    RUBOUT G M E F THREE NINE (an406-fcaw-b)
    <data_folder>/wav/an4_clstk/<speaker>/<utterance>.sph      (train)
    <data_folder>/wav/an4test_clstk/<speaker>/<utterance>.sph  (test)

The speaker is the middle field of the utterance id (``an251-fash-b`` ->
``fash``) and an utterance's audio is ``wav/<split folder>/<speaker>/<id>.sph``
(the paths ``etc/an4_*.fileids`` list). ``train.csv`` and ``dev.csv`` split
the training speakers (whole speakers are held out for ``dev``); ``test.csv``
is CMU's test set. Columns: ``ID,duration,wav,spk_id,wrd``.

Every problem in the corpus (see :mod:`sb_meta.data.validate`) is collected
before anything is written; then either a ``DataPreparationError`` lists them
all, or (``skip_bad=True``) the bad utterances are left out with one warning.
Run again, the preparation is skipped only when the options and the corpus
(every file's size and modification time) are unchanged.

Usage::

    python recipes/AN4/an4_prepare.py --data_folder /data/an4 --save_folder results/an4
"""

import argparse
import logging
import os
import pathlib
import random
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.request

from sb_meta.utils import atomic_open
from sb_meta.data.manifest import format_summary_table, read_manifest, write_manifest
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

logger = logging.getLogger("sb_meta.recipes.an4_prepare")

AN4_URL = "http://www.speech.cs.cmu.edu/databases/an4/an4_sphere.tar.gz"
ARCHIVE_NAME = "an4_sphere.tar.gz"
# split -> (transcription file, audio folder), relative to the corpus root
AN4_SPLITS = {
    "train": ("etc/an4_train.transcription", "wav/an4_clstk"),
    "test": ("etc/an4_test.transcription", "wav/an4test_clstk"),
}
MANIFESTS = ("train", "dev", "test")
PREP_VERSION = 1

_LINE_RE = re.compile(r"^(?P<text>.*?)\s*\((?P<id>[^()\s]+)\)$")
_TAG_RE = re.compile(r"^<[^<>]*>$")  # <s>, </s>, <sil>


def prepare_an4(
    data_folder,
    save_folder,
    dev_speakers=6,
    seed=1234,
    heldout_speakers=0,
    skip_bad=False,
    url=None,
    skip_prep_if_exists=True,
):
    """Write ``train.csv``, ``dev.csv`` and ``test.csv`` for AN4 in ``save_folder``.

    Arguments
    ---------
    data_folder : str or pathlib.Path
        The AN4 root (holding ``etc/`` and ``wav/``), or a folder holding ``an4/``.
    save_folder : str or pathlib.Path
        Where the manifests and ``opts.json`` are written.
    dev_speakers : int
        How many whole training speakers are held out as ``dev``.
    seed : int
        Seed of the deterministic choice of the dev (and held-out) speakers.
    heldout_speakers : int
        How many further whole training speakers are left out of ``train``
        and written to ``heldout.csv``: a second pool of unseen speakers for
        adaptation studies (AN4 has only 10 test speakers). Chosen after the
        dev speakers with the same seed, so the dev split does not change.
    skip_bad : bool
        If True, leave bad utterances out with one warning instead of raising.
    url : str, optional
        If the corpus is not in ``data_folder``, download this tarball
        (e.g. ``AN4_URL``) and unpack it there first.
    skip_prep_if_exists : bool
        If True and ``save_folder`` holds the three manifests of a preparation
        with the same options and the same corpus (``opts.json`` records both:
        the corpus as the size and modification time of every file read), do
        nothing. When the corpus changed, the log says which files were
        added, removed or modified, and the corpus is prepared again.

    Returns
    -------
    dict
        ``manifests`` (split -> path), ``utterances`` and ``speakers`` (split
        -> count), ``dev_speakers`` (sorted ids), ``skipped`` (problem kind ->
        list of what was left out; empty when nothing was) and ``reused``
        (True when an earlier preparation was kept).

    Raises
    ------
    FileNotFoundError
        If the corpus is not in ``data_folder`` and no ``url`` is given.
    DataPreparationError
        If the corpus has problems and ``skip_bad`` is False; it lists them
        all and nothing is written.
    ValueError
        If ``dev_speakers`` + ``heldout_speakers`` leaves no training speaker.

    Example
    -------
    >>> import os, tempfile
    >>> out = prepare_an4(os.environ["SBMETA_AN4_ROOT"], tempfile.mkdtemp())  # doctest: +SKIP
    >>> out["utterances"]  # doctest: +SKIP
    {'train': 874, 'dev': 74, 'test': 130}
    """
    save_folder = pathlib.Path(save_folder)
    root = _find_root(data_folder)
    if root is None:
        if url is None:
            missing = _missing_parts(pathlib.Path(data_folder))
            raise FileNotFoundError(
                f"AN4 corpus not found in {data_folder}: missing {', '.join(missing)}. "
                f"Download {AN4_URL} and unpack it there, or pass url=... (--url) "
                "to have it downloaded."
            )
        download_an4(data_folder, url)
        root = _find_root(data_folder)
        if root is None:
            raise FileNotFoundError(
                f"{url} was unpacked into {data_folder} but the AN4 corpus is still "
                f"incomplete there: missing {', '.join(_missing_parts(pathlib.Path(data_folder)))}"
            )
    root = root.resolve()
    options = {
        "corpus": "an4",
        "version": PREP_VERSION,
        "data_folder": str(root),
        "dev_speakers": int(dev_speakers),
        "seed": int(seed),
        "skip_bad": bool(skip_bad),
    }
    splits = MANIFESTS
    if heldout_speakers:  # recorded only when used: earlier preparations stay up to date
        options["heldout_speakers"] = int(heldout_speakers)
        splits = MANIFESTS + ("heldout",)
    manifests = {s: save_folder / f"{s}.csv" for s in splits}
    # Taken before the corpus is read: a change made while preparing is seen next time.
    corpus = corpus_fingerprint(root, corpus_files(root))
    if skip_prep_if_exists:
        stale = prep_staleness(save_folder, options, [p.name for p in manifests.values()], corpus)
        if stale is None:
            logger.info("AN4 manifests in %s are up to date; skipping preparation", save_folder)
            return _summary_from_files(manifests, load_prep_record(save_folder))
        logger.info("Preparing AN4 manifests in %s: %s", save_folder, stale)

    # 1. Read and check everything; nothing is written before this is over.
    report = ProblemReport()
    rows = {split: _read_split(root, split, report) for split in AN4_SPLITS}
    title = f"AN4 preparation of {root}"
    skipped = raise_or_warn(report, skip_bad, title, logger)
    empty = ProblemReport()
    for split, split_rows in rows.items():
        if not split_rows:
            empty.add(EMPTY_SPLIT, f"{split}: no usable utterance in {root / AN4_SPLITS[split][0]}")
    if empty:
        raise DataPreparationError(empty, title)
    train_speakers = sorted({r["spk_id"] for r in rows["train"]})
    if not 0 <= dev_speakers < len(train_speakers):
        raise ValueError(
            f"dev_speakers={dev_speakers} must be between 0 and {len(train_speakers) - 1}: "
            f"the training set has {len(train_speakers)} speakers"
        )
    if not 0 <= heldout_speakers < len(train_speakers) - dev_speakers:
        raise ValueError(
            f"heldout_speakers={heldout_speakers} must be between 0 and "
            f"{len(train_speakers) - dev_speakers - 1}: the training set has {len(train_speakers)} "
            f"speakers and {dev_speakers} are dev speakers"
        )
    rng = random.Random(seed)
    dev_set = set(rng.sample(train_speakers, dev_speakers))
    heldout_set = set()
    if heldout_speakers:
        heldout_set = set(rng.sample([s for s in train_speakers if s not in dev_set], heldout_speakers))
    split_rows = {
        "train": [r for r in rows["train"] if r["spk_id"] not in dev_set | heldout_set],
        "dev": [r for r in rows["train"] if r["spk_id"] in dev_set],
        "test": rows["test"],
    }
    if heldout_speakers:
        split_rows["heldout"] = [r for r in rows["train"] if r["spk_id"] in heldout_set]

    # 2. Write: forget the old options first, so an interrupted rewrite is never re-used.
    forget_prep_options(save_folder)
    stale_heldout = save_folder / "heldout.csv"
    if not heldout_speakers and stale_heldout.is_file():
        stale_heldout.unlink()  # its speakers are training speakers now
    for split in splits:
        write_manifest(manifests[split], split_rows[split])
    record_prep_options(save_folder, options, skipped, corpus=corpus)
    result = {
        "save_folder": str(save_folder),
        "manifests": {s: str(p) for s, p in manifests.items()},
        "utterances": {s: len(r) for s, r in split_rows.items()},
        "speakers": {s: len({x["spk_id"] for x in r}) for s, r in split_rows.items()},
        "dev_speakers": sorted(dev_set),
        "skipped": skipped,
        "reused": False,
    }
    logger.info("AN4 manifests written to %s: %s", save_folder, result["utterances"])
    return result


def corpus_files(root):
    """Return every file an AN4 preparation of ``root`` reads or looks at.

    These are the two transcription files and every file under the two audio
    folders (``.sph`` files are read, others are noticed and ignored); their
    sizes and modification times make the corpus fingerprint recorded in
    ``opts.json``.

    Example
    -------
    >>> import os
    >>> files = corpus_files(os.environ["SBMETA_AN4_ROOT"])  # doctest: +SKIP
    >>> len(files)  # doctest: +SKIP
    1093
    """
    root = pathlib.Path(root)
    files = [root / trans_rel for trans_rel, _ in AN4_SPLITS.values()]
    for _, audio_rel in AN4_SPLITS.values():
        audio_dir = root / audio_rel
        if audio_dir.is_dir():
            files.extend(p for p in sorted(audio_dir.rglob("*")) if p.is_file())
    return files


def _read_split(root, split, report):
    """Read one AN4 split; return its rows and record its problems in ``report``."""
    trans_rel, audio_rel = AN4_SPLITS[split]
    trans_path = root / trans_rel
    audio_dir = root / audio_rel
    entries = {}  # id -> (line number, text)
    for number, line in read_transcript_lines(trans_path, report):
        where = f"{trans_path}:{number}"
        m = _LINE_RE.match(line)
        if m is None:
            report.add(MALFORMED_LINE, f"{where}: no '(utterance-id)' at the end: {line[:80]!r}")
            continue
        utt = m.group("id")
        if len(utt.split("-")) != 3 or not all(utt.split("-")):
            report.add(
                MALFORMED_LINE,
                f"{where}: utterance id {utt!r} is not <utterance>-<speaker>-<session>",
            )
            continue
        if utt in entries:
            report.add(DUPLICATE_ID, f"{utt} ({where}; first at line {entries[utt][0]})")
            entries[utt] = (entries[utt][0], None)  # keep neither copy
            continue
        words = [w for w in m.group("text").split() if not _TAG_RE.match(w)]
        entries[utt] = (number, " ".join(words).upper())

    expected = {}
    rows = []
    for utt, (number, text) in entries.items():
        where = f"{trans_path}:{number}"
        speaker = utt.split("-")[1]
        wav = audio_dir / speaker / f"{utt}.sph"
        expected[wav] = utt
        if text is None:
            continue  # duplicate, already reported
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
        rows.append(dict(ID=utt, duration=duration, wav=str(wav), spk_id=speaker, wrd=text))

    if audio_dir.is_dir():
        ignored = []
        for path in sorted(audio_dir.rglob("*")):
            if not path.is_file():
                continue
            if path.suffix != ".sph":
                ignored.append(path)
            elif path not in expected:
                report.add(AUDIO_WITHOUT_TRANSCRIPT, f"{path} (not in {trans_path})")
        if ignored:
            logger.info(
                "AN4 %s: ignored %d non-.sph file(s) under %s, e.g. %s",
                split,
                len(ignored),
                audio_dir,
                ignored[0].relative_to(audio_dir),
            )
    return rows


def _missing_parts(folder):
    needed = [AN4_SPLITS[s][0] for s in AN4_SPLITS] + [AN4_SPLITS[s][1] for s in AN4_SPLITS]
    return [p for p in needed if not (folder / p).exists()]


def _find_root(data_folder):
    """Return the AN4 root in or directly under ``data_folder`` (``an4/``), or None."""
    folder = pathlib.Path(data_folder)
    for candidate in (folder, folder / "an4"):
        if not _missing_parts(candidate):
            return candidate
    return None


def _summary_from_files(manifests, record):
    rows = {s: read_manifest(p) for s, p in manifests.items()}
    return {
        "save_folder": str(pathlib.Path(manifests["train"]).parent),
        "manifests": {s: str(p) for s, p in manifests.items()},
        "utterances": {s: len(r) for s, r in rows.items()},
        "speakers": {s: len({x["spk_id"] for x in r}) for s, r in rows.items()},
        "dev_speakers": sorted({x["spk_id"] for x in rows["dev"]}),
        "skipped": (record or {}).get("skipped", {}),
        "reused": True,
    }


def download_an4(data_folder, url=AN4_URL):
    """Download the AN4 tarball into ``data_folder`` and unpack it there.

    The archive is written under a temporary name and renamed once complete
    (a complete ``an4_sphere.tar.gz`` already there is not fetched again); it
    is unpacked into a temporary folder whose ``an4/`` content is then moved
    into ``data_folder``.

    Arguments
    ---------
    data_folder : str or pathlib.Path
        Destination; created if needed.
    url : str
        Where the ``an4_sphere.tar.gz`` tarball is.

    Returns
    -------
    pathlib.Path
        ``data_folder``.

    Raises
    ------
    FileExistsError
        If a part of the corpus to unpack already exists in ``data_folder``.

    Example
    -------
    >>> AN4_URL
    'http://www.speech.cs.cmu.edu/databases/an4/an4_sphere.tar.gz'
    >>> download_an4("/tmp/an4", AN4_URL)  # doctest: +SKIP
    PosixPath('/tmp/an4')
    """
    data_folder = pathlib.Path(data_folder)
    data_folder.mkdir(parents=True, exist_ok=True)
    archive = data_folder / ARCHIVE_NAME
    if not archive.is_file():
        logger.info("Downloading %s to %s", url, archive)
        with atomic_open(archive, "wb", suffix=".part") as out, urllib.request.urlopen(url) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
    logger.info("Unpacking %s", archive)
    unpack_dir = pathlib.Path(tempfile.mkdtemp(dir=data_folder, prefix=".an4_unpack."))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(unpack_dir, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(unpack_dir)
        top = _find_root(unpack_dir)
        if top is None:
            raise FileNotFoundError(
                f"{archive} (from {url}) does not hold the AN4 corpus: "
                f"missing {', '.join(_missing_parts(unpack_dir))}"
            )
        clashes = [p.name for p in top.iterdir() if (data_folder / p.name).exists()]
        if clashes:
            raise FileExistsError(
                f"cannot unpack AN4 into {data_folder}: {', '.join(sorted(clashes))} already "
                "exist there (left over from an earlier attempt?); remove them and retry"
            )
        for part in sorted(top.iterdir()):
            os.replace(part, data_folder / part.name)  # safe-path: an entry of the unpacked archive
    finally:
        shutil.rmtree(unpack_dir, ignore_errors=True)
    return data_folder


def main(argv=None):
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description="Prepare CMU AN4 as SpeechBrain CSV manifests.")
    parser.add_argument("--data_folder", required=True, help="AN4 root (holding etc/ and wav/)")
    parser.add_argument("--save_folder", required=True, help="where train/dev/test.csv go")
    parser.add_argument("--dev_speakers", type=int, default=6, help="training speakers held out as dev")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the dev speaker choice")
    parser.add_argument("--heldout_speakers", type=int, default=0,
                        help="further training speakers left out as heldout.csv (a second pool of unseen speakers)")
    parser.add_argument("--skip_bad", action="store_true", help="leave bad utterances out, with a warning")
    parser.add_argument("--url", default=None, help=f"download the corpus from here if absent (e.g. {AN4_URL})")
    parser.add_argument("--force", action="store_true", help="prepare again even if up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        result = prepare_an4(
            args.data_folder,
            args.save_folder,
            dev_speakers=args.dev_speakers,
            seed=args.seed,
            heldout_speakers=args.heldout_speakers,
            skip_bad=args.skip_bad,
            url=args.url,
            skip_prep_if_exists=not args.force,
        )
    except (DataPreparationError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_summary_table(args.save_folder, splits=tuple(result["manifests"])))
    print(f"dev speakers: {' '.join(result['dev_speakers'])}")
    if result["reused"]:
        print("(manifests were up to date; use --force to prepare again)")
    for kind, items in result["skipped"].items():
        print(f"skipped {len(items)} x {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
