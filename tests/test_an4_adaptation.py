"""The AN4 adaptation benchmark (benchmarks/an4_adaptation.py) runs end to end.

The end-to-end test trains ``fomaml`` and the ``joint`` baseline on the real
AN4 corpus (``$SBMETA_AN4_ROOT``) for 0.1 minute each through the recipe,
searches the adaptation step size over 2 values on the dev speakers, adapts
from 5 utterances with 1 repeat and times adaptation, all through the
command line, then checks the structure of the JSON it writes: every key,
finite numbers, the 10 test speakers with 8 query utterances each. It asserts
nothing about WER values (a model trained for a few seconds recognises
nothing).

To stay well under 3 minutes on 2 busy cores (an adaptation of 5 utterances x
3 steps takes 2-5 s there), the step-size search uses 2 of the 6 dev speakers
and the latency is measured over 2 test speakers (``--dev-speakers 2
--latency-speakers 2``); the 5-shot evaluation itself covers all 10 test
speakers, as in the benchmark.
"""

import json
import math
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import an4_adaptation  # noqa: E402
import common  # noqa: E402

STRATEGIES = ["fomaml", "joint"]
RESULT_KEYS = {"status", "si_test_wer", "query_wer_unadapted", "query_wer_adapted",
               "relative_reduction_pct", "adaptation", "train_seconds", "outer_steps"}
LATENCY_KEYS = {"median_s", "per_speaker_s", "target_s", "met", "command", "utterances", "steps"}


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_missing_corpus_is_a_clear_skip(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("SBMETA_AN4_ROOT", raising=False)
    with pytest.raises(common.SkipSection, match="SBMETA_AN4_ROOT is not set"):
        an4_adaptation.run(quick=True)
    monkeypatch.setenv("SBMETA_AN4_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(an4_adaptation.CorpusMissing, match="missing etc/an4_train.transcription"):
        an4_adaptation.an4_root()
    assert an4_adaptation.main(["--quick", "--out", str(tmp_path / "out")]) == 2
    assert "AN4 corpus not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_end_to_end_tiny_budget(an4_root, tmp_path):
    out = tmp_path / "bench"
    json_path = tmp_path / "an4.json"
    rc = an4_adaptation.main([
        "--budget-minutes", "0.1", "--strategies", ",".join(STRATEGIES), "--out", str(out),
        "--json", str(json_path), "--repeats", "1", "--dev-repeats", "1",
        "--lr-grid", "0.02,0.05", "--an4-root", str(an4_root),
        "--dev-speakers", "2", "--latency-speakers", "2", "--pretrain-minutes", "0.1",
    ])
    assert rc == 0
    res = json.loads(json_path.read_text(encoding="utf-8"))

    assert res["status"] == "ok"
    assert res["budget_minutes_per_model"] == 0.1
    assert res["pretrain_minutes"] == 0.1 and res["training_minutes_per_model"] == 0.2
    assert res["strategies"] == STRATEGIES
    assert res["command"].startswith("python benchmarks/an4_adaptation.py --budget-minutes 0.1")
    assert res["adaptation_lr"] in (0.02, 0.05)

    # training: equal budget, measured time and outer steps per model
    training = res["training"]
    assert training["common_overrides"]["meta_batch_tasks"] == 4
    for name in STRATEGIES:
        tr = training["per_model"][name]
        assert tr["status"] == "ok" and tr["reused"] is False
        assert tr["budget_s"] == pytest.approx(6.0)
        assert tr["stopped_by_budget"] is True
        assert tr["outer_steps"] >= 1 and tr["epochs"] >= 1
        for key in ("train_seconds", "train_cpu_seconds", "total_seconds", "overrun_s"):
            assert _finite(tr[key]), (name, key)
        assert tr["train_seconds"] >= tr["budget_s"]
        assert tr["si_test"]["utterances"] == 130
        assert (out / name / "pretrained" / "sbmeta.json").is_file()
        assert (out / name / "train_log.txt").is_file()
        assert (out / name / "kshot_test" / "results.json").is_file()

    # the shared warm start: one joint model, every model starts from its export
    warm = training["shared_warm_start"]
    assert warm["status"] == "ok" and warm["key"]["strategy"] == "joint"
    assert warm["budget_s"] == pytest.approx(6.0)
    assert (out / "_pretrain" / "pretrained" / "model.ckpt").is_file()
    for name in STRATEGIES:
        init = training["per_model"][name]["key"]["init_from"]
        assert init["export_folder"] == warm["export_folder"]
        assert init["lr"] == an4_adaptation.WARM_START_LR
        assert f"--init_from={warm['export_folder']}" in training["per_model"][name]["command"]

    # --reuse takes a model folder only when it was trained with the same settings
    key = training["per_model"]["fomaml"]["key"]
    ok, record = an4_adaptation._reusable(out / "fomaml", key)
    assert ok and record["outer_steps"] == training["per_model"]["fomaml"]["outer_steps"]
    ok, why = an4_adaptation._reusable(out / "fomaml", dict(key, budget_minutes=60.0))
    assert not ok and "budget_minutes" in why

    # step size chosen on dev speakers only
    sel = res["lr_selection"]
    assert sel["chosen"] == res["adaptation_lr"]
    assert sel["grid"] == [0.02, 0.05]
    assert set(sel["table"]) == {"0.02", "0.05"}
    assert len(sel["speakers"]) == 2
    test_speakers = set(json.loads((out / "fomaml" / "kshot_test" / "results.json")
                                   .read_text())["tasks"])
    assert not set(sel["speakers"]) & test_speakers
    for row in sel["table"].values():
        assert set(row["per_model"]) == set(STRATEGIES)
        assert _finite(row["mean_adapted_wer"])

    # the evaluation: 10 test speakers, 5 support + 8 query utterances each
    ev = res["evaluation"]
    assert ev["test_speakers"] == 10
    assert ev["test_utterances"] == 130
    assert ev["support_utterances"] == 5 and ev["steps"] == 3 and ev["repeats"] == 1
    assert ev["query_utterances_per_speaker"] == [8] * 10

    for name in STRATEGIES:
        row = res["results"][name]
        assert RESULT_KEYS <= set(row), name
        for key in ("si_test_wer", "query_wer_unadapted", "query_wer_adapted",
                    "relative_reduction_pct", "train_seconds"):
            assert _finite(row[key]), (name, key)
        assert row["outer_steps"] == training["per_model"][name]["outer_steps"]
        kshot = res["details"][name]["kshot_test"]
        assert kshot["speakers"] == 10 and kshot["draws"] == 10
        assert kshot["query_utterances_per_speaker"] == [8] * 10
        assert kshot["failed_adaptations"] == 0
        met = res["targets"]["met"][name]
        assert isinstance(met["si_test_wer"], bool) and isinstance(met["adaptation_gain"], bool)
    assert _finite(res["results"]["fomaml"]["adapted_wer_minus_joint"])
    assert isinstance(res["targets"]["met"]["fomaml"]["beats_joint"], bool)
    assert res["targets"]["met"]["joint"]["beats_joint"] is None
    assert res["details"]["fomaml"]["vs_joint"]["draws"] == 10
    assert isinstance(res["targets"]["any_meta_strategy_meets_all"], bool)

    # latency, at top level as benchmarks/run.py expects
    lat = res["adaptation_latency_s"]
    assert LATENCY_KEYS <= set(lat)
    assert lat["status"] == "ok" and lat["target_s"] == 2.0
    assert lat["utterances"] == 5 and lat["steps"] == 3
    assert len(lat["per_speaker_s"]) == 2 and all(_finite(x) and x > 0 for x in lat["per_speaker_s"])
    assert _finite(lat["median_s"]) and isinstance(lat["met"], bool)
