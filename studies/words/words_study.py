#!/usr/bin/env python
"""Few-shot spoken terms on real speech (AN4Words): evidence for the metric strategies.

Trains ``protonet``, ``matching`` and the ``finetune_classifier`` baseline on the
AN4Words meta-train classes, then measures 5-way 1-shot and 5-shot accuracy on 600
episodes of the test classes spoken by the test speakers (``sb-meta words evaluate``,
95% confidence interval); ``synth`` measures whether single-word synthetic speech
(``sb-meta words synth``, the test words left out) added to meta-training helps
``protonet`` on those real test classes; ``report`` writes
``docs/studies/words/results.json`` and ``report.md`` (with the Meta-LSTM comparison of
``studies/an4/an4_study.py evaluate`` when its record exists).

    export SBMETA_AN4_ROOT=/path/to/an4
    # the corpus, cut by an AN4 CTC model (recipes/AN4Words/README.md), once
    python recipes/AN4Words/an4words_prepare.py --data_folder $SBMETA_AN4_ROOT \\
        --aligner_folder ALIGNER --save_folder data/an4words
    python studies/words/words_study.py train --corpus data/an4words
    python studies/words/words_study.py synth --corpus data/an4words
    python studies/words/words_study.py report

Budgets are epochs of the recipe (``episodes_per_epoch`` episodes each; by default each
strategy's :data:`EPOCHS`); the records give the minutes they took on the one clock of
``studies/common.py``. Pin it when the machine is shared:
``OMP_NUM_THREADS=1 taskset -c N python ...``.
"""

import argparse
import csv
import pathlib
import shlex
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from studies import common  # noqa: E402

OUT = REPO / "results" / "an4words_study"
DOCS = REPO / "docs" / "studies" / "words"
RECIPE = REPO / "recipes" / "AN4Words"
STRATEGIES = ("protonet", "matching", "finetune_classifier")
#: each strategy's default budget in epochs of the recipe: the epochs its committed run trained
EPOCHS = {"protonet": 5, "matching": 31, "finetune_classifier": 6}
#: the comparison the few-shot literature gives for scale (Parnami & Lee 2022, prototypical
#: networks on Google Speech Commands): easier 2-way and 4-way episodes
LITERATURE = "prototypical networks on Google Speech Commands: 94% at 2-way 5-shot, 83% at 4-way 5-shot"
say = common.say("words_study")


def _rel(path):
    try:
        return str(pathlib.Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def train_and_test(name, strategy, corpus, epochs, extra=(), episodes=600):
    """Train ``strategy`` for ``epochs`` into ``OUT/name`` and evaluate it on
    ``corpus/test.csv``; returns the record (reused when the same commands already ran)."""
    from sb_meta.cli import main as sb_meta_cli

    folder = OUT / name
    root = common.corpus_root("SBMETA_AN4_ROOT")
    argv = [str(RECIPE / "hparams" / f"{strategy}.yaml"), f"--data_folder={root}",
            f"--prepare_folder={corpus}", f"--output_folder={folder}", f"--number_of_epochs={epochs}",
            "--noprogressbar", *extra]
    eval_argv = ["words", "evaluate", "--model", str(folder / "pretrained"), "--data",
                 str(pathlib.Path(corpus) / "test.csv"), "--way", "5", "--shots", "1,5", "--query", "15",
                 "--episodes", str(episodes), "--out", str(folder / "test.json")]
    eval_command = "sb-meta " + " ".join(shlex.quote(_rel(a) if "/" in a else a) for a in eval_argv)
    path = folder / "study.json"
    training = common.run_recipe(RECIPE / "train.py", argv, folder, {"epochs": epochs}, log=say)
    if path.is_file():
        old = common.read_json(path)
        if old.get("training", {}).get("command") == training["command"] and old.get("commands", [None, None])[1] == eval_command:
            say(f"reusing {folder}")
            return old
    say(eval_command)
    if sb_meta_cli(eval_argv) != 0:
        raise SystemExit(f"words_study: {eval_command} failed")
    record = {"name": name, "strategy": strategy, "epochs": epochs, "training": training,
              "commands": [training["command"], eval_command], "test": common.read_json(folder / "test.json")}
    common.write_json(path, record)
    return record


def test_words(corpus):
    with open(pathlib.Path(corpus) / "test.csv", newline="", encoding="utf-8") as f:
        return sorted({row["word"] for row in csv.DictReader(f)})


def cmd_train(args):
    return {s: train_and_test(s, s, args.corpus, args.epochs or EPOCHS[s]) for s in args.strategies.split(",")}


def cmd_synth(args):
    synth = OUT / "synth_words"
    if not (synth / "train.csv").is_file():
        from sb_meta.cli import main as sb_meta_cli

        if sb_meta_cli(["words", "synth", "--out", str(synth), "--words", str(args.words), "--voices",
                        str(args.voices), "--exclude", ",".join(test_words(args.corpus)), "--quiet"]) != 0:
            raise SystemExit("words_study: sb-meta words synth failed")
    return train_and_test("protonet_synth", "protonet", args.corpus, args.epochs or EPOCHS["protonet"],
                          extra=[f"--extra_train_csvs=[{synth / 'train.csv'}]"])


def _acc(rec, shot):
    r = rec["test"]["results"][str(shot)]
    return f"{100 * r['mean']:.1f} ± {100 * r['ci95']:.1f}"


def words_section():
    records = {p.parent.name: common.read_json(p) for p in sorted(OUT.glob("*/study.json"))}
    if not records:
        return None
    rows = [f"| {n} | {r['strategy']} | {r['training']['epochs']} | {r['training']['train_minutes']:.0f} | "
            f"{_acc(r, 1)} | {_acc(r, 5)} |" for n, r in records.items()]
    first = next(iter(records.values()))["test"]
    md = ["AN4Words: words cut from AN4 by CTC forced alignment (`recipes/AN4Words/README.md`); "
          f"5-way episodes of the {first['classes']} test classes spoken by the test speakers "
          f"({first['recordings']} recordings), {first['n_query']} queries per class, "
          f"{first['results']['5']['episodes']} episodes per shot; accuracy in % with its 95% "
          f"confidence interval. Each model trained for the stated epochs on one thread; minutes: {common.CLOCK}.", "",
          "| run | strategy | epochs | training min | 5-way 1-shot | 5-way 5-shot |", "| --- | --- | --- | --- | --- | --- |",
          *rows, "", f"For scale: {LITERATURE}.", ""]
    # (finish_section writes the commands as typed in the repository)
    md += [f"- {n}: `{r['commands'][0]}` then `{r['commands'][1]}`" for n, r in records.items()]
    targets = []
    if "protonet" in records and "protonet_synth" in records:
        a, b = (records[k]["test"]["results"]["5"] for k in ("protonet", "protonet_synth"))
        diff = 100 * (b["mean"] - a["mean"])
        overlap = abs(diff) <= 100 * (a["ci95"] + b["ci95"])
        md += ["", f"Synthetic single-word speech added to meta-training changed protonet's 5-shot "
               f"accuracy by {diff:+.1f} points ({'within' if overlap else 'beyond'} the two intervals)."]
    best = max(records.values(), key=lambda r: r["test"]["results"]["5"]["mean"])
    acc5 = 100 * best["test"]["results"]["5"]["mean"]
    targets.append(["5-way 5-shot accuracy on unseen AN4 words and speakers vs 83% (4-way, Speech Commands)",
                    f"{acc5:.1f}% ({best['name']})", acc5 > 83.0])
    md += ["", *meta_lstm_markdown()]
    return {"status": "ok", "markdown": "\n".join(md), "targets": targets, "records": records,
            "command": "python studies/words/words_study.py train / synth / report"}


def meta_lstm_markdown(family="crdnn_ctc"):
    """The Meta-LSTM against MAML, Meta-SGD and fine-tuning on the AN4 speaker protocol
    (paired on the same draws), from ``an4_study.py evaluate``'s record."""
    path = REPO / "results" / "an4_study" / "eval" / family / "record.json"
    if not path.is_file():
        return ["Meta-LSTM comparison: not run yet (`an4_study.py evaluate ... --reference maml,metasgd,finetune`)."]
    rec = common.read_json(path)
    if "meta_lstm" not in rec["summary"]:
        return ["Meta-LSTM comparison: `meta_lstm` was not among the evaluated models."]
    md = ["**Meta-LSTM (learned optimizer) on the AN4 speaker protocol**: 5-shot adaptation of each "
          "model to each test speaker, the method chosen on the dev speakers; paired difference "
          "meta_lstm − reference on the same draws (WER points, 95% CI):", "",
          "| reference | reference 5-shot WER | meta_lstm 5-shot WER | meta_lstm − reference |",
          "| --- | --- | --- | --- |"]
    mine = rec["summary"]["meta_lstm"]["adapted"]["5"]
    for ref, comps in (rec.get("paired") or {}).items():
        if ref in ("maml", "metasgd", "finetune") and "meta_lstm" in comps:
            c = comps["meta_lstm"]["5"]
            theirs = rec["summary"][ref]["adapted"]["5"]
            lo, hi = c["delta_ci"]
            ci = "–" if lo is None else f"[{lo:+.1f}, {hi:+.1f}]"
            md.append(f"| {ref} | {theirs['wer_mean']:.1f} | {mine['wer_mean']:.1f} | "
                      f"{c['delta']:+.1f} {ci} |")
    md += ["", f"Command: `{rec['command']}`"]
    return md


def cmd_report(args):
    sec = words_section()
    if sec is None:
        raise SystemExit("words_study: nothing to report; run train first")
    sec["markdown"] = common.display(sec["markdown"])
    sec.setdefault("machine", next(iter(sec["records"].values()))["training"]["machine"])
    path = DOCS / "results.json"
    results = common.read_json(path) if path.is_file() else {}
    results["words"] = sec
    common.write_report(results, DOCS, "Few-shot spoken terms: results", INTRO, SECTIONS)
    say(f"wrote {path} and {DOCS / 'report.md'}")


SECTIONS = (("words", "Few-shot spoken terms (prototypical, matching) and the learned optimizer"),)
INTRO = ("Every figure of the spoken-terms study (`studies/words/`), with the command that produced it. "
         "The write-up is [README.md](README.md).")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    t = sub.add_parser("train", help="train and test the metric strategies")
    t.add_argument("--corpus", required=True, help="prepared AN4Words manifests")
    t.add_argument("--strategies", default=",".join(STRATEGIES))
    t.add_argument("--epochs", type=int, default=None, help="epochs of every strategy (default: EPOCHS)")
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("synth", help="protonet with synthetic single-word speech added")
    s.add_argument("--corpus", required=True)
    s.add_argument("--epochs", type=int, default=None, help="epochs (default: protonet's)")
    s.add_argument("--words", type=int, default=300)
    s.add_argument("--voices", type=int, default=60)
    s.set_defaults(func=cmd_synth)
    r = sub.add_parser("report", help="write docs/studies/words/results.json and report.md")
    r.set_defaults(func=cmd_report)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
