#!/usr/bin/env python
"""Few-shot spoken terms on real speech (AN4Words): evidence for the metric strategies.

Trains ``protonet``, ``matching`` and the ``finetune_classifier`` baseline on the
AN4Words meta-train classes with equal CPU budgets, then measures 5-way 1-shot and
5-shot accuracy on 600 episodes of the test classes spoken by the test speakers
(``sb-meta words evaluate``, 95% confidence interval); ``synth`` measures whether
single-word synthetic speech (``sb-meta words synth``, the test words left out)
added to meta-training helps ``protonet`` on those real test classes; ``report``
writes the ``words`` section of ``benchmarks/RESULTS.json`` / ``RESULTS.md``
(with the Meta-LSTM comparison of ``an4_study.py evaluate`` when it exists).

    export SBMETA_AN4_ROOT=/path/to/an4
    # the corpus, cut by an AN4 CTC model (recipes/AN4Words/README.md), once
    python recipes/AN4Words/an4words_prepare.py --data_folder $SBMETA_AN4_ROOT \\
        --aligner_folder ALIGNER --save_folder data/an4words
    python benchmarks/words_study.py train --corpus data/an4words --minutes 10
    python benchmarks/words_study.py synth --corpus data/an4words --minutes 10
    python benchmarks/words_study.py report

Pin it when the machine is shared: ``OMP_NUM_THREADS=1 taskset -c N python ...``;
budgets are CPU minutes of the training process (``train_budget_clock: cpu``).
"""

import argparse
import csv
import datetime
import json
import os
import pathlib
import shlex
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
OUT = REPO / "results" / "an4words_study"
RECIPE = REPO / "recipes" / "AN4Words"
STRATEGIES = ("protonet", "matching", "finetune_classifier")
#: the comparison the few-shot literature gives for scale (Parnami & Lee 2022, prototypical
#: networks on Google Speech Commands): easier 2-way and 4-way episodes
LITERATURE = "prototypical networks on Google Speech Commands: 94% at 2-way 5-shot, 83% at 4-way 5-shot"


def _say(msg):
    print(f"[words_study {datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def _run(cmd, log):
    """Run ``cmd`` (a list), its output appended to ``log``; a failure stops the study."""
    log.parent.mkdir(parents=True, exist_ok=True)
    _say(" ".join(shlex.quote(str(c)) for c in cmd))
    with open(log, "a", encoding="utf-8") as f:
        subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, check=True)


def _rel(path):
    try:
        return str(pathlib.Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def train_and_test(name, strategy, corpus, minutes, extra=(), episodes=600):
    """Train ``strategy`` into ``OUT/name`` and evaluate it on ``corpus/test.csv``;
    returns the record (reused when the same commands already ran to the end)."""
    folder = OUT / name
    root = os.environ.get("SBMETA_AN4_ROOT", "")
    train_cmd = [sys.executable, RECIPE / "train.py", RECIPE / "hparams" / f"{strategy}.yaml",
                 f"--data_folder={root}", f"--prepare_folder={corpus}", f"--output_folder={folder}",
                 f"--train_budget_minutes={minutes}", "--train_budget_clock=cpu",
                 "--number_of_epochs=100000", "--noprogressbar", *extra]
    eval_cmd = [sys.executable, "-m", "sb_meta.cli", "words", "evaluate", "--model", folder / "pretrained",
                "--data", pathlib.Path(corpus) / "test.csv", "--way", "5", "--shots", "1,5",
                "--query", "15", "--episodes", str(episodes), "--out", folder / "test.json"]
    commands = [" ".join(shlex.quote(_rel(c) if isinstance(c, pathlib.Path) else str(c)) for c in cmd[1:])
                for cmd in (train_cmd, eval_cmd)]
    commands = ["python " + commands[0], "python " + commands[1]]
    record_path = folder / "record.json"
    if record_path.is_file():
        old = json.loads(record_path.read_text())
        if old.get("commands") == commands:
            _say(f"reusing {folder}")
            return old
    _run(train_cmd, OUT / "logs" / f"{name}.log")
    _run(eval_cmd, OUT / "logs" / f"{name}.log")
    test = json.loads((folder / "test.json").read_text())
    record = {"name": name, "strategy": strategy, "minutes": minutes, "commands": commands,
              "test": test, "train_log_tail": (folder / "train_log.txt").read_text().splitlines()[-3:]}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def test_words(corpus):
    with open(pathlib.Path(corpus) / "test.csv", newline="", encoding="utf-8") as f:
        return sorted({row["word"] for row in csv.DictReader(f)})


def cmd_train(args):
    return {s: train_and_test(s, s, args.corpus, args.minutes) for s in args.strategies.split(",")}


def cmd_synth(args):
    synth = OUT / "synth_words"
    if not (synth / "train.csv").is_file():
        _run([sys.executable, "-m", "sb_meta.cli", "words", "synth", "--out", synth, "--words", str(args.words),
              "--voices", str(args.voices), "--exclude", ",".join(test_words(args.corpus)), "--quiet"],
             OUT / "logs" / "synth.log")
    return train_and_test("protonet_synth", "protonet", args.corpus, args.minutes,
                          extra=[f"--extra_train_csvs=[{synth / 'train.csv'}]"])


def _acc(rec, shot):
    r = rec["test"]["results"][str(shot)]
    return f"{100 * r['mean']:.1f} ± {100 * r['ci95']:.1f}"


def words_section():
    records = {p.parent.name: json.loads(p.read_text()) for p in sorted(OUT.glob("*/record.json"))}
    if not records:
        return None
    rows = [f"| {n} | {r['strategy']} | {r['minutes']:g} | {_acc(r, 1)} | {_acc(r, 5)} |"
            for n, r in records.items()]
    first = next(iter(records.values()))["test"]
    md = ["AN4Words: words cut from AN4 by CTC forced alignment (`recipes/AN4Words/README.md`); "
          f"5-way episodes of the {first['classes']} test classes spoken by the test speakers "
          f"({first['recordings']} recordings), {first['n_query']} queries per class, "
          f"{first['results']['5']['episodes']} episodes per shot; accuracy in % with its 95% "
          "confidence interval. Each model trained for the stated CPU minutes on one core.", "",
          "| run | strategy | CPU min | 5-way 1-shot | 5-way 5-shot |", "| --- | --- | --- | --- | --- |",
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
            "command": "python benchmarks/words_study.py train / synth / report"}


def meta_lstm_markdown(family="crdnn_ctc"):
    """The Meta-LSTM against MAML, Meta-SGD and fine-tuning on the AN4 speaker protocol
    (paired on the same draws), from ``an4_study.py evaluate``'s record."""
    path = REPO / "results" / "an4_study" / "eval" / family / "record.json"
    if not path.is_file():
        return ["Meta-LSTM comparison: not run yet (`an4_study.py evaluate ... --reference maml,metasgd,finetune`)."]
    rec = json.loads(path.read_text())
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
    path = HERE / "RESULTS.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    sec = words_section()
    if sec is None:
        raise SystemExit("words_study: nothing to report; run train first")
    from an4_study_report import finish_section

    # the runs record no machine of their own: they ran here, one thread each (see the docstring)
    sec.setdefault("machine", {"torch_threads": 1})
    results["words"] = finish_section(sec)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    subprocess.run([sys.executable, str(HERE / "report.py"), str(path)], check=True)
    _say(f"wrote {path} and RESULTS.md")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    t = sub.add_parser("train", help="train and test the metric strategies")
    t.add_argument("--corpus", required=True, help="prepared AN4Words manifests")
    t.add_argument("--strategies", default=",".join(STRATEGIES))
    t.add_argument("--minutes", type=float, default=10.0)
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("synth", help="protonet with synthetic single-word speech added")
    s.add_argument("--corpus", required=True)
    s.add_argument("--minutes", type=float, default=10.0)
    s.add_argument("--words", type=int, default=300)
    s.add_argument("--voices", type=int, default=60)
    s.set_defaults(func=cmd_synth)
    r = sub.add_parser("report", help="write the words section of RESULTS.json / RESULTS.md")
    r.set_defaults(func=cmd_report)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
