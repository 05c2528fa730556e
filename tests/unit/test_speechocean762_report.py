"""The speechocean762 study's report renders every section from the records its steps
write (constructed here, no training), and every study command its docs show parses."""

import json
import pathlib
import re
import shlex

import pytest

from studies.speechocean762 import study

ROOT = pathlib.Path(__file__).resolve().parents[2]


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def epoch_line(epoch, steps, wer, cer):
    return (f"epoch: {epoch}, lr: 1.00e-03 - train loss: 1.00, train minutes: {5.0 * epoch:.2f}, "
            f"train steps: {steps} - valid loss: 1.50, valid WER: {wer}, valid CER: {cer}")


def summary(base, adapted, worse=()):
    return {"base_wer_mean": base, "wer_mean": adapted, "relative": (base - adapted) / base,
            "relative_ci": [0.01, 0.2], "worse_tasks": list(worse), "tasks": 4}


def test_the_report_renders_bases_unfinished_runs_and_evaluations(tmp_path, monkeypatch):
    out, docs = tmp_path / "so762", tmp_path / "docs"
    monkeypatch.setattr(study, "OUT", out)
    monkeypatch.setattr(study, "DOCS", docs)
    finished = out / "base" / "base_an4"
    log = [epoch_line(1, 465, 95.0, 60.0), epoch_line(2, 930, 90.0, 50.0)]
    write(finished / "train_log.txt", "\n".join(log) + "\n")
    write(finished / "record.json", {"command": "python recipes/SpeechOcean762/train.py x.yaml --init_from=/r/so762/an4_base/pretrained",
                                     "epochs": 2, "optimizer_steps": 930, "train_minutes": 10.0,
                                     "test": {"wer": 88.0, "cer": 49.0}, "train_log": log})
    write(out / "score" / "base_an4.json",
          {d: {"test": {g: {"wer": w, "cer": w / 2} for g, w in (("all", 80.0), ("child", 85.0), ("adult", 75.0))}}
           for d in ("greedy", "lexicon")})
    running = out / "base" / "base_an4_adult"
    write(running / "train_log.txt", epoch_line(1, 292, 99.0, 80.0) + "\n")
    write(running / "command.txt", "python recipes/SpeechOcean762/train.py x.yaml --number_of_epochs=24\n")
    summ = {"full": {"0": summary(80.0, 80.0), "5": summary(80.0, 72.0, ["s1"])}}
    write(out / "eval" / "lexicon" / "base_an4" / "speaker_k5" / "results.json",
          {"summary": summ, "tasks": ["s1", "s2", "s3", "s4"],
           "config": {"repeats": 2, "selection": {"full": {"full_lr0.02_s3": {"dev_wer": 70.0},
                                                            "full_lr0.05_s3": {"dev_wer": 75.0}}}},
           "cost": {"adaptations": 8, "adaptations_per_cpu_minute": 12.5}})
    write(out / "eval" / "lexicon" / "base_an4" / "speaker_k5" / "report.md", "# the evaluation's report\n")
    study.cmd_report(None)
    text = (docs / "report.md").read_text()
    assert "| `base_an4` | AN4 (`an4_base`) | 2 | 930 | 10.0 | 90.0 | 80.0 / 85.0 / 75.0 | 80.0 / 85.0 / 75.0 |" in text
    assert "| `base_an4_adult` | 1 of 24 | 292 | 99.00 | 80.00 |" in text
    assert (docs / "bases_dev_curve.png").stat().st_size > 0
    assert "| full | full_lr0.02_s3 | 5 | 80.00 -> 72.00 | +10.0% [+1.0, +20.0] | 1/4 |" in text
    assert (docs / "speaker_k5" / "base_an4" / "results.json").is_file()
    # the copied evaluation report is in the page's table of contents (Sphinx refuses an orphan page)
    assert (docs / "speaker_k5" / "base_an4" / "report.md").is_file()
    assert "```{toctree}" in text and "\nspeaker_k5/base_an4/report\n" in text


def test_every_speechocean762_command_the_docs_show_parses():
    """A step renamed or an option dropped would leave the write-up showing commands that no
    longer run."""
    parser = study.build_parser()
    shown = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if doc.name == "report.md":
            continue
        text = doc.read_text().replace("\\\n", " ")
        shown += re.findall(r"python studies/speechocean762/study\.py ([^`\n]+)", text)
    for line in shown:
        args = parser.parse_args(shlex.split(line, comments=True))
        assert args.command in study.COMMANDS, line


def evaluation(draws):
    """A results.json of one method ``init`` from ``(task, k, repeat, query, unadapted, adapted)``."""
    return {"draws": [{"task": t, "k": k, "repeat": r, "support": [f"{t}_s{r}"] * k, "query": q,
                       "unadapted": {"wer": u}, "adapted": {"init": {"wer": a}} if k else {}}
                      for t, k, r, q, u, a in draws],
            "summary": {}, "tasks": sorted({d[0] for d in draws}), "config": {"repeats": 2}}


def test_initialisations_are_paired_with_joint_on_the_same_draws(tmp_path, monkeypatch):
    out, docs = tmp_path / "so762", tmp_path / "docs"
    monkeypatch.setattr(study, "OUT", out)
    monkeypatch.setattr(study, "DOCS", docs)
    q = ["u1", "u2"]
    joint = [(t, k, r, q, 50.0, 40.0) for t in ("s1", "s2") for k in (0, 5) for r in (0, 1)]
    # fomaml: 4 points better than joint after adaptation on s1, 2 worse on s2; equal unadapted
    fomaml = [(t, k, r, q, 50.0, 36.0 if t == "s1" else 42.0) for t, k, r, *_ in joint]
    folder = out / "eval" / "lexicon"
    write(folder / "joint" / "init_k5" / "results.json", evaluation(joint))
    write(folder / "fomaml" / "init_k5" / "results.json", evaluation(fomaml))
    paired = study.paired_against("init_k5", "joint")
    assert list(paired) == ["fomaml"]
    e = paired["fomaml"]["5"]
    assert (e["base_mean"], e["mean"], e["worse_tasks"], e["tasks"]) == (40.0, 39.0, ["s2"], 2)
    assert abs(e["relative"] - 1 / 40) < 1e-9
    assert paired["fomaml"]["0"]["delta"] == 0.0
    study.cmd_report(None)
    text = (docs / "report.md").read_text()
    assert "| `fomaml` | 5 | 40.00 -> 39.00 | +2.5% [" in text and "| 1/2 |" in text
    assert json.loads((docs / "init_k5" / "paired_against_joint.json").read_text())["fomaml"]["5"]["tasks"] == 2
    # another query for one draw: not the same draws, refused by name
    fomaml[0] = fomaml[0][:3] + (["u9"],) + fomaml[0][4:]
    write(folder / "fomaml" / "init_k5" / "results.json", evaluation(fomaml))
    with pytest.raises(SystemExit, match="fomaml and joint under init_k5"):
        study.paired_against("init_k5", "joint")


def test_the_children_section_gives_the_gap_and_the_share_won_back(tmp_path, monkeypatch):
    out, docs = tmp_path / "so762", tmp_path / "docs"
    monkeypatch.setattr(study, "OUT", out)
    monkeypatch.setattr(study, "DOCS", docs)
    write(out / "score" / "base_an4_e10.json",
          {"lexicon": {"test": {g: {"wer": w} for g, w in (("all", 74.0), ("child", 72.0), ("adult", 76.0))}}})
    paired = {"relative": 0.036, "relative_ci": [0.01, 0.06], "worse_tasks": ["c1"], "tasks": 4}
    setting = {"chosen": {"name": "ep3_lr0.01"}, "paired": paired,
               "draws": [{"test_wer": 80.0}, {"test_wer": 82.0}]}
    write(out / "children" / "lexicon" / "base_an4_adult_e10" / "results.json",
          {"dev_unadapted": 87.0, "test_unadapted": 84.0, "settings": {"supervised_50": setting}})
    study.cmd_report(None)
    text = (docs / "report.md").read_text()
    assert "`base_an4_e10`, trained with the training children too: 72.00; the gap is 12.00 points." in text
    assert "| supervised_50 | ep3_lr0.01 | 81.00 | +3.6% [+1.0, +6.0] | 1/4 | 25% |" in text
    assert (docs / "children" / "base_an4_adult_e10_lexicon.json").is_file()


def test_a_new_machine_reports_the_committed_results_beside_its_own(tmp_path, monkeypatch):
    """results/so762/ is lost with the machine; what was committed under docs/ stays in the
    report, and a new run of the same name replaces its committed copy."""
    out, docs = tmp_path / "so762", tmp_path / "docs"
    monkeypatch.setattr(study, "OUT", out)
    monkeypatch.setattr(study, "DOCS", docs)
    log = [epoch_line(1, 465, 95.0, 60.0)]
    write(docs / "records" / "base_an4_e10.json", {"command": "python recipes/SpeechOcean762/train.py x.yaml",
                                                  "epochs": 1, "optimizer_steps": 465, "train_minutes": 6.0,
                                                  "test": {"wer": 90.0}, "train_log": log})
    write(docs / "records" / "score_base_an4_e10.json",
          {"lexicon": {"test": {g: {"wer": w} for g, w in (("all", 74.0), ("child", 72.0), ("adult", 76.0))}}})
    write(out / "base" / "base_an4_e10_rb" / "record.json",
          {"command": "python recipes/SpeechOcean762/train.py x.yaml", "epochs": 1, "optimizer_steps": 465,
           "train_minutes": 3.0, "test": {"wer": 91.0}, "train_log": log})
    write(docs / "records" / "an4_base_e24.json", {"command": "python recipes/AN4/train.py x.yaml", "epochs": 24,
                                                  "optimizer_steps": 2832, "train_minutes": 44.4,
                                                  "test": {"wer": 14.2}, "train_log": log})
    write(out / "an4_base_e24_rb" / "record.json", {"command": "python recipes/AN4/train.py x.yaml", "epochs": 20,
                                                    "optimizer_steps": 2360, "train_minutes": 24.8,
                                                    "test": {"wer": 12.5}, "train_log": log})
    (out / "an4_base_e24").symlink_to("an4_base_e24_rb")  # the old name, read by `base --an4-epochs 24`
    summ = {"norm": {"0": summary(80.0, 80.0), "5": summary(80.0, 79.0)}}
    committed = {"summary": summ, "tasks": ["s1"], "config": {"repeats": 2}}
    write(docs / "speaker_k5_norm" / "base_an4_e10" / "results.json", committed)
    write(docs / "speaker_k5_norm" / "base_an4_e10" / "report.md", "# committed\n")
    write(docs / "speaker_k5_head" / "base_an4_e10" / "results.json", committed)
    write(docs / "speaker_k5_head" / "base_an4_e10" / "report.md", "# committed, replaced\n")
    new = {"summary": {"head": {"5": summary(80.0, 60.0)}}, "tasks": ["s1"], "config": {"repeats": 2}}
    write(out / "eval" / "lexicon" / "base_an4_e10" / "speaker_k5_head" / "results.json", new)
    write(out / "eval" / "lexicon" / "base_an4_e10" / "speaker_k5_head" / "report.md", "# new\n")
    q = ["u1"]
    write(docs / "init_k5" / "joint" / "results.json", evaluation([("s1", 5, 0, q, 50.0, 40.0)]))
    write(docs / "init_k5" / "fomaml" / "results.json", evaluation([("s1", 5, 0, q, 50.0, 38.0)]))
    write(docs / "children" / "base_an4_adult_e10_lexicon.json",
          {"dev_unadapted": 87.0, "test_unadapted": 84.0, "settings": {}})
    study.cmd_report(None)
    text = (docs / "report.md").read_text()
    assert "| `base_an4_e10` | random weights | 1 | 465 | 6.0 | 95.0 | - | 74.0 / 72.0 / 76.0 |" in text
    assert "| `base_an4_e10_rb` | random weights | 1 | 465 | 3.0 | 95.0 | - | - |" in text
    assert "| `an4_base_e24` | random weights | 24 | 2832 | 44.4 | 95.0 | AN4 test: 14.2 | - |" in text
    assert "| `an4_base_e24_rb` | random weights | 20 | 2360 | 24.8 | 95.0 | AN4 test: 12.5 | - |" in text
    assert "| norm | - | 5 | 80.00 -> 79.00 |" in text and "| head | - | 5 | 80.00 -> 60.00 |" in text
    assert (docs / "speaker_k5_norm" / "base_an4_e10" / "report.md").read_text() == "# committed\n"
    assert (docs / "speaker_k5_head" / "base_an4_e10" / "report.md").read_text() == "# new\n"
    assert "| `fomaml` | 5 | 40.00 -> 38.00 |" in text
    assert "`base_an4_e10`, trained with the training children too: 72.00; the gap is 12.00 points." in text


def test_reptile_takes_its_own_inner_steps():
    """A strategy's own settings override the meta-training's (both set inner_steps)."""
    assert study.meta_overrides("reptile")["inner_steps"] == 2
    assert study.meta_overrides("joint")["inner_steps"] == 1
    assert study.meta_overrides("reptile")["meta_strategy"] == "reptile"
