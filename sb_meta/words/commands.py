"""``sb-meta words``: enrol new words, classify recordings, evaluate N-way k-shot, synthesise.

Added to the ``sb-meta`` command by :func:`add_commands` (one line in
:mod:`sb_meta.cli`)::

    sb-meta words enrol --model M --out mine --word LIGHTS=l1.wav,l2.wav --word MUSIC=m1.wav,m2.wav
    sb-meta words enrol --model M --out mine --manifest test.csv --k 5 --words SEVEN,E,ENTER
    sb-meta words classify --model mine a.wav b.wav        # path<TAB>word<TAB>probability
    sb-meta words evaluate --model M --data test.csv --way 5 --shots 1,5 --episodes 600
    sb-meta words synth --out data/synth_words --words 200 --voices 40

Example
-------
>>> import argparse
>>> parser = argparse.ArgumentParser(prog="sb-meta")
>>> add_commands(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["words", "evaluate", "--model", "m", "--data", "t.csv", "--shots", "1,5"])
>>> args.shots, args.way, args.episodes
([1, 5], 5, 600)
"""

import json
import pathlib
import random
import sys

from sb_meta.adapt.commands import _int_list
from sb_meta.trust import add_trust_option
from sb_meta.utils import check_output

__all__ = ["add_commands"]


def _manifest_rows(path):
    from sb_meta.data.manifest import read_manifest

    return read_manifest(path, required=("ID", "wav", "start", "stop", "word"), nonempty=("ID", "wav", "word"))


def _audio(row):
    if row.get("stop") not in (None, ""):
        return {"file": row["wav"], "start": int(row["start"]), "stop": int(row["stop"])}
    return row["wav"]


def _examples(args):
    """``({word: [audio]}, {word: [ids]})`` from ``--word`` and/or ``--manifest``."""
    examples, names = {}, {}
    for item in args.word or []:
        word, sep, files = item.partition("=")
        if not sep or not word.strip() or not files.strip():
            raise ValueError(f"--word takes WORD=file1,file2,..., got {item!r}")
        paths = [f.strip() for f in files.split(",") if f.strip()]
        examples.setdefault(word.strip(), []).extend(paths)
        names.setdefault(word.strip(), []).extend(paths)
    if args.manifest:
        rows = _manifest_rows(args.manifest)
        by_word = {}
        for r in rows:
            by_word.setdefault(r["word"], []).append(r)
        wanted = [w.strip() for w in args.words.split(",")] if args.words else sorted(by_word)
        unknown = [w for w in wanted if w not in by_word]
        if unknown:
            raise ValueError(f"word(s) {unknown} are not in {args.manifest}; it has {sorted(by_word)[:20]}")
        rng = random.Random(args.seed)
        for w in wanted:
            pool = sorted(by_word[w], key=lambda r: r["ID"])
            if len(pool) < args.k:
                raise ValueError(f"--k {args.k} recordings of {w!r} requested but {args.manifest} has {len(pool)}")
            chosen = sorted(rng.sample(pool, args.k), key=lambda r: r["ID"])
            examples.setdefault(w, []).extend(_audio(r) for r in chosen)
            names.setdefault(w, []).extend(r["ID"] for r in chosen)
    if not examples:
        raise ValueError("nothing to enrol: give --word WORD=files... or --manifest CSV")
    return examples, names


def _cmd_enrol(args):
    from sb_meta.export import check_destination
    from sb_meta.words.model import load_word_model

    check_destination(args.out, force=args.force)
    check_output(args.out, [args.model, args.manifest])
    examples, names = _examples(args)
    model = load_word_model(args.model, device=args.device, trust=args.trust_model)
    enrolled = model.enrol(examples, names=names)
    out = enrolled.export(args.out, force=args.force)
    counts = ", ".join(f"{w} ({len(v)})" for w, v in examples.items())
    print(f"Enrolled {len(examples)} words in {args.model} ({model.strategy}, "
          f"{type(model.head).__name__}): {counts}")
    print(f"Exported to {out}")
    return 0


def _cmd_classify(args):
    from sb_meta.words.model import load_word_model

    model = load_word_model(args.model, device=args.device, trust=args.trust_model)
    failed = 0
    for path in args.files:
        try:
            (word, prob), = model.classify([path])
        except (FileNotFoundError, ValueError) as exc:
            if "no word is enrolled" in str(exc):
                raise
            print(f"sb-meta words classify: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}\t{word}\t{prob:.3f}", flush=True)
    return 1 if failed else 0


def _cmd_evaluate(args):
    from sb_meta.words.evaluation import evaluate_word_model, format_results
    from sb_meta.words.model import load_word_model

    if args.out:
        check_output(args.out, [args.data, args.model])
    rows = _manifest_rows(args.data)
    model = load_word_model(args.model, device=args.device, trust=args.trust_model)
    report = evaluate_word_model(model, rows, n_way=args.way, shots=args.shots, n_query=args.query,
                                 episodes=args.episodes, seed=args.seed,
                                 allow_seen_classes=args.allow_seen_classes)
    report.update(model=str(args.model), data=str(args.data), seed=args.seed)
    print(format_results(report))
    if args.out:
        path = pathlib.Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"Results: {path}")
    return 0


def _cmd_synth(args):
    from sb_meta.data.synth import generate_word_corpus

    check_output(args.out)
    summary = generate_word_corpus(args.out, words=args.words, voices=args.voices, lang=args.lang,
                                   seed=args.seed, channel=not args.no_channel, progress=not args.quiet,
                                   exclude=[w for w in (args.exclude or "").split(",") if w.strip()])
    print(f"Single-word synthetic corpus written to {args.out}")
    for split in ("train", "valid", "test"):
        s = summary[split]
        print(f"{split:5s}: {s['recordings']} recordings, {s['words']} words, {s['voices']} voices")
    return 0


def add_commands(subparsers):
    """Add ``words`` (``enrol``, ``classify``, ``evaluate``, ``synth``) to the ``sb-meta`` parser."""
    words = subparsers.add_parser("words", help="few-shot spoken terms: enrol, classify, evaluate, synth")
    sub = words.add_subparsers(dest="words_command", required=True)

    p = sub.add_parser("enrol", help="enrol new words from a few recordings each; export the model")
    p.add_argument("--model", required=True, help="word model folder (sb-meta words export)")
    p.add_argument("--word", action="append", metavar="WORD=FILE[,FILE...]",
                   help="a word and its recordings (repeat for each word)")
    p.add_argument("--manifest", default=None, help="or take recordings from a word manifest CSV")
    p.add_argument("--words", default=None, help="with --manifest: comma-separated words (default all)")
    p.add_argument("--k", type=int, default=5, help="with --manifest: recordings per word (default 5)")
    p.add_argument("--seed", type=int, default=0, help="with --manifest: seed of the draw")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, help="new folder for the enrolled model")
    p.add_argument("--force", action="store_true", help="replace an earlier sb-meta export at --out")
    add_trust_option(p)
    p.set_defaults(func=_cmd_enrol)

    p = sub.add_parser("classify", help="classify recordings (prints path<TAB>word<TAB>probability)")
    p.add_argument("--model", required=True, help="word model folder with enrolled words")
    p.add_argument("--device", default=None)
    p.add_argument("files", nargs="+")
    add_trust_option(p)
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser("evaluate", help="N-way k-shot accuracy with a 95%% confidence interval")
    p.add_argument("--model", required=True, help="word model folder")
    p.add_argument("--data", required=True, help="word manifest CSV of new classes (e.g. test.csv)")
    p.add_argument("--way", type=int, default=5, help="classes per episode (default 5)")
    p.add_argument("--shots", type=_int_list, default=[1, 5], help="support sizes (default 1,5)")
    p.add_argument("--query", type=int, default=15, help="queries per class (default 15)")
    p.add_argument("--episodes", type=int, default=600, help="episodes per shot (default 600)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-seen-classes", action="store_true",
                   help="evaluate even on classes the encoder was trained on")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    add_trust_option(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("synth", help="generate a single-word synthetic corpus (many words x many voices)")
    p.add_argument("--out", required=True)
    p.add_argument("--words", type=int, default=200, help="words taken from the word list")
    p.add_argument("--voices", type=int, default=40, help="synthetic speakers")
    p.add_argument("--lang", default="en")
    p.add_argument("--exclude", default=None, help="comma-separated words to leave out (e.g. test classes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-channel", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_synth)
