"""`sb-meta demo` end to end at a tiny scale: the README's command, with settings that
shrink it (the real demo is `make demo`)."""

import json
import shlex

from sb_meta.cli import main

from helpers import readme


def test_demo_runs_end_to_end(tmp_path, capsys, monkeypatch):
    (command,) = [c for c in readme.commands() if c.startswith("sb-meta demo")]
    monkeypatch.chdir(tmp_path)
    args = shlex.split(command)[1:] + ["--quiet"]
    for setting in ("speakers=7", "utts_per_speaker=9", "epochs=1", "episodes_per_epoch=1", "k=2"):
        args += ["--set", setting]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "WER before" in out and "WER after" in out and "Demo finished" in out
    assert "paired change" in out and "95% CI" in out
    report = tmp_path / "demo_out" / "report"
    assert (report / "wer_vs_k.png").stat().st_size > 1000
    assert (report / "per_task.png").stat().st_size > 1000
    results = json.loads((report / "results.json").read_text())
    assert set(results["per_task"]) == {"spk006"}  # 7 speakers: 5 train, 1 valid, 1 test


def test_demo_rejects_unknown_settings(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--set", "epoch=3"]) == 2
    assert "unknown demo setting 'epoch'" in capsys.readouterr().err
