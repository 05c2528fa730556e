"""Prepare speechocean762 (OpenSLR 101) as SpeechBrain CSV manifests.

speechocean762 is English read by 250 native Mandarin speakers, 20 utterances
each: children (6-15 years) and adults (19-43). The corpus is read in its
published layout (the OpenSLR download and the GitHub repository alike)::

    <data_folder>/train/{text,wav.scp,utt2spk,spk2age,spk2gender}
    <data_folder>/test/{text,wav.scp,utt2spk,spk2age,spk2gender}
    <data_folder>/WAVE/SPEAKERxxxx/<utterance>.WAV

``wav.scp`` paths are relative to ``data_folder``. ``train.csv`` and
``dev.csv`` split the published training speakers (whole speakers are held
out as ``dev``, children and adults in proportion, chosen by ``seed``);
``test.csv`` is the published test set. Columns:
``ID,duration,wav,spk_id,wrd,age,gender,age_group`` where ``age_group`` is
``child`` below 18 years and ``adult`` otherwise.

Every problem (a missing or unreadable WAV, an utterance without text, a
speaker in both published splits, ...) is collected before anything is
written; then either a ``DataPreparationError`` lists them all, or
(``skip_bad=True``) the bad utterances are left out with one warning. Audio
files that no ``wav.scp`` lists are ignored: the published ``WAVE/`` folder
holds 245 of them. Run again, the preparation is skipped only when the options
and the corpus (every file's size and modification time) are unchanged.

Usage::

    python recipes/SpeechOcean762/speechocean762_prepare.py \
        --data_folder /data/speechocean762 --save_folder results/so762
"""

import argparse
import logging
import pathlib
import random
import sys

from sb_meta.data.manifest import format_summary_table, read_manifest, write_manifest
from sb_meta.data.validate import (
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

logger = logging.getLogger("sb_meta.recipes.speechocean762_prepare")

SPLITS = ("train", "test")
SPLIT_FILES = ("text", "wav.scp", "utt2spk", "spk2age", "spk2gender")
MANIFESTS = ("train", "dev", "test")
EXTRA_COLUMNS = ("age", "gender", "age_group")
CHILD_BELOW = 18  # children are 6-15 years old, adults 19-43
PREP_VERSION = 1
SPEAKER_IN_BOTH = "speaker in both splits"
UTTERANCE_WITHOUT_SPEAKER = "utterance without speaker"
SPEAKER_WITHOUT_AGE = "speaker without age or gender"


def age_group(age):
    """``"child"`` below ``CHILD_BELOW`` years, ``"adult"`` otherwise.

    Example
    -------
    >>> age_group(6), age_group(15), age_group(19)
    ('child', 'child', 'adult')
    """
    return "child" if int(age) < CHILD_BELOW else "adult"


def prepare_speechocean762(
    data_folder,
    save_folder,
    dev_speakers=16,
    seed=1234,
    skip_bad=False,
    skip_prep_if_exists=True,
):
    """Write ``train.csv``, ``dev.csv`` and ``test.csv`` for speechocean762 in ``save_folder``.

    Arguments
    ---------
    data_folder : str or pathlib.Path
        The corpus root (holding ``train/``, ``test/`` and ``WAVE/``).
    save_folder : str or pathlib.Path
        Where the manifests and ``opts.json`` are written.
    dev_speakers : int
        How many whole training speakers are held out as ``dev``; children
        and adults are held out in their training-set proportion.
    seed : int
        Seed of the deterministic choice of the dev speakers.
    skip_bad : bool
        If True, leave bad utterances out with one warning instead of raising.
    skip_prep_if_exists : bool
        If True and ``save_folder`` holds the manifests of a preparation with
        the same options and the same corpus, do nothing.

    Returns
    -------
    dict
        ``manifests`` (split -> path), ``utterances`` and ``speakers`` (split
        -> count), ``dev_speakers`` (sorted ids), ``skipped`` (problem kind ->
        items left out) and ``reused`` (True when an earlier preparation was kept).

    Raises
    ------
    FileNotFoundError
        If ``data_folder`` lacks one of the published files.
    DataPreparationError
        If the corpus has problems and ``skip_bad`` is False; it lists them
        all and nothing is written.
    ValueError
        If ``dev_speakers`` leaves no training speaker.

    Example
    -------
    >>> import os, tempfile
    >>> root = os.environ["SBMETA_SPEECHOCEAN762_ROOT"]  # doctest: +SKIP
    >>> out = prepare_speechocean762(root, tempfile.mkdtemp(), dev_speakers=1)  # doctest: +SKIP
    >>> out["speakers"]  # the 8-speaker mini copy  # doctest: +SKIP
    {'train': 3, 'dev': 1, 'test': 4}
    """
    root = pathlib.Path(data_folder)
    missing = [f"{s}/{f}" for s in SPLITS for f in SPLIT_FILES if not (root / s / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"speechocean762 not found in {data_folder}: missing {', '.join(missing)}. "
            "Download it from https://www.openslr.org/101/ and unpack it there."
        )
    root = root.resolve()
    save_folder = pathlib.Path(save_folder)
    options = {
        "corpus": "speechocean762",
        "version": PREP_VERSION,
        "data_folder": str(root),
        "dev_speakers": int(dev_speakers),
        "seed": int(seed),
        "skip_bad": bool(skip_bad),
    }
    manifests = {s: save_folder / f"{s}.csv" for s in MANIFESTS}
    corpus = corpus_fingerprint(root, corpus_files(root))
    if skip_prep_if_exists:
        stale = prep_staleness(save_folder, options, [p.name for p in manifests.values()], corpus)
        if stale is None:
            logger.info("speechocean762 manifests in %s are up to date; skipping preparation", save_folder)
            return _summary_from_files(manifests, load_prep_record(save_folder))
        logger.info("Preparing speechocean762 manifests in %s: %s", save_folder, stale)

    # 1. Read and check everything; nothing is written before this is over.
    report = ProblemReport()
    rows = {split: _read_split(root, split, report) for split in SPLITS}
    speakers = {split: {r["spk_id"] for r in rows[split]} for split in SPLITS}
    for spk in sorted(speakers["train"] & speakers["test"]):
        report.add(SPEAKER_IN_BOTH, f"speaker {spk} is in {root / 'train/utt2spk'} and {root / 'test/utt2spk'}")
    if speakers["train"] & speakers["test"]:  # neither copy is usable: the splits must stay disjoint
        both = speakers["train"] & speakers["test"]
        rows = {split: [r for r in rows[split] if r["spk_id"] not in both] for split in SPLITS}
    title = f"speechocean762 preparation of {root}"
    skipped = raise_or_warn(report, skip_bad, title, logger)
    empty = ProblemReport()
    for split in SPLITS:
        if not rows[split]:
            empty.add(EMPTY_SPLIT, f"{split}: no usable utterance in {root / split / 'text'}")
    if empty:
        raise DataPreparationError(empty, title)
    dev_set = choose_dev_speakers(rows["train"], dev_speakers, seed)
    split_rows = {
        "train": [r for r in rows["train"] if r["spk_id"] not in dev_set],
        "dev": [r for r in rows["train"] if r["spk_id"] in dev_set],
        "test": rows["test"],
    }

    # 2. Write: forget the old options first, so an interrupted rewrite is never re-used.
    forget_prep_options(save_folder)
    for split in MANIFESTS:
        write_manifest(manifests[split], split_rows[split], extra_columns=EXTRA_COLUMNS)
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
    logger.info("speechocean762 manifests written to %s: %s", save_folder, result["utterances"])
    return result


def choose_dev_speakers(rows, dev_speakers, seed):
    """Whole training speakers for ``dev``: children and adults in proportion.

    Each age group gives ``round(dev_speakers x its share of the speakers)``
    speakers (the rounding remainder goes to the larger group), drawn with
    ``random.Random(seed)`` from the sorted speaker ids.

    Example
    -------
    >>> rows = [dict(spk_id=f"{i:04d}", age_group="child" if i < 4 else "adult") for i in range(10)]
    >>> sorted(choose_dev_speakers(rows, 5, seed=1))
    ['0000', '0002', '0004', '0005', '0008']
    """
    groups = {}
    for r in rows:
        groups.setdefault(r["age_group"], set()).add(r["spk_id"])
    total = sum(len(s) for s in groups.values())
    if not 0 <= dev_speakers < total:
        raise ValueError(
            f"dev_speakers={dev_speakers} must be between 0 and {total - 1}: "
            f"the training set has {total} speakers"
        )
    names = sorted(groups, key=lambda g: (-len(groups[g]), g))
    counts = {g: min(len(groups[g]), round(dev_speakers * len(groups[g]) / total)) for g in names}
    counts[names[0]] += dev_speakers - sum(counts.values())
    rng = random.Random(seed)
    chosen = set()
    for g in sorted(names):
        chosen |= set(rng.sample(sorted(groups[g]), counts[g]))
    return chosen


def corpus_files(root):
    """Every file a preparation of ``root`` reads: the ten list files and the listed audio.

    Example
    -------
    >>> import os
    >>> len(corpus_files(os.environ["SBMETA_SPEECHOCEAN762_ROOT"]))  # doctest: +SKIP
    170
    """
    root = pathlib.Path(root)
    files = [root / s / f for s in SPLITS for f in SPLIT_FILES]
    for split in SPLITS:
        scp = root / split / "wav.scp"
        if scp.is_file():
            for line in scp.read_text(encoding="utf-8", errors="replace").splitlines():
                fields = line.split(maxsplit=1)
                if len(fields) == 2:
                    files.append(root / fields[1].strip())
    return files


def _read_table(path, report, what):
    """``{key: (value, line)}`` of a Kaldi-style ``key value`` file."""
    table = {}
    for number, line in read_transcript_lines(path, report):
        fields = line.split(maxsplit=1)
        key = fields[0]
        value = fields[1].strip() if len(fields) == 2 else ""
        if key in table:
            report.add(DUPLICATE_ID, f"{key} ({path}:{number}; first at line {table[key][1]})")
            continue
        if not value and what != "text":
            report.add(MALFORMED_LINE, f"{path}:{number}: {key!r} has no {what}")
            continue
        table[key] = (value, number)
    return table


def _read_split(root, split, report):
    """Rows of one published split; its problems go to ``report``."""
    folder = root / split
    text = _read_table(folder / "text", report, "text")
    scp = _read_table(folder / "wav.scp", report, "wav path")
    utt2spk = _read_table(folder / "utt2spk", report, "speaker")
    ages = _read_table(folder / "spk2age", report, "age")
    genders = _read_table(folder / "spk2gender", report, "gender")
    rows = []
    for utt, (rel, number) in scp.items():
        where = f"{folder / 'wav.scp'}:{number}"
        words = text.get(utt, ("", None))[0].upper().split()
        if not words:
            report.add(EMPTY_TRANSCRIPT, f"{utt} ({where}): no text in {folder / 'text'}")
            continue
        if utt not in utt2spk:
            report.add(UTTERANCE_WITHOUT_SPEAKER, f"{utt} ({where}): not in {folder / 'utt2spk'}")
            continue
        spk = utt2spk[utt][0]
        if spk not in ages or spk not in genders or not ages[spk][0].isdigit():
            report.add(SPEAKER_WITHOUT_AGE, f"speaker {spk} of {utt}: no integer age in "
                                            f"{folder / 'spk2age'} or no gender in {folder / 'spk2gender'}")
            continue
        wav = (root / rel).resolve()
        if not wav.is_relative_to(root):
            report.add(MALFORMED_LINE, f"{where}: {rel!r} points outside {root}")
            continue
        if not wav.is_file():
            report.add(TRANSCRIPT_WITHOUT_AUDIO, f"{utt} ({where}): no file {wav}")
            continue
        duration, reason = check_audio(wav)
        if duration is None:
            report.add(UNREADABLE_AUDIO, f"{wav} ({utt}): {reason}")
            continue
        age = ages[spk][0]
        rows.append(dict(ID=utt, duration=duration, wav=str(wav), spk_id=spk, wrd=" ".join(words),
                         age=age, gender=genders[spk][0], age_group=age_group(age)))
    for utt, (_, number) in text.items():
        if utt not in scp:
            report.add(TRANSCRIPT_WITHOUT_AUDIO, f"{utt} ({folder / 'text'}:{number}): not in {folder / 'wav.scp'}")
    return rows


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


def main(argv=None):
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description="Prepare speechocean762 as SpeechBrain CSV manifests.")
    parser.add_argument("--data_folder", required=True, help="corpus root (holding train/, test/, WAVE/)")
    parser.add_argument("--save_folder", required=True, help="where train/dev/test.csv go")
    parser.add_argument("--dev_speakers", type=int, default=16, help="training speakers held out as dev")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the dev speaker choice")
    parser.add_argument("--skip_bad", action="store_true", help="leave bad utterances out, with a warning")
    parser.add_argument("--force", action="store_true", help="prepare again even if up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        result = prepare_speechocean762(
            args.data_folder, args.save_folder, dev_speakers=args.dev_speakers, seed=args.seed,
            skip_bad=args.skip_bad, skip_prep_if_exists=not args.force,
        )
    except (DataPreparationError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_summary_table(args.save_folder, splits=MANIFESTS))
    print(f"dev speakers: {' '.join(result['dev_speakers'])}")
    if result["reused"]:
        print("(manifests were up to date; use --force to prepare again)")
    for kind, items in result["skipped"].items():
        print(f"skipped {len(items)} x {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
