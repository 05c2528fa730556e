"""Loading and few-shot adaptation of exported models (``sb_meta.adapt``)."""

import json
import shutil

import pytest
import torch


from helpers import tiny_asr as h
from sb_meta.adapt import Method, Support

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from sb_meta.export import export_brain

    tmp = tmp_path_factory.mktemp("adapt")
    csv = h.make_corpus(tmp / "corpus")
    brain, yaml_path = h.train_tiny_brain(tmp / "exp", csv)
    export = export_brain(brain, tmp / "pretrained", hparams_file=yaml_path)
    return {"tmp": tmp, "csv": csv, "brain": brain, "yaml": yaml_path, "export": export,
            "rows": h.read_rows(csv)}


def test_adapt_export_round_trip(setup):
    from sb_meta.adapt import load_model

    model = load_model(setup["export"])
    rows = setup["rows"]
    support = [r for r in rows if r["spk_id"] == "s1"][:3]
    before = {n: p.clone() for n, p in model.named_parameters()}
    paths = [r["wav"] for r in rows]
    wavs, lens = h.file_batch(paths)
    probs_before = model.log_probs(wavs, lens)
    words_before = model.transcribe_batch(wavs, lens)[0]

    adapted = model.adapt(Support([r["wav"] for r in support], [r["wrd"] for r in support], ids=[r["ID"] for r in support]), Method(strategy="finetune", steps=2, lr=0.05))

    # the original model is unchanged
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    torch.testing.assert_close(model.log_probs(wavs, lens), probs_before, rtol=0, atol=0)
    assert model.transcribe_batch(wavs, lens)[0] == words_before
    assert not model.adaptations
    # ... and the adapted one did change
    changed = [n for n, p in adapted.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    assert not torch.allclose(adapted.log_probs(wavs, lens), probs_before)

    out = adapted.export(setup["tmp"] / "adapted")
    asr = h.speechbrain_asr(out)
    torch.testing.assert_close(asr.encode_batch(wavs, lens), adapted.log_probs(wavs, lens),
                               rtol=1e-5, atol=1e-5)
    assert asr.transcribe_batch(wavs, lens)[0] == adapted.transcribe_batch(wavs, lens)[0]
    for p in paths[:3]:
        assert asr.transcribe_file(p) == adapted.transcribe_file(p)

    info = json.loads((out / "sbmeta.json").read_text())
    assert len(info["adaptations"]) == 1
    rec = info["adaptations"][0]
    assert rec["strategy"] == "finetune" and rec["steps"] == 2 and rec["lr"] == 0.05
    assert [s["id"] for s in rec["support"]] == [r["ID"] for r in support]
    assert [s["audio"] for s in rec["support"]] == [r["wav"] for r in support]
    # adapting the reloaded adapted model goes on the provenance chain
    again = load_model(out).adapt(([support[0]["wav"]], [support[0]["wrd"]]), Method(strategy="finetune", steps=1, lr=0.01))
    assert len(again.adaptations) == 2


def test_parameters_are_named_as_in_training(setup):
    from sb_meta.adapt import load_model

    model = load_model(setup["export"])
    trained = {n for n, p in setup["brain"].modules.named_parameters() if not n.startswith("sbmeta_")}
    view = model.view
    names = {f"{k}.{n}" for k, m in view.modules.items() for n, _ in m.named_parameters()}
    assert names == trained
    assert view.losses == ["ctc"]


def test_metasgd_step_sizes_are_used(setup):
    from sb_meta.adapt import load_model

    model = load_model(setup["export"])
    assert model.has_step_sizes and model.default_strategy == "metasgd"
    saved = torch.load(setup["export"] / "meta_strategy.ckpt", weights_only=True)
    assert model.meta_state.keys() == saved.keys()
    key = "metasgd_lr.ctc_lin__w__bias"
    assert key in model.meta_state
    # step sizes: zero everywhere except the output bias
    model.meta_state = {k: torch.zeros_like(v) for k, v in model.meta_state.items()}
    model.meta_state[key] = torch.full_like(saved[key], 0.05)
    row = setup["rows"][0]
    meta = model.adapt(([row["wav"]], [row["wrd"]]), Method(steps=1))  # default strategy: metasgd
    assert meta.last_adaptation["strategy"] == "metasgd"
    assert meta.last_adaptation["lr"] == "meta-learned"
    old = dict(model.named_parameters())
    new = dict(meta.named_parameters())
    bias = "ctc_lin.w.bias"
    assert not torch.equal(new[bias], old[bias])
    assert all(torch.equal(new[n], old[n]) for n in old if n != bias)
    # the same step as plain fine-tuning of that bias with lr 0.05
    ft = model.adapt(([row["wav"]], [row["wrd"]]), Method(strategy="finetune", steps=1, lr=0.05, adapt_params=["ctc_lin.w.bias"]))
    torch.testing.assert_close(dict(ft.named_parameters())[bias], new[bias])
    # an explicit lr replaces the meta-learned step sizes
    forced = model.adapt(([row["wav"]], [row["wrd"]]), Method(strategy="metasgd", steps=1, lr=0.05))
    changed = [n for n in old if not torch.equal(dict(forced.named_parameters())[n], old[n])]
    assert len(changed) > 2
    # parameters without learned step sizes are not adapted by metasgd
    partial = dict(model.meta_state)
    partial.pop(key)
    model.meta_state = {k: torch.full_like(v, 0.01) for k, v in partial.items()}
    rest = model.adapt(([row["wav"]], [row["wrd"]]), Method(steps=1))
    new_rest = dict(rest.named_parameters())
    assert torch.equal(new_rest[bias], old[bias])
    assert any(not torch.equal(new_rest[n], old[n]) for n in old if n != bias)
    model.meta_state = meta.meta_state
    # the step sizes travel with exports of adapted models
    out = meta.export(setup["tmp"] / "meta_adapted")
    reloaded = load_model(out)
    assert reloaded.has_step_sizes
    torch.testing.assert_close(reloaded.meta_state[key], model.meta_state[key])


def test_model_without_step_sizes(setup, tmp_path):
    from sb_meta.adapt import load_model
    from sb_meta.export import export_brain

    brain, yaml_path = h.train_tiny_brain(tmp_path / "exp", setup["csv"], strategy="fomaml", epochs=1)
    model = load_model(export_brain(brain, tmp_path / "fomaml", hparams_file=yaml_path))
    assert not model.has_step_sizes and model.default_strategy == "finetune"
    assert not (tmp_path / "fomaml" / "meta_strategy.ckpt").exists()
    row = setup["rows"][0]
    with pytest.raises(ValueError, match="does not have"):
        model.adapt(([row["wav"]], [row["wrd"]]), Method(strategy="metasgd"))
    with torch.no_grad():  # SpeechBrain inference code runs under no_grad
        adapted = model.adapt(([row["wav"]], [row["wrd"]]), Method(steps=1))
    assert adapted.last_adaptation["strategy"] == "finetune"
    assert adapted.last_adaptation["lr"] == 0.05  # the model's inner_lr
    anil = model.adapt(([row["wav"]], [row["wrd"]]), Method(strategy="anil", steps=1))
    base = dict(model.named_parameters())
    changed = {n for n, p in anil.named_parameters() if not torch.equal(p, base[n])}
    assert changed and all("ctc_lin." in n for n in changed)


def test_bad_inputs(setup, tmp_path):
    from sb_meta.adapt import load_model
    from sb_meta.plugins import UnknownPluginError

    model = load_model(setup["export"])
    row = setup["rows"][0]
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        model.adapt(([str(tmp_path / "nope.wav")], ["AB"]))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF0000WAVEnot really audio")
    with pytest.raises(ValueError, match="corrupt.wav"):
        model.adapt(([str(corrupt)], ["AB"]))
    with pytest.raises(ValueError, match="corrupt.wav"):
        model.transcribe_file(corrupt)
    with pytest.raises(ValueError, match="empty transcript"):
        model.adapt(Support([row["wav"]], ["  "], ids=["u1"]))
    with pytest.raises(ValueError, match="audio path is empty"):
        model.adapt(Support([""], ["AB"], ids=["u1"]))
    with pytest.raises(ValueError, match="2 support utterances but 1 transcripts"):
        model.adapt(([row["wav"], row["wav"]], ["AB"]))
    with pytest.raises(ValueError, match="u1.*given twice"):
        model.adapt(Support([row["wav"], row["wav"]], ["AB", "CA"], ids=["u1", "u1"]))
    with pytest.raises(ValueError, match=r"utt7.*\['x', 'z'\]"):
        model.adapt(Support([row["wav"]], ["ABxz"], ids=["utt7"]))
    with pytest.raises(ValueError, match="too short"):
        model.adapt(([torch.zeros(800)], ["ABCABCABCABC"]))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        model.adapt(([row["wav"]], [row["wrd"]]), Method(steps=0))
    with pytest.raises(UnknownPluginError, match="unknown strategy 'nope'; available: .*finetune"):
        model.adapt(([row["wav"]], [row["wrd"]]), Method(strategy="nope"))
    with pytest.raises(TypeError):
        model.adapt((row["wav"], [row["wrd"]]))

    # a registered strategy that cannot adapt loaded models says so
    plugin = tmp_path / "oddplug.py"
    plugin.write_text(
        "from sb_meta.strategy import Strategy\n"
        "class Odd(Strategy):\n"
        "    name = 'odd'\n"
        "    adapts_at_test_time = False\n"
        "def sbmeta_strategies():\n"
        "    return [Odd]\n"
    )
    from sb_meta.plugins import PluginRegistry

    model._registry = PluginRegistry(extra=[str(plugin)])
    with pytest.raises(ValueError, match="cannot adapt a model at test time"):
        model.adapt(([row["wav"]], [row["wrd"]]), Method(strategy="odd"))


@pytest.mark.parametrize("case", ["missing", "hub", "no_yaml", "missing_file", "truncated",
                                  "wrong_keys", "corrupt_json", "empty_tokenizer", "a_file"])
def test_loading_errors_name_the_culprit(setup, tmp_path, case):
    from sb_meta.adapt import load_model

    broken = tmp_path / "broken"
    if case not in ("missing", "hub", "a_file"):
        shutil.copytree(setup["export"], broken)
    source, error, match = broken, ValueError, None
    if case == "missing":
        source, error, match = tmp_path / "missing", FileNotFoundError, "does not exist"
    elif case == "hub":
        source, error, match = "sbmeta-test-org/not-a-cached-model", FileNotFoundError, "offline"
    elif case == "a_file":
        source = tmp_path / "f.yaml"
        source.write_text("a: 1")
        match = "is a file"
    elif case == "no_yaml":
        (broken / "hyperparams.yaml").unlink()
        error, match = FileNotFoundError, "no hyperparams.yaml"
    elif case == "missing_file":
        (broken / "tokenizer.ckpt").unlink()
        error, match = FileNotFoundError, "tokenizer.ckpt"
    elif case == "truncated":
        data = (broken / "model.ckpt").read_bytes()
        (broken / "model.ckpt").write_bytes(data[: len(data) // 2])
        match = r"model\.ckpt is unreadable"
    elif case == "wrong_keys":
        (broken / "sbmeta.json").unlink()
        (broken / "hyperparams.yaml").write_text("lr: 1\nmodules: {}\n")
        match = r"hyperparams\.yaml .*lacks .*pretrainer"
    elif case == "corrupt_json":
        (broken / "sbmeta.json").write_text("{not json")
        match = r"sbmeta\.json is corrupt"
    elif case == "empty_tokenizer":
        (broken / "tokenizer.ckpt").write_text("")
        match = "tokenizer"
    with pytest.raises(error, match=match):
        load_model(source)


def test_init_from_loads_an_export_into_a_fresh_recipe_model(setup, tmp_path):
    # the recipes' init_from key: start (meta-)training from an exported model
    from sb_meta.recipe import RecipeError, load_initialisation

    torch.manual_seed(123)  # other initial weights than the exported model's
    hp = h.load_tiny_hparams(h.CTC_YAML, tmp_path / "fresh", setup["csv"])
    trained = setup["brain"].modules
    assert not torch.equal(hp["ctc_lin"].w.weight, trained.ctc_lin.w.weight)
    load_initialisation(hp, setup["export"])
    for (name, p), q in zip(hp["model"].named_parameters(),
                            torch.nn.ModuleList([trained.enc, trained.ctc_lin]).parameters()):
        assert torch.equal(p, q), name
    torch.testing.assert_close(hp["normalize"].glob_mean, trained.normalize.glob_mean)

    # an alphabet that only adds characters takes the export's unused labels: accepted
    from sb_meta.data.manifest import read_manifest, write_manifest

    def corpus(name, old, new):
        rows = read_manifest(h.make_corpus(tmp_path / name))
        return write_manifest(tmp_path / name / "data.csv", [dict(r, wrd=r["wrd"].replace(old, new)) for r in rows])

    wider = h.load_tiny_hparams(h.CTC_YAML, tmp_path / "wider_tok", corpus("wider", "AB CA BC", "AB CA BD"))
    load_initialisation(wider, setup["export"])
    # another alphabet would misread the output layer: refused
    hp_other = h.load_tiny_hparams(h.CTC_YAML, tmp_path / "other_tok", corpus("other", "A", "D"))
    with pytest.raises(RecipeError, match="tokenizer of .* differs"):
        load_initialisation(hp_other, setup["export"])
    # a folder without the weights is named
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks .*model.ckpt"):
        load_initialisation(hp, tmp_path / "empty")
    # a model of another shape is refused with the folder named
    hp2 = h.load_tiny_hparams(h.CTC_YAML.replace("rnn_neurons: 16", "rnn_neurons: 12"),
                              tmp_path / "fresh2", setup["csv"])
    with pytest.raises(RecipeError, match="does not fit this recipe's model"):
        load_initialisation(hp2, setup["export"])
