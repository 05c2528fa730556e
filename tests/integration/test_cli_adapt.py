"""``sb-meta adapt``, ``transcribe`` and ``evaluate`` on tiny data."""

import json
import pathlib

import pytest


from sb_meta.cli import main

from helpers import tiny_asr as helpers


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from sb_meta.export import export_brain

    tmp = tmp_path_factory.mktemp("cli")
    csv = helpers.make_corpus(tmp / "corpus", speakers=(("s0", 5), ("s1", 4), ("s2", 2)))
    brain, yaml_path = helpers.train_tiny_brain(tmp / "exp", csv, strategy="fomaml")
    model = export_brain(brain, tmp / "pretrained", hparams_file=yaml_path)
    return {"tmp": tmp, "csv": csv, "model": model, "rows": helpers.read_rows(csv)}


def test_transcribe(exported, capsys):
    from sb_meta.adapt import load_model

    files = [r["wav"] for r in exported["rows"][:3]]
    assert main(["transcribe", "--model", str(exported["model"])] + files) == 0
    lines = capsys.readouterr().out.splitlines()
    model = load_model(exported["model"])
    assert lines == [f"{f}\t{model.transcribe_file(f)}" for f in files]

    missing = str(exported["tmp"] / "missing.wav")
    assert main(["transcribe", "--model", str(exported["model"]), missing, files[0]]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [lines[0]]
    assert "missing.wav does not exist" in out.err


def test_adapt(exported, capsys, tmp_path):
    from sb_meta.adapt import load_model

    out = tmp_path / "adapted"
    argv = ["adapt", "--model", str(exported["model"]), "--support", str(exported["csv"]),
            "--k", "2", "--steps", "1", "--lr", "0.05", "--strategy", "finetune",
            "--task", "s1", "--task-column", "spk_id", "--seed", "4", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Exported to" in printed
    info = json.loads((out / "sbmeta.json").read_text())
    rec = info["adaptations"][-1]
    assert rec["strategy"] == "finetune" and rec["steps"] == 1 and rec["lr"] == 0.05
    ids = [s["id"] for s in rec["support"]]
    assert len(ids) == 2 and all(i.startswith("s1_") for i in ids)
    assert ", ".join(ids) in printed
    adapted = load_model(out)
    assert adapted.adaptations == info["adaptations"]
    helpers.speechbrain_asr(out).transcribe_file(exported["rows"][0]["wav"])

    # an earlier export is replaced only with --force (atomically); the same seed
    # draws the same support
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    again = json.loads((out / "sbmeta.json").read_text())["adaptations"][-1]
    assert [s["id"] for s in again["support"]] == ids


def test_adapt_peft_exports_adapters_only(exported, capsys, tmp_path):
    from sb_meta.adapt import load_model

    out = tmp_path / "adapters"
    argv = ["adapt", "--model", str(exported["model"]), "--support", str(exported["csv"]),
            "--k", "2", "--steps", "2", "--lr", "0.05", "--task", "s0", "--peft", "lora",
            "--peft-rank", "2", "--peft-targets", "*ctc_lin*", "--adapters-only",
            "--out", str(out)]
    assert main(argv) == 0
    assert "Exported the adapters only" in capsys.readouterr().out
    assert not (out / "model.ckpt").exists()
    size = sum(f.stat().st_size for f in out.iterdir())
    full = sum(f.stat().st_size for f in pathlib.Path(exported["model"]).iterdir())
    assert size < full
    base = dict(load_model(exported["model"]).named_parameters())
    params = dict(load_model(exported["model"], adapters=out).named_parameters())
    # rank-2 LoRA on ctc_lin only, trained (its up-projection starts at zero), base kept
    assert params["ctc_lin.w.adapter_up_proj.weight"].shape[1] == 2
    assert params["ctc_lin.w.adapter_up_proj.weight"].abs().sum() > 0
    assert not any("adapter" in n for n in params if "ctc_lin" not in n)
    assert params["ctc_lin.w.pretrained_module.weight"].equal(base["ctc_lin.w.weight"])

    # --peft without --adapters-only: LoRA merged into a plain SpeechBrain folder
    assert main(argv[:-3] + ["--out", str(tmp_path / "x")]) == 0
    merged = dict(helpers.speechbrain_asr(tmp_path / "x").mods.named_parameters())
    assert not any("adapter" in n for n in merged)
    assert not merged["encoder.ctc_lin.w.weight"].equal(base["ctc_lin.w.weight"])
    houlsby = [a if a != "lora" else "houlsby" for a in argv[:-3]] + ["--out", str(tmp_path / "h")]
    assert main(houlsby) == 2
    assert "add --adapters-only" in capsys.readouterr().err
    assert main([a for a in argv if a not in ("--peft", "lora")]) == 2
    assert "--adapters-only exports adapter weights: it needs --peft" in capsys.readouterr().err


def test_adapt_errors(exported, capsys, tmp_path):
    base = ["adapt", "--model", str(exported["model"]), "--support", str(exported["csv"]),
            "--steps", "1", "--out", str(tmp_path / "out")]
    assert main(base + ["--k", "3", "--task", "s2"]) == 2
    assert "--k 3 support utterances requested but spk_id='s2' has 2" in capsys.readouterr().err
    assert main(base + ["--k", "1", "--task", "nobody"]) == 2
    assert "no utterance of spk_id='nobody'" in capsys.readouterr().err
    assert main(base + ["--k", "1", "--strategy", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown strategy 'nope'" in err and "finetune" in err
    assert main(base + ["--k", "1", "--strategy", "metasgd"]) == 2
    assert "does not have" in capsys.readouterr().err
    assert main(["adapt", "--model", str(tmp_path / "none"), "--support", str(exported["csv"]),
                 "--k", "1", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate(exported, capsys, tmp_path):
    out = tmp_path / "report"
    argv = ["evaluate", "--model", str(exported["model"]), "--data", str(exported["csv"]),
            "--task-column", "spk_id", "--k", "0,1,2", "--repeats", "1",
            "--strategies", "finetune,anil", "--steps", "1", "--lr", "0.05", "--quiet",
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:2] == ["method", "k"]
    assert "skipped: task 's2' has 2 utterance(s); k=2 needs at least 3" in printed
    for name in ("results.json", "report.md", "wer_vs_k.png", "per_task.png"):
        assert (out / name).is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["strategies"] == ["finetune", "anil"]
    assert set(results["summary"]["anil"]) == {"0", "1", "2"}

    assert main(argv[:-1] + [str(tmp_path / "r2"), "--strategies", "finetune,bogus"]) == 2
    assert "unknown strategy 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_evaluate_methods_and_unsupervised(exported, capsys, tmp_path):
    out = tmp_path / "report"
    argv = ["evaluate", "--model", str(exported["model"]), "--data", str(exported["csv"]),
            "--k", "0,2", "--repeats", "1", "--methods", "full:finetune,head:finetune:ctc_lin.*,lhuc",
            "--unsupervised", "entropy", "--steps", "1", "--lr", "0.05", "--quiet", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in results["config"]["methods"]]
    assert names == ["full", "head", "lhuc", "full-entropy", "head-entropy", "lhuc-entropy"]
    assert results["config"]["methods"][1]["adapt_params"] == ["ctc_lin.*"]
    assert results["config"]["methods"][2]["addons"] == ["lhuc"]
    assert results["config"]["methods"][3]["addons"] == ["entropy"]
    assert results["config"]["methods"][5]["addons"] == ["lhuc", "entropy"]
    assert set(results["summary"]["head"]) == {"0", "2"}
