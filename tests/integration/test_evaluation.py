"""k-shot evaluation and its report (``sb_meta.evaluation``)."""

import json

import pytest


from helpers import tiny_asr as helpers


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    from sb_meta.data.manifest import write_manifest
    from sb_meta.adapt import load_model
    from sb_meta.export import export_brain

    tmp = tmp_path_factory.mktemp("evaluation")
    train_csv = helpers.make_corpus(tmp / "train")
    brain, yaml_path = helpers.train_tiny_brain(tmp / "exp", train_csv, strategy="metasgd")
    model = load_model(export_brain(brain, tmp / "pretrained", hparams_file=yaml_path))
    # evaluation speakers: two with 4 utterances, one with only 2
    test_csv = helpers.make_corpus(tmp / "test", speakers=(("t0", 4), ("t1", 4), ("t2", 2)), seed=1)
    return {"tmp": tmp, "model": model, "csv": test_csv, "write_manifest": write_manifest}


def test_evaluate_kshot(model_and_data, tmp_path):
    from sb_meta.evaluation import error_rates, evaluate_kshot, summary_table, write_report

    model, csv = model_and_data["model"], model_and_data["csv"]
    results = evaluate_kshot(model, csv, ks=(0, 1, 2), repeats=2, strategies=("finetune", "anil"),
                             steps=1, lr=0.05, seed=3, progress=False)
    assert results["tasks"] == {"t0": 4, "t1": 4, "t2": 2}
    # t2 has 2 utterances: k=2 needs 3 -> listed, with the reason
    assert [(s["task"], s["k"]) for s in results["skipped"]] == [("t2", 2)]
    assert "k=2 needs at least 3" in results["skipped"][0]["reason"]
    assert results["failed"] == []

    draws = results["draws"]
    for d in draws:
        assert not set(d["support"]) & set(d["query"])
        assert len(d["support"]) == d["k"]
        if d["k"] > 0:
            assert len(d["support"]) + len(d["query"]) == results["tasks"][d["task"]]
            assert set(d["adapted"]) == {"finetune", "anil"}
            for got in d["adapted"].values():
                assert got["delta_wer"] == pytest.approx(got["wer"] - d["unadapted"]["wer"])
    # k = 0 is scored on the query set of the matched draw (largest feasible k)
    for d in (d for d in draws if d["k"] == 0):
        match = [m for m in draws if m["task"] == d["task"] and m["repeat"] == d["repeat"]
                 and m["k"] == d["matched_k"]]
        assert len(match) == 1 and match[0]["query"] == d["query"]
        assert match[0]["unadapted"] == d["unadapted"]
    assert {(d["task"], d["matched_k"]) for d in draws if d["k"] == 0} == {
        ("t0", 2), ("t1", 2), ("t2", 1)}
    n_draws = {k: len([d for d in draws if d["k"] == k]) for k in (0, 1, 2)}
    assert n_draws == {0: 6, 1: 6, 2: 4}

    # the unadapted numbers are the model's own
    d = next(d for d in draws if d["k"] == 1)
    rows = {r["ID"]: r for r in helpers.read_rows(csv)}
    hyps = model.transcribe_waveforms([model.load_audio(rows[u]["wav"]) for u in d["query"]])
    wer, cer = error_rates(hyps, [rows[u]["wrd"] for u in d["query"]])
    assert d["unadapted"]["wer"] == pytest.approx(wer)
    assert d["unadapted"]["cer"] == pytest.approx(cer)

    summary = results["summary"]
    assert set(summary) == {"finetune", "anil"}
    assert set(summary["finetune"]) == {"0", "1", "2"}
    assert summary["finetune"]["2"]["n"] == 4 and summary["finetune"]["2"]["tasks"] == 2
    assert summary["finetune"]["0"] == summary["anil"]["0"]
    ft1 = [d["adapted"]["finetune"]["wer"] for d in draws if d["k"] == 1]
    assert summary["finetune"]["1"]["wer_mean"] == pytest.approx(sum(ft1) / len(ft1))
    per_task = results["per_task"]
    assert set(per_task) == {"t0", "t1", "t2"}
    assert "2" not in per_task["t2"]["finetune"]
    assert per_task["t0"]["anil"]["1"]["n"] == 2

    # the same seed gives the same draws
    again = evaluate_kshot(model, csv, ks=(1,), repeats=2, strategies=("finetune",), steps=1,
                           lr=0.05, seed=3, progress=False, tasks=["t0"])
    first = [d["support"] for d in draws if d["k"] == 1 and d["task"] == "t0"]
    assert [d["support"] for d in again["draws"]] == first

    # report
    paths = write_report(results, tmp_path / "report")
    assert json.loads(paths["json"].read_text())["summary"] == json.loads(json.dumps(summary))
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["tasks_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the per-task plot's points: largest k here is 2 (no k = 5), each task's own means
    from sb_meta.evaluation import task_changes

    k, changes = task_changes(results)
    assert k == 2 and set(changes) == {"finetune", "anil"}
    assert [t for t, _, _ in changes["finetune"]] == ["t0", "t1"]  # t2 was skipped at k = 2
    for task, base, delta in changes["anil"]:
        mine = [d for d in draws if d["task"] == task and d["k"] == 2]
        assert base == pytest.approx(sum(d["unadapted"]["wer"] for d in mine) / len(mine))
        assert delta == pytest.approx(sum(d["adapted"]["anil"]["delta_wer"] for d in mine) / len(mine))
    assert [t for t, _, _ in task_changes(results, k=1)[1]["anil"]] == ["t0", "t1", "t2"]
    md = paths["markdown"].read_text()
    assert "## Summary" in md and "| finetune | 2 |" in md and "| t2 | 2 | anil | 1 |" in md
    assert "k=2 needs at least 3" in md
    table = summary_table(results)
    assert table.splitlines()[0].split()[:2] == ["method", "k"]
    assert len(table.splitlines()) == 1 + 6


def test_select_on_dev_chooses_the_lowest_dev_wer_and_records_it(model_and_data):
    from sb_meta.evaluation import evaluate_kshot, select_on_dev

    model, dev = model_and_data["model"], model_and_data["csv"]
    grid = [{"name": "tiny", "strategy": "finetune", "lr": 1e-6, "steps": 1},
            {"name": "wild", "strategy": "finetune", "lr": 50.0, "steps": 2}]
    method, rec = select_on_dev(model, dev, grid, k=1, repeats=1, progress=False)
    scores = {n: c["dev_wer"] for n, c in rec["candidates"].items()}
    assert rec["candidates"]["wild"]["failed"] and scores["wild"] is None  # lr 50 diverges on every draw
    assert rec["chosen"] == method.name == "tiny"
    assert rec["dev_manifest"] == str(dev) and rec["k"] == 1
    # the candidates' dev WERs and the unadapted WER on the same draws, as the protocol gives them
    again = evaluate_kshot(model, dev, ks=(1,), repeats=1, methods=grid, progress=False)
    for name in (n for n, s in scores.items() if s is not None):
        assert scores[name] == pytest.approx(again["summary"][name]["1"]["wer_mean"])
    assert rec["unadapted_dev_wer"] == pytest.approx(again["summary"]["tiny"]["1"]["base_wer_mean"])


def test_random_parts_of_an_adaptation_are_seeded_by_the_draw(model_and_data, monkeypatch):
    """A method's random draws (augmentation, dropout) depend on the draw and the method
    only: not on the caller's generator nor on the methods that ran before it."""
    import torch

    from sb_meta.evaluation import Method, evaluate_kshot

    seen = []

    def noting(self, support, method):
        seen.append((method.name, round(float(torch.rand(())), 6)))
        return self

    monkeypatch.setattr(type(model_and_data["model"]), "adapt", noting)
    model, csv = model_and_data["model"], model_and_data["csv"]

    def run(methods, caller_seed):
        seen.clear()
        torch.manual_seed(caller_seed)
        evaluate_kshot(model, csv, ks=(1,), repeats=2, methods=methods, progress=False)
        after = float(torch.rand(()))
        torch.manual_seed(caller_seed)
        assert after == float(torch.rand(()))  # the caller's generator is left as it was
        return list(seen)

    first = run([Method(name="a", strategy="finetune"), Method(name="b", strategy="finetune")], caller_seed=1)
    assert first == run([Method(name="a", strategy="finetune"), Method(name="b", strategy="finetune")], caller_seed=2)
    alone = run([Method(name="b", strategy="finetune")], caller_seed=3)
    assert alone == [x for x in first if x[0] == "b"]
    values = [v for _, v in first]
    assert len(set(values)) == len(values)  # every draw and method its own stream


def test_only_k0_uses_every_utterance(model_and_data):
    from sb_meta.evaluation import evaluate_kshot

    results = evaluate_kshot(model_and_data["model"], model_and_data["csv"], ks=(0,), repeats=2,
                             strategies=(), progress=False)
    assert results["skipped"] == []
    for d in results["draws"]:
        assert d["matched_k"] is None and len(d["query"]) == results["tasks"][d["task"]]
    for task in results["tasks"]:  # the same utterances every repeat
        assert results["per_task"][task]["unadapted"]["0"]["wer_std"] == 0.0


def test_bad_evaluation_inputs(model_and_data, tmp_path):
    from sb_meta.evaluation import evaluate_kshot
    from sb_meta.plugins import UnknownPluginError

    model, csv = model_and_data["model"], model_and_data["csv"]
    with pytest.raises(UnknownPluginError, match="unknown strategy 'nope'"):
        evaluate_kshot(model, csv, strategies=("finetune", "nope"), progress=False)
    with pytest.raises(ValueError, match="missing column .accent."):
        evaluate_kshot(model, csv, task_column="accent", progress=False)
    with pytest.raises(ValueError, match="repeats"):
        evaluate_kshot(model, csv, repeats=0, progress=False)
    rows = helpers.read_rows(csv)
    rows[1]["wav"] = str(tmp_path / "gone.wav")
    rows[2]["wrd"] = ""
    rows[3]["wrd"] = "ABZ"
    bad = model_and_data["write_manifest"](tmp_path / "bad.csv", rows)
    with pytest.raises(ValueError) as info:
        evaluate_kshot(model, bad, ks=(0, 1), progress=False)
    msg = str(info.value)
    assert "3 bad utterance(s)" in msg and "gone.wav" in msg
    assert f"empty transcript for {rows[2]['ID']}" in msg and "'Z'" in msg


def test_draw_support_is_seeded():
    from sb_meta.evaluation import draw_support

    ids = [f"u{i}" for i in range(10)]
    a = draw_support(ids, 3, 0, "t", 0)
    assert a == draw_support(ids, 3, 0, "t", 0)
    others = [draw_support(ids, 3, *key) for key in ((1, "t", 0), (0, "t", 1), (0, "t2", 0))]
    assert any(o != a for o in others)
    with pytest.raises(ValueError):
        draw_support(ids, 11, 0, "t", 0)


def test_oracle_gate_keeps_the_adaptation_exactly_where_it_helped():
    """The ceiling of any keep-or-drop rule, on constructed draws: per draw the lower
    of the two WERs, never the adapted one where it is worse; other k and other methods
    are left out, and a method with no draw is an error that names it."""
    from sb_meta.evaluation import oracle_gate

    def draw(task, k, base, **adapted):
        return {"task": task, "k": k, "unadapted": {"wer": base},
                "adapted": {m: {"wer": w} for m, w in adapted.items()}}

    results = {"draws": [draw("a", 5, 10.0, ft=5.0, other=0.0), draw("a", 5, 20.0, ft=30.0),
                         draw("b", 5, 10.0, ft=10.0), draw("b", 2, 50.0, ft=0.0)]}
    r = oracle_gate(results, "ft", 5)
    assert r["n"] == 3 and r["helped"] == 1
    assert r["unadapted"] == pytest.approx(40.0 / 3)
    assert r["adapted"] == pytest.approx(45.0 / 3)
    assert r["oracle"] == pytest.approx(35.0 / 3)
    assert r["relative"] == pytest.approx(-0.125) and r["oracle_relative"] == pytest.approx(0.125)
    with pytest.raises(ValueError, match="'lora'"):
        oracle_gate(results, "lora", 5)


def test_select_on_dev_never_chooses_a_candidate_that_failed_on_a_dev_draw(monkeypatch):
    """A step size that diverged on one dev draw is scored on the draws that survived, so
    it can look best; it is not chosen, and its failures are recorded. When every candidate
    failed somewhere the error says why."""
    from sb_meta.evaluation import protocol

    def fake(summary, failed):
        def evaluate_kshot(*args, **kwargs):
            return {"summary": {n: {"5": {"wer_mean": w, "base_wer_mean": 12.0}} for n, w in summary.items()},
                    "failed": [{"strategy": n, "reason": "AdaptationError: adaptation diverged", "task": "t",
                                "k": 5, "repeat": 0} for n in failed]}
        return evaluate_kshot

    grid = [{"name": "steady", "lr": 0.05, "steps": 3}, {"name": "wild", "lr": 5.0, "steps": 25}]
    monkeypatch.setattr(protocol, "evaluate_kshot", fake({"steady": 11.0, "wild": 6.0}, ["wild"]))
    method, rec = protocol.select_on_dev(None, "dev.csv", grid, k=5)
    assert method.name == rec["chosen"] == "steady"
    assert rec["candidates"]["wild"]["failed"] == 1 and rec["candidates"]["steady"]["failed"] == 0
    assert rec["candidates"]["wild"]["dev_wer"] == 6.0  # recorded as measured, just not eligible
    monkeypatch.setattr(protocol, "evaluate_kshot", fake({"steady": 11.0, "wild": 6.0}, ["wild", "steady"]))
    with pytest.raises(ValueError, match="no candidate adapted on every dev draw of dev.csv .*diverged"):
        protocol.select_on_dev(None, "dev.csv", grid, k=5)


def test_evaluations_of_disjoint_task_shards_merge_into_the_whole(model_and_data):
    """Parallel processes each evaluate some tasks; merged, they equal one evaluation."""
    from sb_meta.evaluation import evaluate_kshot, merge_results

    model, csv = model_and_data["model"], model_and_data["csv"]
    kw = dict(ks=(0, 1, 2), repeats=2, strategies=("finetune",), steps=1, lr=0.05, seed=3, progress=False)
    whole = evaluate_kshot(model, csv, **kw)
    parts = [evaluate_kshot(model, csv, tasks=["t1"], **kw), evaluate_kshot(model, csv, tasks=["t0", "t2"], **kw)]
    merged = merge_results(parts)
    assert merged["tasks"] == whole["tasks"]

    def comparable(draws):  # every field but the seconds an adaptation took
        out = []
        for d in sorted(draws, key=lambda d: (d["task"], d["k"], d["repeat"])):
            adapted = {m: {k: v for k, v in a.items() if k != "adapt_seconds"} for m, a in d["adapted"].items()}
            out.append(dict(d, adapted=adapted))
        return out

    assert comparable(merged["draws"]) == comparable(whole["draws"])
    for k in ("0", "1"):
        assert merged["summary"]["finetune"][k]["n"] == whole["summary"]["finetune"][k]["n"]
        assert merged["summary"]["finetune"][k]["base_wer_mean"] == pytest.approx(
            whole["summary"]["finetune"][k]["base_wer_mean"])
    with pytest.raises(ValueError, match="evaluated tasks already merged"):
        merge_results([parts[0], parts[0]])
    other = evaluate_kshot(model, csv, tasks=["t0"], **dict(kw, seed=4))
    with pytest.raises(ValueError, match="another configuration .*seed"):
        merge_results([parts[0], other])
