"""Adaptation without transcripts: the ``entropy``, ``pseudo`` and ``cmvn`` test-time methods
(``plugins/testtime.py``)."""


import pytest
import torch


from helpers import tiny_asr as h
from sb_meta.adapt import Method, Support

pytestmark = pytest.mark.usefixtures("one_thread")


setup = h.exported_fixture("unsup")


def changed(a, b):
    old = dict(a.named_parameters())
    return {n for n, p in b.named_parameters() if not torch.equal(p, old[n])}


def test_entropy_minimisation_adapts_from_audio_alone(setup, monkeypatch):
    from sb_meta.adapt import load_model

    model = load_model(setup["export"])
    import sb_meta.adapt.support as support

    def never(*args, **kwargs):
        raise AssertionError("a transcript was read")

    monkeypatch.setattr(support, "encode_transcript", never)
    wavs = [r["wav"] for r in setup["rows"][5:9]]
    adapted = model.adapt((wavs, None), Method(addons=["entropy"], steps=3, lr=0.05, adapt_params=["ctc_lin.*"]))
    log = adapted.last_adaptation["test_time"]["entropy"]
    assert len(log["entropy"]) >= 2
    if log["steps_kept"]:
        assert changed(model, adapted) and min(log["entropy"][1:]) < log["entropy"][0]
        assert all(n.startswith("ctc_lin") for n in changed(model, adapted))
    assert all(rec["transcript"] is None for rec in adapted.last_adaptation["support"])
    # transcripts given are never read either (an evaluation hands every method the same support)
    given = model.adapt((wavs, ["AB"] * 4), Method(addons=["entropy"], steps=1, lr=0.05))
    assert all(rec["transcript"] is None for rec in given.last_adaptation["support"])
    with pytest.raises(KeyError, match="unknown add-on 'magic'; available: .*entropy"):
        model.adapt((wavs, None), Method(addons=["magic"]))
    with pytest.raises(ValueError, match="give the support transcripts, or a test-time method .*entropy"):
        model.adapt((wavs, None), "finetune")


def test_the_collapse_guard_stops_entropy_minimisation(setup):
    from sb_meta.adapt import load_model

    model = load_model(setup["export"])
    wavs = [r["wav"] for r in setup["rows"][5:9]]
    # a huge step drives every frame to one label; the guard keeps the last good weights
    adapted = model.adapt((wavs, None), Method(addons=["entropy"], steps=5, lr=500.0,
                                               addon_config={"entropy_agreement_guard": 0.99}))
    log = adapted.last_adaptation["test_time"]["entropy"]
    assert log["stopped"] != "steps done"
    assert log["steps_kept"] < 5


def test_pseudo_labels_keep_only_confident_utterances(setup):
    from sb_meta.adapt import load_model

    model = load_model(setup["export"])
    wavs = [r["wav"] for r in setup["rows"][5:9]]
    none = model.adapt((wavs, None), Method(addons=["pseudo"], steps=2, lr=0.05,
                                            addon_config={"pseudo_confidence": 1.01}))
    assert none.last_adaptation["test_time"]["pseudo"]["kept"] == 0 and not changed(model, none)
    assert none.last_adaptation["stopped"] == "no utterance confident enough"
    some = model.adapt((wavs, None), Method(addons=["pseudo"], steps=2, lr=0.05,
                                            addon_config={"pseudo_confidence": 0.0}))
    log = some.last_adaptation["test_time"]["pseudo"]
    kept = [h for h in log["hypotheses"] if h.strip()]
    assert log["kept"] == len(kept)
    if kept:
        assert changed(model, some)


def test_the_command_adapts_without_a_transcript_column(setup, tmp_path, capsys):
    from sb_meta.cli import main
    from sb_meta.data.manifest import write_manifest

    rows = [{k: v for k, v in r.items() if k != "wrd"} for r in setup["rows"]]
    csv = tmp_path / "audio_only.csv"
    import csv as csvmod

    with open(csv, "w", newline="") as f:
        w = csvmod.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "adapted"
    assert main(["adapt", "--model", str(setup["export"]), "--support", str(csv), "--task", "s1",
                 "--k", "3", "--steps", "2", "--lr", "0.05", "--unsupervised", "entropy",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "sbmeta.json").is_file()
    del write_manifest


def test_cmvn_re_estimates_the_input_statistics_from_audio_alone(setup, monkeypatch, tmp_path):
    from speechbrain.processing.features import InputNormalization

    import sb_meta.adapt.support as support
    from sb_meta.adapt import load_model

    model = load_model(setup["export"])

    def never(*args, **kwargs):
        raise AssertionError("a transcript was read")

    monkeypatch.setattr(support, "encode_transcript", never)

    def norm(m):
        (n,) = [x for x in m.asr.mods.modules() if isinstance(x, InputNormalization)]
        return n

    wavs = [r["wav"] for r in setup["rows"][5:9]]
    before = norm(model).glob_mean.clone()
    adapted = model.adapt(([w for w in wavs], None), "cmvn")
    log = adapted.last_adaptation["test_time"]["cmvn"]
    assert log["weight"] == 1.0 and log["frames"] > 0 and log["mean_shift"][0] > 0
    assert adapted.last_adaptation["steps"] == 0  # the record says no gradient step was taken
    assert not changed(model, adapted)  # no weight moved, only the statistics
    assert torch.equal(norm(model).glob_mean, before)  # the original is untouched
    # the new statistics are the support features' own: normalised support features have
    # mean 0 and standard deviation 1 over the valid frames
    feats = []
    n = norm(adapted)
    hook = n.register_forward_hook(lambda mod, args, out: feats.append(out.detach()))
    try:
        adapted.transcribe_waveforms([model.load_audio(w) for w in wavs], batch_size=1)
    finally:
        hook.remove()
    x = torch.cat([f[0] for f in feats])
    assert x.mean(0).abs().max() < 1e-3 and (x.std(0) - 1).abs().max() < 1e-2
    half = model.adapt((wavs, None), Method(addons=["cmvn"], addon_config={"cmvn_weight": 0.5}))
    assert torch.allclose(norm(half).glob_mean, (before + norm(adapted).glob_mean) / 2, atol=1e-5)
    # transcripts handed over are not read
    via = model.adapt(Support(wavs, ["never read"] * len(wavs), task="t"),
                      Method(name="c", addons=["cmvn"], addon_config={"cmvn_weight": 0.5}))
    assert torch.allclose(norm(via).glob_mean, norm(half).glob_mean)
    # the adapted statistics travel with the export
    again = load_model(adapted.export(tmp_path / "cmvn"))
    assert torch.allclose(norm(again).glob_mean, norm(adapted).glob_mean)
    with pytest.raises(ValueError, match="cmvn_weight"):
        model.adapt((wavs, None), Method(addons=["cmvn"], addon_config={"cmvn_weight": 2}))


def test_cmvn_then_a_supervised_update(setup):
    """``cmvn_update``: the support's statistics first, then the steps on the renormalised features."""
    from speechbrain.processing.features import InputNormalization

    from sb_meta.adapt import load_model

    model = load_model(setup["export"])
    rows = setup["rows"][5:9]
    wavs, texts = [r["wav"] for r in rows], [r["wrd"] for r in rows]

    def norm(m):
        (n,) = [x for x in m.asr.mods.modules() if isinstance(x, InputNormalization)]
        return n

    torch.manual_seed(0)
    both = model.adapt((wavs, texts), Method(steps=2, lr=0.05, addons=["cmvn"],
                                             addon_config={"cmvn_weight": 0.5, "cmvn_update": True}))
    stats = model.adapt((wavs, None), Method(addons=["cmvn"], addon_config={"cmvn_weight": 0.5}))
    assert torch.allclose(norm(both).glob_mean, norm(stats).glob_mean)
    assert changed(model, both)  # the weights moved too
    # the same steps taken from the renormalised model give the same weights: the statistics
    # were re-estimated before the update, and the update saw the renormalised features
    torch.manual_seed(0)
    after = stats.adapt((wavs, texts), Method(steps=2, lr=0.05))
    mine = dict(both.named_parameters())
    assert all(torch.allclose(p, mine[n], atol=1e-6) for n, p in after.named_parameters())
    torch.manual_seed(0)
    plain = model.adapt((wavs, texts), Method(steps=2, lr=0.05))
    assert not all(torch.allclose(p, mine[n]) for n, p in plain.named_parameters())
    rec = both.last_adaptation
    assert rec["test_time"]["cmvn"]["weight"] == 0.5 and rec["test_time"]["cmvn"]["frames"] > 0
    assert rec["steps"] == 2
    with pytest.raises(ValueError, match="give the support transcripts"):
        model.adapt((wavs, None), Method(addons=["cmvn"], addon_config={"cmvn_update": True}))


def test_the_command_adapts_after_re_estimating_the_statistics(setup, tmp_path, capsys):
    import json

    from sb_meta.cli import main

    base = ["adapt", "--model", str(setup["export"]), "--support", str(setup["csv"]), "--task", "s1", "--k", "3"]
    out = tmp_path / "both"
    assert main(base + ["--steps", "2", "--lr", "0.05", "--cmvn", "0.5", "--out", str(out)]) == 0
    assert "statistics re-estimated" in capsys.readouterr().out
    last = json.loads((out / "sbmeta.json").read_text())["adaptations"][-1]
    assert last["test_time"]["cmvn"]["weight"] == 0.5 and last["steps"] == 2
    for extra, says in ((["--cmvn", "2"], "must be a weight"), (["--cmvn", "x"], "must be a weight")):
        assert main(base + extra + ["--out", str(tmp_path / "x")]) != 0
        assert says in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
