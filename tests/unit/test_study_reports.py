"""The AN4 and AN4Words study reports render every section from the records their
steps write (constructed here), so a long study does not end in a KeyError."""

import json
import pathlib
import re

from studies.an4 import an4_report, an4_study
from studies.words import words_study

ROOT = pathlib.Path(__file__).resolve().parents[2]


def summary(base, adapted, worse=()):
    return {"base_wer_mean": base, "wer_mean": adapted, "delta_wer_mean": adapted - base,
            "delta_ci": [adapted - base - 1.0, adapted - base + 1.0], "relative": (base - adapted) / base,
            "relative_ci": [0.01, 0.2], "worse_tasks": list(worse), "tasks": 10,
            "worse_draws": len(worse), "n": 10}


def trained(wer, steps=100, params=3.6e6):
    return {"family": "crdnn_ctc", "command": "python recipes/AN4/train.py ...", "train_minutes": 10.0,
            "budget": {"epochs": 3}, "outer_steps": steps, "epochs": 3,
            "parameters": int(params), "test": {"wer": wer, "cer": wer / 2},
            "curve": [{"minutes": 10.0, "wer": wer + 5, "cer": 5.0, "epoch": 1, "dev_wer": wer + 6}],
            "machine": {"cores": 2}}


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_every_an4_study_section_renders(tmp_path, monkeypatch):
    out = tmp_path / "an4_study"
    monkeypatch.setattr(an4_report, "OUT", out)
    monkeypatch.setattr(an4_report, "DOCS", tmp_path / "docs")
    (tmp_path / "docs").mkdir()
    write(out / "base" / "crdnn_ctc" / "record.json", trained(11.0))
    for name in ("joint", "fomaml"):
        write(out / "meta" / "crdnn_ctc" / name / "record.json", trained(12.0))
    method = {"strategy": "finetune", "lr": 0.02, "steps": 3, "adapt_params": None}
    ev = {"family": "crdnn_ctc", "ks": [0, 1, 5], "repeats": 3, "command": "python studies/an4/an4_study.py evaluate",
          "chosen": {n: {"method": method} for n in ("base", "joint", "fomaml")},
          "summary": {n: {"adapted": {"5": summary(12.0, 10.0, ["spk1"])}} for n in ("base", "joint", "fomaml")},
          "meta_vs_joint": {"fomaml": {k: {"delta": -0.5, "delta_ci": [-1.0, -0.1]} for k in ("1", "5")}}}
    write(out / "eval" / "crdnn_ctc" / "record.json", ev)
    long_method = dict(method, lr=0.1, steps=25)
    write(out / "eval" / "crdnn_ctc_long" / "record.json",
          dict(ev, grid="long", chosen={"base": {"method": long_method, "selection": {
              "candidates": {"all_lr0.1_s25": {}, "all_lr0.1_s50": {}}}}},
               summary={"base": {"adapted": {"5": summary(12.0, 10.0, ["spk1"])}}}, meta_vs_joint={}))
    lhuc_method = dict(method, lr=2.0, addons=["lhuc"])  # LHUC-only adaptation (the lhuc grid)
    write(out / "eval" / "crdnn_ctc@lhuc" / "record.json",
          dict(ev, grid="lhuc", chosen={"base": {"method": lhuc_method, "selection": {"candidates": {}}}},
               summary={"base": {"adapted": {"5": summary(12.0, 11.0, [])}}}, meta_vs_joint={}))
    write(out / "eval" / "crdnn_ctc@seed1" / "record.json",  # other test draws, one adaptation failed
          dict(ev, seed=1, failed={"fomaml": [{"task": "spk1", "k": 5, "repeat": 0, "strategy": "adapted",
                                               "reason": "AdaptationError: adaptation diverged"}]}))
    held = tmp_path / "an4_study_heldout20"  # a held-out study: its own base, its own pool
    write(held / "base" / "crdnn_ctc" / "record.json", dict(trained(11.0, steps=900), train_minutes=60.0))
    write(held / "eval" / "crdnn_ctc@lexicon" / "record.json",
          dict(ev, heldout=20, decoder="lexicon", summary={"base": ev["summary"]["base"]}, meta_vs_joint={},
               oracle_gate={"base": {"unadapted": 12.0, "adapted": 12.5, "oracle": 11.4, "relative": -0.04,
                                     "oracle_relative": 0.05, "helped": 9, "n": 120}}))
    write(held / "eval" / "crdnn_ctc@long@lexicon" / "record.json",
          dict(ev, heldout=20, decoder="lexicon", grid="long", summary={"base": ev["summary"]["base"]},
               meta_vs_joint={}, chosen={"base": {"method": long_method, "selection": {"candidates": {}}}}))
    entry = {"base_wer_mean": 12.0, "delta_wer_mean": -1.0}
    write(held / "eval" / "crdnn_ctc@lexicon" / "base" / "results.json",
          {"per_task": {"spk1": {"adapted": {"5": entry}}, "spk2": {"adapted": {"5": dict(entry, delta_wer_mean=2.0)}}}})
    write(held / "eval" / "crdnn_ctc" / "methods_base@lexicon.json",
          {"family": "crdnn_ctc", "model": "base", "decoder": "lexicon", "command": "python studies/an4/an4_study.py --heldout 20 methods",
           "summary": {"full+distill": {"5": summary(12.0, 11.0)}}})
    write(out / "eval" / "crdnn_ctc" / "guard_long.json",
          {"family": "crdnn_ctc", "grid": "long", "repeats": 2, "command": "python studies/an4/an4_study.py guard",
           "models": {"base": {"method": long_method, "kept": 7, "checked": 20, "summary": {
               "adapted": {"5": summary(12.0, 13.0)}, "adapted+guard": {"5": summary(12.0, 10.0)}}}}})
    write(out / "eval" / "crdnn_ctc" / "methods_base.json",
          {"family": "crdnn_ctc", "model": "base", "command": "python studies/an4/an4_study.py methods",
           "summary": {"full": {"5": summary(12.0, 10.0)}, "full+aug": {"5": summary(12.0, 9.5)}}})
    write(out / "eval" / "crdnn_ctc" / "channels.json",
          {"channels": ["clean", "telephone"], "command": "python studies/an4/an4_study.py channels",
           "results": {"base": {"per_channel": {"clean": {"unadapted": 10.0, "adapted": 9.0, "won_back": None},
                                                "telephone": {"unadapted": 30.0, "adapted": 20.0, "won_back": 0.5}}}}})
    write(out / "eval" / "crdnn_ctc" / "channels@lexicon@seed1.json",  # the base alone, other draws and decoding
          {"channels": ["telephone"], "command": "python studies/an4/an4_study.py channels --strategies ''",
           "decoder": "lexicon", "seed": 1, "repeats": 2,
           "results": {"base": {"per_channel": {"telephone": {"unadapted": 25.0, "adapted": 20.0, "won_back": 0.25}}}}})
    write(out / "eval" / "crdnn_ctc" / "channels@norm.json",  # the layer norms only: the row names the update
          {"channels": ["telephone"], "command": "python studies/an4/an4_study.py channels --grid norm", "grid": "norm",
           "results": {"base": {"method": dict(method, lr=0.5, adapt_params=["enc.CNN.*norm*"]),
                                "per_channel": {"telephone": {"unadapted": 25.0, "adapted": 15.0, "won_back": 0.5}}}}})
    write(out / "eval" / "selection" / "channels_base@lexicon.json", {"chosen": "all_lr0.02_s3"})  # no table
    write(out / "eval" / "crdnn_ctc" / "unsup_channels.json",
          {"family": "crdnn_ctc", "ks": [0, 5, 20], "repeats": 2, "command": "python studies/an4/an4_study.py unsup",
           "chosen": {"pseudo": {"method": {"lr": 0.1, "steps": 3}}},
           "summary": {"unsup-pseudo": {"5": summary(12.0, 10.0), "20": summary(12.0, 11.0)}},
           "per_task": {"telephone": {"unsup-pseudo": {"20": summary(40.0, 30.0)}}}})
    write(out / "transfer" / "dann.json", {"command": "python studies/an4/an4_study.py dann",
                                           "records": {"joint": trained(12.0), "joint_dann": trained(11.5)}})
    write(out / "transfer" / "distill.json",
          {"command": "python studies/an4/an4_study.py distill", "teacher": {"parameters": 3.6e6, "test": {"wer": 11.0, "cer": 5.0}},
           "records": {"student_alone": trained(20.0, params=1e6), "student_distilled": trained(18.0, params=1e6)}})
    row = {"label": "float", "size_mb": 14.0, "gzip_mb": 13.0, "size_ratio": 1.0, "rtf": 0.05, "rtf_ratio": 1.0,
           "wer": 11.0, "wer_change": 0.0, "cer": 5.0}
    write(out / "transfer" / "compression.json", {"command": "python benchmarks/compression.py ...",
                                                  "rows": [row, dict(row, label="int8", size_ratio=0.3)]})

    base = an4_report.base_section()
    assert "| crdnn_ctc | 3.60M |" in base["markdown"] and (tmp_path / "docs" / "an4_learning_curves.png").is_file()
    assert [t[2] for t in base["targets"]] == [True, False]  # 11% meets 12%, misses 7.6%
    study = an4_report.study_section()
    assert "| fomaml | 3 epochs, 100 steps, 10 min | 12.0 | 10.0 | -2.0 [-3.0, -1.0] |" in study["markdown"]
    assert "| base | telephone | 30.0 | 20.0 |  |  | 50% |" in study["markdown"]
    assert "among the long grid's candidates (all_lr0.1_s25, all_lr0.1_s50)" in study["markdown"]
    assert "finetune, lr 0.1, 25 steps, all |" in study["markdown"]
    assert "finetune, lr 2.0, 3 steps, lhuc only |" in study["markdown"]
    assert "| base | lr 0.1, 25 steps | 12.0 | 13.0 |" in study["markdown"] and "| 7/20 |" in study["markdown"]
    assert any("base + guard" in t[0] for t in study["targets"])
    assert "| unsup-pseudo (lr 0.1, <= 3 steps) | 20 | 12.0 | 11.0 |" in study["markdown"]
    assert "| telephone 40.0 -> 30.0 |" in study["markdown"]
    assert any("fomaml beats joint" in t[0] and t[2] for t in study["targets"])
    # draws of another seed are named as such, in the table's text and in their targets
    assert study["markdown"].count("(draw seed 1: other draws") == 2  # an evaluation's and the channels'
    assert "channel, 2 draws per task (draw seed 1: other draws" in study["markdown"]
    assert "| base | telephone | 25.0 | 20.0 |  |  | 25% |" in study["markdown"]
    assert "| base (finetune, lr 0.5, 3 steps, enc.CNN.*norm*) | telephone | 25.0 | 15.0 |  |  | 50% |" in study["markdown"]
    assert sum("(draw seed 1)" in t[0] for t in study["targets"]) == 4
    # a held-out study's table names its 30 speakers and its own base's training; so do its targets
    assert study["markdown"].count("30 unseen speakers: the 10 AN4 test speakers and 20 training") == 3  # + long, methods
    assert "| base | 3 epochs, 900 steps, 60 min | 12.0 | 10.0 |" in study["markdown"]
    assert sum("30 speakers with 20 held out" in t[0] for t in study["targets"]) == 2  # 3-step and long grid
    assert study["markdown"].count("Adaptations that failed on test draws") == 1
    assert "left out of the figures above: fomaml 1 (AdaptationError: adaptation diverged)." in study["markdown"]
    # the held-out study's methods table names its pool and its decoding
    assert ("same draws, on 30 unseen speakers: the 10 AN4 test speakers and 20 training speakers left out of "
            "this study's base (`--heldout`) (unadapted query WER 12.0); every model decoded") in study["markdown"]
    assert "| full+distill |  | 11.0 | -1.0" in study["markdown"]
    # the held-out study's speakers one by one, in a figure next to report.md
    assert study["markdown"].count("![per speaker](an4_heldout20_speakers.png)") == 1  # not the long grid's
    assert (tmp_path / "docs" / "an4_heldout20_speakers.png").read_bytes()[:4] == b"\x89PNG"
    # the ceiling of any keep-or-drop rule, where the record has it (older records do not)
    assert study["markdown"].count("keeps each model's 5-shot adaptation only on") == 1
    assert "base 12.0 -> 11.4 (5.0%, 9/120 draws helped)." in study["markdown"]
    transfer = an4_report.transfer_section()
    for text in ("| joint_dann | 3 epochs, 100 steps, 10 min | 11.5 |", "| student_distilled | 1.00M (28%)",
                 "| int8 |", "| full | -2.0 [-3.0, -1.0] | -2.5 [-3.5, -1.5] |"):
        assert text in transfer["markdown"], text


def test_the_words_section_renders(tmp_path, monkeypatch):
    monkeypatch.setattr(words_study, "OUT", tmp_path / "an4words_study")
    monkeypatch.setattr(words_study, "REPO", tmp_path)
    test = {"classes": 12, "recordings": 530, "n_query": 15,
            "results": {"1": {"mean": 0.7, "ci95": 0.01, "episodes": 600}, "5": {"mean": 0.86, "ci95": 0.006, "episodes": 600}}}
    for name in ("protonet", "protonet_synth"):
        write(tmp_path / "an4words_study" / name / "study.json",
              {"name": name, "strategy": "protonet", "epochs": 5, "training": trained(0.0),
               "commands": ["python a", "sb-meta b"], "test": test})
    sec = words_study.words_section()
    assert "| protonet | protonet | 3 | 10 | 70.0 ± 1.0 | 86.0 ± 0.6 |" in sec["markdown"]
    assert "changed protonet's 5-shot accuracy by +0.0 points (within the two intervals)" in sec["markdown"]
    assert sec["targets"][0][2] is True
    assert "Meta-LSTM comparison: not run yet" in sec["markdown"]


def test_the_training_column_states_epochs_steps_minutes_and_the_inner_loop():
    assert an4_report._training_record(trained(12.0)) == "3 epochs, 100 steps, 10 min"
    sat = dict(trained(12.0), command="python recipes/AN4/train.py ... --meta_addons=[lhuc] --valid_adapt=True")
    assert an4_report._training_record(sat) == (
        "3 epochs, 100 steps, 10 min, inner loop on LHUC scales, kept on the adapted dev WER")
    norm = dict(sat, command="python recipes/AN4/train.py ... '--adapt_params=[enc.CNN.*norm*]'")
    assert an4_report._training_record(norm) == "3 epochs, 100 steps, 10 min, inner loop on enc.CNN.*norm*"


def test_sections_are_finished_with_commands_as_typed(monkeypatch):
    from studies import common

    sec = {"markdown": f"`python {common.REPO}/recipes/AN4/train.py --data_folder=/data/an4 --output_folder={common.REPO}/x`"}
    out = an4_report.finish_section(sec)
    assert out["markdown"] == "`python recipes/AN4/train.py --data_folder=$SBMETA_AN4_ROOT --output_folder=x`"
    assert out["mode"] == "full"


def study_commands():
    """``python studies/...`` commands shown by the README and the studies' write-ups."""
    shown = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if doc.name == "report.md":  # generated from committed results: the commands of their code
            continue
        text = doc.read_text().replace("\\\n", " ")
        shown += re.findall(r"python (studies/\w+/\w+\.py) ([^`\n]+)", text)
    return shown


def test_every_study_command_the_docs_show_parses():
    """A step renamed or an option dropped would leave the docs showing commands that no
    longer run."""
    import shlex

    parsers = {"studies/an4/an4_study.py": an4_study.build_parser()}
    shown = study_commands()
    assert sum(script == "studies/an4/an4_study.py" for script, _ in shown) >= 10
    for script, line in shown:
        if script in parsers:
            args = parsers[script].parse_args(shlex.split(line, comments=True))
            assert callable(args.func), line


def test_cached_evaluations_are_reused_only_for_the_same_key(tmp_path):
    from sb_meta.evaluation import Method

    plain = Method(name="adapted", strategy="finetune", lr=0.1, steps=25).as_dict()
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"config": {"cache_key": {"method": plain, "repeats": 2}}}))
    assert an4_study._cached(path, {"method": plain, "repeats": 2}) is not None
    assert an4_study._cached(path, {"method": dict(plain, lr=0.2), "repeats": 2}) is None
    assert an4_study._cached(path, {"method": dict(plain, guard=True), "repeats": 2}) is None


def test_grid_and_decoder_results_never_take_another_models_name():
    names = {"base", "joint", "fomaml", "joint_long", "fomaml_long", "base_cmvn"}
    for grid in an4_study.GRIDS:
        for decoder in an4_study.DECODERS:
            suffix = an4_study.grid_suffix(grid, decoder)
            assert not {n + suffix for n in names} & names - {n for n in names if not suffix}
    assert an4_study.grid_suffix("short") == "" and an4_study.grid_suffix("long") == "@long"


def test_a_heldout_study_has_its_own_folder_flag_and_evaluation_pool(tmp_path, monkeypatch):
    from sb_meta.data.manifest import read_manifest, write_manifest

    row = {"duration": "1.0", "wav": "x.sph", "wrd": "YES"}
    write_manifest(tmp_path / "test.csv", [dict(row, ID=f"t{i}", spk_id="ftst") for i in range(2)])
    write_manifest(tmp_path / "heldout.csv", [dict(row, ID=f"h{i}", spk_id="mhld") for i in range(3)])
    assert an4_study.eval_manifest(tmp_path) == tmp_path / "test.csv"  # the plain study: test speakers
    monkeypatch.setattr(an4_study, "HELDOUT", 4)
    both = an4_study.eval_manifest(tmp_path)
    assert {r["spk_id"] for r in read_manifest(both)} == {"ftst", "mhld"} and len(read_manifest(both)) == 5
    # a held-out manifest prepared again (newer than the pool) is picked up
    import os

    write_manifest(tmp_path / "heldout.csv", [dict(row, ID="h9", spk_id="mnew")])
    os.utime(both, ns=(0, 0))
    assert {r["spk_id"] for r in read_manifest(an4_study.eval_manifest(tmp_path))} == {"ftst", "mnew"}
    assert an4_study._cmd() == "python studies/an4/an4_study.py --heldout 4 "
    # steps whose records the report reads from the plain study refuse the flag
    monkeypatch.setattr(an4_study, "HELDOUT", 0)
    monkeypatch.setattr(an4_study, "OUT", an4_study.OUT)
    try:
        an4_study.main(["--heldout", "20", "report"])
    except SystemExit as exc:
        assert "--heldout is for base, meta" in str(exc)
    else:
        raise AssertionError("report --heldout should refuse")
    assert an4_study.OUT.name == "an4_study" and an4_study.HELDOUT == 0


def test_studies_import_only_the_public_api():
    """A study uses sb_meta's public API and the recipes: no ``sb_meta...._private`` name,
    and nothing from ``benchmarks/`` (the performance suite is not a study's library)."""
    import ast

    for path in sorted((ROOT / "studies").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] in ("sb_meta", "sb_meta_plugins"):
                    assert not any(p.startswith("_") for p in parts), f"{path.relative_to(ROOT)}: {name}"
                assert parts[0] not in ("common", "report", "run"), f"{path.relative_to(ROOT)}: {name}"


def test_benchmarks_hold_the_performance_suite_only():
    suite = {"run.py", "report.py", "common.py", "meta_step.py", "memory.py", "peers.py", "bench_ctc.py",
             "ddp.py", "compression.py", "maml_vs_fomaml.py", "RESULTS.json", "RESULTS.md",
             "hf_models.py", "hf_models.json", "HF_MODELS.md"}
    assert {p.name for p in (ROOT / "benchmarks").iterdir() if p.is_file()} <= suite
