"""The adaptation guard (``sb_meta.adapt.safeguard``): leave-one-out over the support."""


import pytest
import torch


from helpers import tiny_asr as h
from sb_meta.adapt import Method, Support

pytestmark = pytest.mark.usefixtures("one_thread")


setup = h.exported_fixture("guard")


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def support(setup, n=4):
    rows = setup["rows"][:n]
    return [r["wav"] for r in rows], [r["wrd"] for r in rows], [r["ID"] for r in rows]


def test_leave_one_out_adapts_once_per_fold_on_the_other_utterances(setup, monkeypatch):
    from sb_meta.adapt import load_model
    from sb_meta.adapt.safeguard import holdout_errors

    model = load_model(setup["export"])
    wavs, texts, ids = support(setup)
    seen = []
    real = type(model).adapt

    def spy(self, support, method=None):
        seen.append(list(support.ids))
        return real(self, support, method)

    monkeypatch.setattr(type(model), "adapt", spy)
    check = holdout_errors(model, Support(wavs, texts, ids), Method(steps=1, lr=1e-3))
    assert seen == [[u for u in ids if u != held] for held in ids]  # each fold leaves one utterance out
    assert check["folds"] == 4 and check["words"] == sum(len(t.split()) for t in texts)
    assert 0 <= check["errors_before"] and 0 <= check["errors_after"]
    assert holdout_errors(model, (wavs, texts), Method(steps=1, lr=1e-3), folds=2)["folds"] == 2


@pytest.mark.parametrize("kept", [False, True])
def test_the_adaptation_is_kept_only_when_it_removed_held_out_errors(setup, monkeypatch, kept):
    from sb_meta.adapt import load_model
    from sb_meta.adapt import safeguard

    model = load_model(setup["export"])
    wavs, texts, ids = support(setup)
    before = params(model)
    monkeypatch.setattr(safeguard, "holdout_errors",
                        lambda *a, **k: {"errors_before": 5, "errors_after": 3 if kept else 6, "words": 10, "folds": 4})
    out = safeguard.guarded_adapt(model, Support(wavs, texts, ids), Method(steps=2, lr=0.05))
    assert out is not model and out.last_adaptation["guard"]["kept"] is kept
    assert out.last_adaptation["steps"] == (2 if kept else 0)
    assert out.last_adaptation["strategy"] == model.default_strategy  # the one adaptation would have used
    assert out.info["adaptations"][-1]["guard"]["errors_after"] == (3 if kept else 6)
    moved = any(not torch.equal(p, before[n]) for n, p in out.named_parameters())
    assert moved is kept  # rejected: an unchanged copy
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the original never moves


def test_the_guard_is_a_method_setting_and_refuses_what_it_cannot_check(setup):
    from sb_meta.adapt import load_model

    model = load_model(setup["export"])
    wavs, texts, ids = support(setup)
    out = model.adapt(Support(wavs, texts, ids, "spk"),
                      Method(name="guarded", strategy="finetune", steps=1, lr=1e-3, guard=True))
    assert "guard" in out.last_adaptation
    with pytest.raises(ValueError, match="at least 2 utterances"):
        model.adapt(Support(wavs[:1], texts[:1], ids[:1], "spk"), Method(strategy="finetune", guard=True))
    with pytest.raises(ValueError, match="cannot guard adaptation from the audio alone"):
        model.adapt(Support(wavs, texts, ids, "spk"), Method(name="g", addons=["entropy"], guard=True))
    from sb_meta.adapt import guarded_adapt

    with pytest.raises(ValueError, match="against their transcripts: give them"):
        guarded_adapt(model, (wavs, None), Method(steps=1))


@pytest.mark.parametrize("kept", [True, False])
def test_the_command_exports_what_the_guard_decided(setup, tmp_path, capsys, monkeypatch, kept):
    import json

    from sb_meta.adapt import safeguard
    from sb_meta.cli import main

    monkeypatch.setattr(safeguard, "holdout_errors", lambda *a, **k: {
        "errors_before": 4, "errors_after": 2 if kept else 4, "words": 9, "folds": 3})
    out = tmp_path / "adapted"
    assert main(["adapt", "--model", str(setup["export"]), "--support", str(setup["csv"]), "--task", "s1",
                 "--k", "3", "--steps", "2", "--lr", "0.05", "--guard", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("adaptation kept" in printed) is kept and ("exported unadapted" in printed) is not kept
    last = json.loads((out / "sbmeta.json").read_text())["adaptations"][-1]
    assert last["guard"]["kept"] is kept and last["steps"] == (2 if kept else 0)


def test_the_command_refuses_to_guard_unsupervised_adaptation(setup, tmp_path, capsys):
    from sb_meta.cli import main

    assert main(["adapt", "--model", str(setup["export"]), "--support", str(setup["csv"]), "--task", "s1",
                 "--guard", "--unsupervised", "entropy", "--out", str(tmp_path / "x")]) != 0
    assert "cannot guard adaptation from the audio alone" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
