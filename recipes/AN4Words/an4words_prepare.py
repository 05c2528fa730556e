#!/usr/bin/env python3
"""Cut a few-shot spoken-term corpus out of CMU AN4 by CTC forced alignment.

Every AN4 utterance (training and test, CMU's layout; see
``recipes/AN4/an4_prepare.py``) is aligned to its transcript, characters and
word spaces, with a character CTC model (any sb-meta export of the AN4 CTC
recipe: ``sb_meta.adapt.load_model(aligner_folder)``) through
``torchaudio.functional.forced_align``. Each word becomes a segment of its
utterance: from its first to its last aligned character, widened by at most
``max_pad`` seconds on each side but never past the middle of the gap to the
neighbouring word, then trimmed of leading and trailing silence (frames more
than ``silence_db`` below the utterance's loudest). AN4's single-word
utterances (YES, NO, REPEAT, STOP, HELP, START, GO) are aligned and cut the
same way.

Quality is checked without listening, per segment:

``confidence``
    the mean CTC posterior of the word's aligned characters over the frames
    the alignment gives them (``torchaudio.functional.merge_tokens`` scores);
``duration``
    absolute bounds and the ratio to the word's median duration;
``recognized``
    what the aligner's greedy CTC decoding hears in the cut segment alone.

Segments below ``min_confidence`` or outside the duration bounds are left
out. The remaining words are split into **meta-train, meta-valid and
meta-test classes** (stratified by frequency, :func:`split_classes`), and the
speakers into training, validation and test
speakers (test: AN4's 10 test speakers plus ``extra_test_speakers`` training
speakers held out; validation: ``valid_speakers`` others). ``test.csv`` holds
test classes spoken by test speakers only, ``valid.csv`` validation classes
by validation speakers, ``train.csv`` the remaining classes by the remaining
speakers: classes and speakers are disjoint across the three. Columns::

    ID,duration,wav,start,stop,word,spk_id,confidence,recognized,utt

(``start`` / ``stop`` in samples, SpeechBrain's convention for
``read_audio({"file": wav, "start": start, "stop": stop})``). ``segments.csv``
lists every aligned word with why it was kept or dropped, ``report.json`` the
counts and quality statistics.

Usage::

    python recipes/AN4Words/an4words_prepare.py --data_folder $SBMETA_AN4_ROOT \\
        --aligner_folder results/AN4/joint/1234/pretrained --save_folder data/an4words
"""

import argparse
import csv
import json
import logging
import math
import pathlib
import random
import statistics
import sys

import torch

from sb_meta.data.validate import ProblemReport, raise_or_warn
from sb_meta.utils import atomic_open, load_script

logger = logging.getLogger("sb_meta.recipes.an4words_prepare")

HERE = pathlib.Path(__file__).resolve().parent
AN4 = load_script(HERE.parent / "AN4" / "an4_prepare.py", "sbmeta_an4_prepare_for_words")

COLUMNS = ("ID", "duration", "wav", "start", "stop", "word", "spk_id", "confidence", "recognized", "utt")
SEGMENT_COLUMNS = COLUMNS + ("split", "single_word", "kept", "reason")
SPLITS = ("train", "valid", "test")
PREP_VERSION = 1

#: defaults of every option (``prepare_an4words`` keywords, command-line flags, report)
DEFAULTS = dict(
    min_confidence=0.5,
    min_duration=0.12,
    max_duration=1.6,
    duration_ratio=(0.4, 2.5),
    max_pad=0.2,
    silence_db=35.0,
    margin=0.04,
    extra_test_speakers=14,
    valid_speakers=8,
    test_classes=12,
    valid_classes=6,
    min_test_examples=20,
    min_valid_examples=10,
    min_train_examples=6,
    seed=1234,
)


# --------------------------------------------------------------------------- alignment


def load_aligner(folder, device=None):
    """The CTC model of an sb-meta AN4 export (``sb_meta.adapt.load_model``)."""
    from sb_meta.adapt import load_model

    model = load_model(folder, device=device)
    if not hasattr(model.tokenizer, "lab2ind") or " " not in model.tokenizer.lab2ind:
        raise ValueError(
            f"the aligner {folder} needs a character tokenizer (CTCTextEncoder) with a space: "
            "export the AN4 CTC recipe (recipes/AN4/hparams/crdnn_ctc_meta.yaml)"
        )
    return model


def _encode(tokenizer, text):
    unknown = sorted({c for c in text if c not in tokenizer.lab2ind})
    if unknown:
        raise ValueError(f"characters {unknown} of {text!r} are not in the aligner's alphabet")
    return [tokenizer.lab2ind[c] for c in text]


def greedy_text(tokenizer, log_probs, blank=0):
    """Greedy CTC transcript of ``log_probs`` ``[T, C]``."""
    ids = log_probs.argmax(-1).tolist()
    out, prev = [], None
    for i in ids:
        if i != prev and i != blank:
            out.append(tokenizer.ind2lab.get(i, ""))
        prev = i
    return "".join(out).strip()


def frame_energies_db(wav, hop):
    """Energy (dB) of consecutive frames of ``hop`` samples."""
    n = max(1, len(wav) // hop)
    frames = wav[: n * hop].reshape(n, hop) if len(wav) >= hop else wav.reshape(1, -1)
    return 10.0 * torch.log10(frames.pow(2).mean(-1) + 1e-10)


def align_words(aligner, wav, text, blank=0, max_pad=DEFAULTS["max_pad"],
                silence_db=DEFAULTS["silence_db"], margin=DEFAULTS["margin"], sample_rate=16000):
    """Word segments of one utterance by CTC forced alignment.

    Arguments
    ---------
    aligner : object
        ``log_probs(wavs, wav_lens) -> [1, T, C]`` CTC log-probabilities and a
        ``tokenizer`` (``CTCTextEncoder``: characters and the space).
    wav : torch.Tensor
        The utterance ``[samples]``.
    text : str
        Its transcript (words separated by single spaces).
    blank : int
        The CTC blank index.
    max_pad : float
        Seconds a segment may extend past its first / last aligned character.
    silence_db : float
        Leading / trailing frames this far below the utterance's loudest are trimmed.
    margin : float
        Seconds kept around the speech after trimming.
    sample_rate : int

    Returns
    -------
    list of dict
        One per word: ``word``, ``start``, ``stop`` (samples), ``confidence``.

    Example
    -------
    >>> from speechbrain.dataio.encoder import CTCTextEncoder
    >>> class Oracle:  # frames 2-3 say "A", 6-7 "B", a space between
    ...     tokenizer = CTCTextEncoder()
    ...     tokenizer.insert_blank(); tokenizer.add_label("A"); tokenizer.add_label("B")
    ...     tokenizer.add_label(" ")
    ...     def log_probs(self, wavs, lens):
    ...         ids = [0, 0, 1, 1, 0, 3, 2, 2, 0, 0]
    ...         return torch.log(torch.nn.functional.one_hot(torch.tensor([ids]), 4) * 0.97 + 0.01)
    >>> wav = torch.ones(3200)
    >>> [(w["word"], w["start"], w["stop"]) for w in align_words(Oracle(), wav, "A B", max_pad=0.0)]
    [('A', 640, 1280), ('B', 1920, 2560)]
    """
    import torchaudio.functional as AF

    tokens = _encode(aligner.tokenizer, text)
    with torch.no_grad():
        log_probs = aligner.log_probs(wav.unsqueeze(0), torch.tensor([1.0]))
    log_probs = log_probs[:1].float().cpu()
    frames = log_probs.shape[1]
    repeats = sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)
    if frames < len(tokens) + repeats:
        raise ValueError(f"{frames} CTC frames cannot hold {len(tokens)} characters")
    labels, scores = AF.forced_align(log_probs, torch.tensor([tokens], dtype=torch.int32), blank=blank)
    spans = AF.merge_tokens(labels[0], scores[0].exp(), blank=blank)
    if len(spans) != len(tokens):  # pragma: no cover - forced_align guarantees it
        raise RuntimeError(f"alignment of {text!r} has {len(spans)} spans for {len(tokens)} characters")
    stride = wav.shape[0] / frames
    space = aligner.tokenizer.lab2ind[" "]
    words, current = [], []
    for span, tok in zip(spans, tokens):
        if tok == space:
            if current:
                words.append(current)
            current = []
        else:
            current.append(span)
    if current:
        words.append(current)
    names = text.split()
    if len(words) != len(names):
        raise ValueError(f"transcript {text!r} has empty words")
    raw = [(int(w[0].start * stride), int(math.ceil(w[-1].end * stride))) for w in words]
    pad = int(max_pad * sample_rate)
    hop = max(1, int(0.01 * sample_rate))
    energy = frame_energies_db(wav.float(), hop)
    floor = float(energy.max()) - silence_db
    keep = int(margin * sample_rate)
    out = []
    for i, (name, spans_of_word, (lo, hi)) in enumerate(zip(names, words, raw)):
        left = 0 if i == 0 else (raw[i - 1][1] + lo) // 2
        right = wav.shape[0] if i == len(raw) - 1 else (hi + raw[i + 1][0]) // 2
        start, stop = max(left, lo - pad), min(right, hi + pad)
        # trim silence, never into the aligned characters
        first = next((f for f in range(start // hop, min(lo, stop) // hop) if energy[f] >= floor), None)
        if first is not None:
            start = max(start, first * hop - keep)
        else:
            start = max(start, lo - keep)
        last = next((f for f in range((stop - 1) // hop, max(hi, start) // hop - 1, -1)
                     if f < len(energy) and energy[f] >= floor), None)
        if last is not None:
            stop = min(stop, (last + 1) * hop + keep)
        else:
            stop = min(stop, hi + keep)
        start, stop = min(start, lo), max(stop, hi)
        n = sum(s.end - s.start for s in spans_of_word)
        conf = sum(s.score * (s.end - s.start) for s in spans_of_word) / max(n, 1)
        out.append({"word": name, "start": int(start), "stop": int(stop), "confidence": float(conf)})
    return out


# --------------------------------------------------------------------------- corpus


def read_an4(data_folder):
    """AN4's utterances (``ID, duration, wav, spk_id, wrd`` and ``split``: train / test)."""
    root = AN4._find_root(data_folder)
    if root is None:
        missing = AN4._missing_parts(pathlib.Path(data_folder))
        raise FileNotFoundError(f"AN4 corpus not found in {data_folder}: missing {', '.join(missing)}")
    report = ProblemReport()
    rows = []
    for split in AN4.AN4_SPLITS:
        for row in AN4._read_split(root.resolve(), split, report):
            rows.append(dict(row, split=split))
    raise_or_warn(report, True, f"AN4 words preparation of {root}", logger)
    return rows


def cut_segments(utterances, aligner, options, progress=True):
    """Align every utterance; one record per word with its checks."""
    from tqdm import tqdm

    segments, failed = [], []
    for utt in tqdm(utterances, desc="aligning", unit="utt", disable=not progress):
        wav = aligner.load_audio(utt["wav"])
        try:
            words = align_words(aligner, wav, utt["wrd"], max_pad=options["max_pad"],
                                silence_db=options["silence_db"], margin=options["margin"],
                                sample_rate=aligner.sample_rate)
        except ValueError as exc:
            failed.append({"utt": utt["ID"], "reason": str(exc)})
            continue
        for i, w in enumerate(words):
            piece = wav[w["start"]:w["stop"]]
            with torch.no_grad():
                heard = greedy_text(aligner.tokenizer, aligner.log_probs(piece.unsqueeze(0), torch.tensor([1.0]))[0])
            segments.append({
                "ID": f"{utt['ID']}_w{i:02d}",
                "duration": (w["stop"] - w["start"]) / aligner.sample_rate,
                "wav": utt["wav"], "start": w["start"], "stop": w["stop"], "word": w["word"],
                "spk_id": utt["spk_id"], "confidence": round(w["confidence"], 4),
                "recognized": heard, "utt": utt["ID"], "split": utt["split"],
                "single_word": len(words) == 1,
            })
    return segments, failed


def quality_filter(segments, options):
    """Mark each segment ``kept`` or with the ``reason`` it is dropped."""
    by_word = {}
    for s in segments:
        by_word.setdefault(s["word"], []).append(s["duration"])
    median = {w: statistics.median(d) for w, d in by_word.items()}
    lo_ratio, hi_ratio = options["duration_ratio"]
    for s in segments:
        ratio = s["duration"] / median[s["word"]]
        reason = None
        if s["confidence"] < options["min_confidence"]:
            reason = "low confidence"
        elif not options["min_duration"] <= s["duration"] <= options["max_duration"]:
            reason = "duration out of bounds"
        elif len(by_word[s["word"]]) >= 5 and not lo_ratio <= ratio <= hi_ratio:
            reason = "duration far from the word's median"
        s["kept"] = reason is None
        s["reason"] = reason or ""
    return segments


def split_speakers(segments, options):
    """(train, valid, test) speaker sets: test = AN4 test + held-out training speakers."""
    an4_test = sorted({s["spk_id"] for s in segments if s["split"] == "test"})
    train = sorted({s["spk_id"] for s in segments if s["split"] == "train"} - set(an4_test))
    rng = random.Random(options["seed"])
    held = rng.sample(train, options["extra_test_speakers"] + options["valid_speakers"])
    extra, valid = held[: options["extra_test_speakers"]], held[options["extra_test_speakers"]:]
    rest = sorted(set(train) - set(held))
    return set(rest), set(valid), set(an4_test) | set(extra)


def split_classes(kept, speakers, options):
    """(train, valid, test) word classes, stratified by frequency.

    AN4's vocabulary is Zipfian: the words with enough test examples are the
    frequent ones (letters, digits), which training needs too. The classes
    with ``min_test_examples`` segments from test speakers are ranked by
    frequency and taken in pairs, one of each pair (drawn with ``seed``) a
    test class, until there are ``test_classes``; the validation classes are
    the least frequent remaining ones with ``min_valid_examples`` segments
    from validation speakers; every other class with ``min_train_examples``
    segments from training speakers is a training class.
    """
    count = {name: {} for name in SPLITS}
    total = {}
    for s in kept:
        total[s["word"]] = total.get(s["word"], 0) + 1
        for name, group in zip(SPLITS, speakers):
            if s["spk_id"] in group:
                count[name][s["word"]] = count[name].get(s["word"], 0) + 1
    ranked = sorted(total, key=lambda w: (-total[w], w))
    rng = random.Random(options["seed"] + 1)
    eligible = [w for w in ranked if count["test"].get(w, 0) >= options["min_test_examples"]]
    test = []
    for i in range(0, len(eligible), 2):
        if len(test) == options["test_classes"]:
            break
        test.append(rng.choice(eligible[i:i + 2]))
    valid = [w for w in ranked if w not in test and count["valid"].get(w, 0) >= options["min_valid_examples"]]
    valid = valid[len(valid) - options["valid_classes"]:] if options["valid_classes"] else []
    for name, got, wanted, minimum in (("test", test, options["test_classes"], options["min_test_examples"]),
                                      ("valid", valid, options["valid_classes"], options["min_valid_examples"])):
        if len(got) < wanted:
            logger.warning("only %d words have %d %s examples; %d wanted", len(got), minimum, name, wanted)
    test, valid = set(test), set(valid)
    train = {w for w, c in count["train"].items() if c >= options["min_train_examples"]} - test - valid
    return train, valid, test


def write_segments(path, rows, columns=COLUMNS):
    """Write segment rows as a SpeechBrain CSV manifest (atomically)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(dict(row, duration=f"{float(row['duration']):.3f}"))
    return path


def _stats(values):
    values = sorted(values)
    if not values:
        return {}
    q = lambda p: values[min(len(values) - 1, int(p * len(values)))]  # noqa: E731
    return {"n": len(values), "mean": round(statistics.fmean(values), 4), "p05": q(0.05),
            "median": q(0.5), "p95": q(0.95)}


def quality_report(segments, failed, splits, classes, speakers, options):
    """Counts and listening-free quality statistics of the preparation."""
    kept = [s for s in segments if s["kept"]]
    reasons = {}
    for s in segments:
        if not s["kept"]:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1

    def match_rate(rows):
        return round(sum(r["recognized"] == r["word"] for r in rows) / max(len(rows), 1), 4)

    bins = [0.0, 0.3, 0.5, 0.7, 0.9, 1.01]
    hist = {f"{a:.1f}-{min(b, 1.0):.1f}": sum(a <= s["confidence"] < b for s in segments)
            for a, b in zip(bins, bins[1:])}
    return {
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "version": PREP_VERSION,
        "utterances_failed": failed,
        "segments_aligned": len(segments),
        "segments_single_word_utterances": sum(s["single_word"] for s in segments),
        "segments_kept": len(kept),
        "dropped": reasons,
        "confidence": {"all": _stats([s["confidence"] for s in segments]),
                       "kept": _stats([s["confidence"] for s in kept]), "histogram": hist},
        "duration_kept": _stats([round(s["duration"], 3) for s in kept]),
        "recognized_exactly": {"all": match_rate(segments), "kept": match_rate(kept),
                               "dropped": match_rate([s for s in segments if not s["kept"]])},
        "splits": {
            name: {"segments": len(rows), "classes": len({r["word"] for r in rows}),
                   "speakers": len({r["spk_id"] for r in rows}),
                   "min_per_class": min((sum(r["word"] == w for r in rows) for w in {r["word"] for r in rows}),
                                        default=0),
                   "recognized_exactly": match_rate(rows)}
            for name, rows in splits.items()
        },
        "classes": {name: sorted(c) for name, c in zip(SPLITS, classes)},
        "speakers": {name: sorted(s) for name, s in zip(SPLITS, speakers)},
        "segments_unused": len(kept) - sum(len(r) for r in splits.values()),
    }


def _cached_segments(save_folder, align_record):
    """The segments of an earlier preparation cut with the same aligner and options, or None."""
    path, report = pathlib.Path(save_folder) / "segments.csv", pathlib.Path(save_folder) / "report.json"
    if not (path.is_file() and report.is_file()):
        return None
    try:
        if json.loads(report.read_text()).get("align_record") != align_record:
            return None
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError):
        return None
    if rows and "split" not in rows[0]:
        return None
    for r in rows:
        r.update(duration=float(r["duration"]), start=int(r["start"]), stop=int(r["stop"]),
                 confidence=float(r["confidence"]), single_word=r["single_word"] == "True")
    return rows


def prepare_an4words(data_folder, aligner_folder, save_folder, aligner=None, progress=True,
                     skip_prep_if_exists=True, **options):
    """Write ``train.csv``, ``valid.csv`` and ``test.csv`` of AN4 word segments.

    Arguments
    ---------
    data_folder : str or pathlib.Path
        The AN4 root (CMU's ``etc/`` and ``wav/``).
    aligner_folder : str or pathlib.Path or None
        An sb-meta export of the AN4 CTC recipe (characters); not needed when
        ``aligner`` is given.
    save_folder : str or pathlib.Path
        Where the manifests, ``segments.csv`` and ``report.json`` go.
    aligner : object, optional
        A loaded aligner (``log_probs``, ``tokenizer``, ``load_audio``,
        ``sample_rate``), e.g. for tests.
    progress : bool
        Show a progress bar.
    skip_prep_if_exists : bool
        Keep an earlier preparation with the same options and aligner; when
        only the thresholds or the splits changed, reuse its aligned segments
        (``segments.csv``) instead of aligning again.
    **options
        Any of :data:`DEFAULTS` (thresholds, speaker and class split sizes, seed).

    Returns
    -------
    dict
        The report (also written to ``report.json``).
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise KeyError(f"unknown option(s) {unknown}; options are {sorted(DEFAULTS)}")
    options = dict(DEFAULTS, **options)
    options["duration_ratio"] = tuple(options["duration_ratio"])
    save_folder = pathlib.Path(save_folder)
    record = {"data_folder": str(pathlib.Path(data_folder).resolve()),
              "aligner": str(pathlib.Path(aligner_folder).resolve()) if aligner_folder else "given",
              **{k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}
    report_path = save_folder / "report.json"
    if skip_prep_if_exists and report_path.is_file() and all((save_folder / f"{s}.csv").is_file() for s in SPLITS):
        old = json.loads(report_path.read_text())
        if old.get("record") == record and old.get("version") == PREP_VERSION:
            logger.info("AN4 word manifests in %s are up to date; skipping preparation", save_folder)
            return old
    align_record = {k: record[k] for k in ("data_folder", "aligner", "max_pad", "silence_db", "margin")}
    segments = _cached_segments(save_folder, align_record) if aligner_folder and skip_prep_if_exists else None
    if segments is not None:
        failed = json.loads(report_path.read_text()).get("utterances_failed", [])
        logger.info("reusing the aligned segments of %s (same aligner and cutting options)", save_folder)
    else:
        if aligner is None:
            if not aligner_folder:
                raise ValueError("the AN4 word preparation needs an aligner: give aligner_folder "
                                 "(an export of recipes/AN4/train.py with a CTC model)")
            aligner = load_aligner(aligner_folder)
        utterances = read_an4(data_folder)
        segments, failed = cut_segments(utterances, aligner, options, progress)
    quality_filter(segments, options)
    kept = [s for s in segments if s["kept"]]
    speakers = split_speakers(segments, options)
    classes = split_classes(kept, speakers, options)
    splits = {name: [s for s in kept if s["spk_id"] in spk and s["word"] in cls]
              for name, spk, cls in zip(SPLITS, speakers, classes)}
    for name, rows in splits.items():
        write_segments(save_folder / f"{name}.csv", rows)  # safe-path: one of SPLITS
    write_segments(save_folder / "segments.csv", segments, SEGMENT_COLUMNS)
    report = quality_report(segments, failed, splits, classes, speakers, options)
    report["record"] = record
    report["align_record"] = align_record
    with atomic_open(report_path, "w") as f:
        json.dump(report, f, indent=2)
    logger.info("AN4 word segments in %s: %s", save_folder,
                {k: v["segments"] for k, v in report["splits"].items()})
    return report


def format_report(report):
    """A short text summary of :func:`prepare_an4words`' report."""
    lines = [
        f"aligned words: {report['segments_aligned']} "
        f"({report['segments_single_word_utterances']} from single-word utterances), "
        f"kept: {report['segments_kept']}, dropped: {report['dropped']}",
        f"confidence (kept): {report['confidence']['kept']}",
        f"duration s (kept): {report['duration_kept']}",
        f"re-recognized exactly by the aligner: {report['recognized_exactly']}",
    ]
    for name, s in report["splits"].items():
        lines.append(f"{name:5s}: {s['segments']} segments, {s['classes']} classes, "
                     f"{s['speakers']} speakers, >= {s['min_per_class']} per class")
    return "\n".join(lines)


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_folder", required=True, help="AN4 root (etc/ and wav/)")
    parser.add_argument("--aligner_folder", required=True, help="export of the AN4 CTC recipe")
    parser.add_argument("--save_folder", required=True)
    parser.add_argument("--force", action="store_true", help="prepare again even if up to date")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    for key, value in DEFAULTS.items():
        if isinstance(value, tuple):
            parser.add_argument(f"--{key}", type=float, nargs=2, default=value)
        else:
            parser.add_argument(f"--{key}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    opts = {k: args[k] for k in DEFAULTS}
    report = prepare_an4words(args["data_folder"], args["aligner_folder"], args["save_folder"],
                              progress=not args["quiet"] and sys.stderr.isatty(),
                              skip_prep_if_exists=not args["force"], **opts)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
