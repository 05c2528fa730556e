"""Export, loading and few-shot adaptation (``sb_meta.inference``).

The model is a tiny CRDNN-CTC trained for a few episodes on a synthetic
"tone" corpus (each character is a tone whose pitch depends on the speaker),
so every test runs in seconds on a CPU. The helpers at the top are also used
by ``test_evaluation.py`` and ``test_inference_cli.py``.
"""

import json
import pathlib
import shutil

import numpy as np
import pytest
import soundfile
import torch

TINY_YAML = """\
sample_rate: 16000
n_mels: 20
output_neurons: 8          # 4 characters + blank, 3 unused outputs
compute_features: !new:speechbrain.lobes.features.Fbank
    sample_rate: !ref <sample_rate>
    n_mels: !ref <n_mels>
normalize: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
enc: !new:speechbrain.lobes.models.CRDNN.CRDNN
    input_shape: [null, null, !ref <n_mels>]
    activation: !name:torch.nn.LeakyReLU
    dropout: 0.0
    cnn_blocks: 1
    cnn_channels: (8,)
    cnn_kernelsize: (3, 3)
    time_pooling: True
    time_pooling_size: 2
    rnn_class: !name:speechbrain.nnet.RNN.LSTM
    rnn_layers: 1
    rnn_neurons: 16
    rnn_bidirectional: True
    dnn_blocks: 1
    dnn_neurons: 16
ctc_lin: !new:speechbrain.nnet.linear.Linear
    input_size: 16
    n_neurons: !ref <output_neurons>
log_softmax: !new:speechbrain.nnet.activations.Softmax
    apply_log: True
ctc_cost: !name:sb_meta.losses.ctc_loss
    blank_index: 0
modules:
    enc: !ref <enc>
    ctc_lin: !ref <ctc_lin>
    normalize: !ref <normalize>
"""

FREQ = {"A": 400.0, "B": 700.0, "C": 1000.0}
WORDS = ["AB", "CA", "BCA", "AC", "CB", "BAC", "A", "CAB"]


def tone_wave(text, shift, rng):
    """Tones for the characters of ``text`` (silence for spaces), 16 kHz."""
    pieces = [np.zeros(800)]
    for c in text:
        if c == " ":
            pieces.append(np.zeros(800))
        else:
            t = np.arange(1600) / 16000
            pieces.append(0.4 * np.sin(2 * np.pi * FREQ[c] * shift * t))
    pieces.append(np.zeros(800))
    wav = np.concatenate(pieces)
    return (wav + 0.01 * rng.standard_normal(len(wav))).astype(np.float32)


def make_corpus(folder, speakers=(("s0", 5), ("s1", 5), ("s2", 5)), seed=0):
    """Write a tone corpus and its manifest ``folder/data.csv``; returns the path."""
    from sb_meta.data.manifest import write_manifest

    rng = np.random.default_rng(seed)
    folder = pathlib.Path(folder)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for s, (spk, n) in enumerate(speakers):
        for u in range(n):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 3))))
            wav = tone_wave(text, 0.8 + 0.2 * s, rng)
            path = folder / "wav" / f"{spk}_{u:02d}.wav"
            soundfile.write(str(path), wav, 16000)
            rows.append(dict(ID=f"{spk}_{u:02d}", duration=len(wav) / 16000, wav=str(path),
                             spk_id=spk, wrd=text))
    return write_manifest(folder / "data.csv", rows)


def train_tiny_brain(folder, csv, strategy="metasgd", epochs=2, seed=0, tokenizer=None):
    """A tiny CTCASRBrain meta-trained for a few episodes; returns (brain, yaml path)."""
    from hyperpyyaml import load_hyperpyyaml

    from sb_meta.asr import CharTokenizer, CTCASRBrain, dataio_prepare

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    yaml_path = folder / "tiny.yaml"
    yaml_path.write_text(TINY_YAML)
    torch.manual_seed(seed)
    hp = load_hyperpyyaml(TINY_YAML)
    hp.update(meta_strategy=strategy, first_order=True, inner_steps=1, inner_lr=0.05,
              k_support=2, k_query=2, meta_batch_tasks=2, episodes_per_epoch=3,
              max_grad_norm=5.0, seed=seed)
    tok = tokenizer or CharTokenizer.from_texts(["A B C"])
    data = dataio_prepare(hp, tok, {"train": csv})
    brain = CTCASRBrain(
        modules=hp["modules"],
        opt_class=lambda params: torch.optim.Adam(params, 0.01),
        hparams=hp,
        run_opts={"device": "cpu", "noprogressbar": True},
    )
    brain.tokenizer = tok
    brain.fit(range(1, epochs + 1), brain.make_episode_loader(data["train"]), progressbar=False)
    return brain, yaml_path


def read_rows(csv):
    from sb_meta.data.manifest import read_manifest

    return read_manifest(csv)


def speechbrain_asr(folder):
    """SpeechBrain's own loader, exactly as a SpeechBrain user would call it."""
    from speechbrain.inference.ASR import EncoderASR

    return EncoderASR.from_hparams(source=str(folder), savedir=str(folder))


def file_batch(paths):
    from speechbrain.dataio.dataio import read_audio
    from speechbrain.utils.data_utils import batch_pad_right

    return batch_pad_right([read_audio(str(p)) for p in paths])


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inference")
    csv = make_corpus(tmp / "corpus")
    brain, yaml_path = train_tiny_brain(tmp / "exp", csv)
    from sb_meta.inference import export_brain

    export = export_brain(brain, tmp / "pretrained", hparams_file=yaml_path)
    return {"tmp": tmp, "csv": csv, "brain": brain, "yaml": yaml_path, "export": export,
            "rows": read_rows(csv)}


def test_export_is_a_speechbrain_pretrained_folder(setup):
    folder = setup["export"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["hyperparams.yaml", "model.ckpt", "normalizer.ckpt", "tokenizer.ckpt",
                            "meta_strategy.ckpt", "sbmeta.json"])
    text = (folder / "hyperparams.yaml").read_text()
    assert "speechbrain.nnet.containers.LengthsCapableSequential" in text
    assert "!name:speechbrain.decoders.ctc_greedy_decode" in text
    assert "speechbrain.dataio.encoder.CTCTextEncoder" in text
    assert "sb_meta" not in text.split("# ---- model")[1].split("ctc_cost")[0]
    info = json.loads((folder / "sbmeta.json").read_text())
    assert info["strategy"] == "metasgd"
    assert info["metasgd_step_sizes"] == "meta_strategy.ckpt"
    assert info["meta_config"]["inner_lr"] == 0.05
    assert info["tokenizer"]["kind"] == "char" and info["tokenizer"]["output_neurons"] == 8

    asr = speechbrain_asr(folder)
    # the CTCTextEncoder: blank at 0, the CharTokenizer's characters at 1..n
    tok = setup["brain"].tokenizer
    assert asr.tokenizer.ind2lab[0] == "<blank>"
    assert [asr.tokenizer.ind2lab[i + 1] for i in range(len(tok.chars))] == tok.chars

    # same log-probabilities as the brain's own forward pass
    paths = [r["wav"] for r in setup["rows"][:4]]
    wavs, lens = file_batch(paths)
    from speechbrain.dataio.batch import PaddedBatch

    import speechbrain as sb

    brain = setup["brain"]
    batch = PaddedBatch([{"id": str(i), "sig": w[: int(round(float(l) * wavs.shape[1]))],
                          "tokens": torch.LongTensor([1]), "wrd": "A"}
                         for i, (w, l) in enumerate(zip(wavs, lens))])
    brain.modules.eval()
    with torch.no_grad():
        want = brain.compute_forward(batch, sb.Stage.TEST)["p_ctc"]
        got = asr.encode_batch(wavs, lens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert isinstance(asr.transcribe_file(paths[0]), str)


def test_export_folder_is_relocatable(setup):
    moved = setup["tmp"] / "moved" / "model"
    shutil.copytree(setup["export"], moved)
    asr = speechbrain_asr(moved)
    path = setup["rows"][0]["wav"]
    assert asr.transcribe_file(path) == speechbrain_asr(setup["export"]).transcribe_file(path)


def test_adapt_export_round_trip(setup):
    from sb_meta.inference import load_model

    model = load_model(setup["export"])
    rows = setup["rows"]
    support = [r for r in rows if r["spk_id"] == "s1"][:3]
    before = {n: p.clone() for n, p in model.asr.mods.named_parameters()}
    paths = [r["wav"] for r in rows]
    wavs, lens = file_batch(paths)
    probs_before = model.log_probs(wavs, lens)
    words_before = model.transcribe_batch(wavs, lens)[0]

    adapted = model.adapt([r["wav"] for r in support], [r["wrd"] for r in support],
                          strategy="finetune", steps=2, lr=0.05, ids=[r["ID"] for r in support])

    # the original model is unchanged
    for n, p in model.asr.mods.named_parameters():
        assert torch.equal(p, before[n]), n
    torch.testing.assert_close(model.log_probs(wavs, lens), probs_before, rtol=0, atol=0)
    assert model.transcribe_batch(wavs, lens)[0] == words_before
    assert not model.adaptations
    # ... and the adapted one did change
    changed = [n for n, p in adapted.asr.mods.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    assert not torch.allclose(adapted.log_probs(wavs, lens), probs_before)

    out = adapted.export(setup["tmp"] / "adapted")
    asr = speechbrain_asr(out)
    probs_sb = asr.encode_batch(wavs, lens)
    torch.testing.assert_close(probs_sb, adapted.log_probs(wavs, lens), rtol=1e-5, atol=1e-5)
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
    again = load_model(out).adapt([support[0]["wav"]], [support[0]["wrd"]], strategy="finetune",
                                  steps=1, lr=0.01)
    assert len(again.adaptations) == 2


def test_metasgd_step_sizes_are_used(setup):
    from sb_meta.inference import load_model

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
    meta = model.adapt([row["wav"]], [row["wrd"]], steps=1)  # default strategy: metasgd
    assert meta.last_adaptation["strategy"] == "metasgd"
    assert meta.last_adaptation["lr"] == "meta-learned"
    old = dict(model.asr.mods.named_parameters())
    new = dict(meta.asr.mods.named_parameters())
    bias = "encoder.ctc_lin.w.bias"
    assert not torch.equal(new[bias], old[bias])
    assert all(torch.equal(new[n], old[n]) for n in old if n != bias)
    # the same step as plain fine-tuning of that bias with lr 0.05
    ft = model.adapt([row["wav"]], [row["wrd"]], strategy="finetune", steps=1, lr=0.05,
                     adapt_params=["ctc_lin.w.bias"])
    torch.testing.assert_close(dict(ft.asr.mods.named_parameters())[bias], new[bias])
    # an explicit lr replaces the meta-learned step sizes
    forced = model.adapt([row["wav"]], [row["wrd"]], strategy="metasgd", steps=1, lr=0.05)
    changed = [n for n in old if not torch.equal(dict(forced.asr.mods.named_parameters())[n], old[n])]
    assert len(changed) > 1
    # parameters without learned step sizes are not adapted by metasgd
    partial = dict(model.meta_state)
    partial.pop(key)
    model.meta_state = {k: torch.full_like(v, 0.01) for k, v in partial.items()}
    rest = model.adapt([row["wav"]], [row["wrd"]], steps=1)
    new_rest = dict(rest.asr.mods.named_parameters())
    assert torch.equal(new_rest[bias], old[bias])
    assert any(not torch.equal(new_rest[n], old[n]) for n in old if n != bias)
    model.meta_state = meta.meta_state
    # the step sizes travel with exports of adapted models
    out = meta.export(setup["tmp"] / "meta_adapted")
    reloaded = load_model(out)
    assert reloaded.has_step_sizes
    torch.testing.assert_close(reloaded.meta_state[key], model.meta_state[key])


def test_model_without_step_sizes(setup, tmp_path):
    from sb_meta.inference import export_brain, load_model

    brain, yaml_path = train_tiny_brain(tmp_path / "exp", setup["csv"], strategy="fomaml", epochs=1)
    model = load_model(export_brain(brain, tmp_path / "fomaml", hparams_file=yaml_path))
    assert not model.has_step_sizes and model.default_strategy == "finetune"
    assert not (tmp_path / "fomaml" / "meta_strategy.ckpt").exists()
    row = setup["rows"][0]
    with pytest.raises(ValueError, match="does not have"):
        model.adapt([row["wav"]], [row["wrd"]], strategy="metasgd")
    with torch.no_grad():  # SpeechBrain inference code runs under no_grad
        adapted = model.adapt([row["wav"]], [row["wrd"]], steps=1)
    assert adapted.last_adaptation["strategy"] == "finetune"
    assert adapted.last_adaptation["lr"] == 0.05  # the model's inner_lr
    anil = model.adapt([row["wav"]], [row["wrd"]], strategy="anil", steps=1)
    changed = {n for n, p in anil.asr.mods.named_parameters()
               if not torch.equal(p, dict(model.asr.mods.named_parameters())[n])}
    assert changed and all(".ctc_lin." in n for n in changed)


def test_export_finds_the_experiment_yaml(setup, tmp_path, monkeypatch):
    """Without hparams_file, the YAML SpeechBrain saved in output_folder is used
    (resolved: references turned into values and YAML aliases)."""
    from hyperpyyaml import resolve_references

    from sb_meta.inference import export_brain

    brain = setup["brain"]
    with pytest.raises(ValueError, match="hparams_file"):
        export_brain(brain, tmp_path / "nope")
    exp = tmp_path / "exp"
    exp.mkdir()
    resolved = resolve_references(TINY_YAML).getvalue()
    assert "*id" in resolved
    (exp / "hyperparams.yaml").write_text("# Generated by SpeechBrain\n" + resolved)
    monkeypatch.setattr(brain.hparams, "output_folder", str(exp), raising=False)
    folder = export_brain(brain, tmp_path / "pretrained")
    info = json.loads((folder / "sbmeta.json").read_text())
    assert info["base_model"]["hparams_file"] == str((exp / "hyperparams.yaml").resolve())
    assert info["base_model"]["output_folder"] == str(exp)
    text = (folder / "hyperparams.yaml").read_text()
    assert "&id" not in text  # unused anchors dropped
    paths = [r["wav"] for r in setup["rows"][:2]]
    wavs, lens = file_batch(paths)
    torch.testing.assert_close(speechbrain_asr(folder).encode_batch(wavs, lens),
                               speechbrain_asr(setup["export"]).encode_batch(wavs, lens))


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in pathlib.Path(folder).iterdir()}


def _leftovers(folder):
    folder = pathlib.Path(folder)
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def test_atomic_export(setup, tmp_path, monkeypatch):
    import sb_meta.inference as inference

    brain, yaml_path = setup["brain"], setup["yaml"]
    dest = tmp_path / "model"
    inference.export_brain(brain, dest, hparams_file=yaml_path)
    good = _snapshot(dest)

    # failure while writing the new folder
    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    with monkeypatch.context() as m:
        m.setattr(inference, "_write_json", boom)
        with pytest.raises(OSError, match="simulated"):
            inference.export_brain(brain, dest, hparams_file=yaml_path)
    assert _snapshot(dest) == good
    assert _leftovers(dest) == []

    # failure while swapping the folders (no atomic exchange available)
    real_rename = inference.os.rename

    def failing_rename(src, dst):
        if pathlib.Path(src).name.startswith(".model.tmp-"):
            raise OSError("rename failed (simulated)")
        return real_rename(src, dst)

    with monkeypatch.context() as m:
        m.setattr(inference, "_exchange", lambda a, b: False)
        m.setattr(inference.os, "rename", failing_rename)
        with pytest.raises(OSError, match="simulated"):
            inference.export_brain(brain, dest, hparams_file=yaml_path)
    assert _snapshot(dest) == good
    assert _leftovers(dest) == []
    speechbrain_asr(dest)  # still loads

    # the fallback swap and the atomic exchange both replace a previous export
    with monkeypatch.context() as m:
        m.setattr(inference, "_exchange", lambda a, b: False)
        inference.export_brain(brain, dest, hparams_file=yaml_path)
    inference.export_brain(brain, dest, hparams_file=yaml_path)
    assert sorted(_snapshot(dest)) == sorted(good)
    assert _leftovers(dest) == []

    # a YAML that does not build the trained model fails verification
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(yaml_path.read_text().replace("rnn_neurons: 16", "rnn_neurons: 12"))
    with pytest.raises(RuntimeError, match="does not load|does not reproduce"):
        inference.export_brain(brain, dest, hparams_file=bad_yaml)
    assert _snapshot(dest) == {**good, "sbmeta.json": _snapshot(dest)["sbmeta.json"]}
    assert _leftovers(dest) == []

    # never replace a folder that is not an export
    other = tmp_path / "not_an_export"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing"):
        inference.export_brain(brain, other, hparams_file=yaml_path)
    assert (other / "notes.txt").read_text() == "precious"


def test_bad_inputs(setup, tmp_path):
    from sb_meta.inference import load_model
    from sb_meta.plugins import UnknownPluginError

    model = load_model(setup["export"])
    row = setup["rows"][0]
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        model.adapt([str(tmp_path / "nope.wav")], ["AB"])
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF0000WAVEnot really audio")
    with pytest.raises(ValueError, match="corrupt.wav"):
        model.adapt([str(corrupt)], ["AB"])
    with pytest.raises(ValueError, match="corrupt.wav"):
        model.transcribe_file(corrupt)
    with pytest.raises(ValueError, match="empty transcript"):
        model.adapt([row["wav"]], ["  "], ids=["u1"])
    with pytest.raises(ValueError, match="2 support utterances but 1 transcripts"):
        model.adapt([row["wav"], row["wav"]], ["AB"])
    with pytest.raises(ValueError, match=r"utt7.*\['x', 'z'\]"):
        model.adapt([row["wav"]], ["ABxz"], ids=["utt7"])
    with pytest.raises(ValueError, match="too short"):
        model.adapt([torch.zeros(800)], ["ABCABCABCABC"])
    with pytest.raises(UnknownPluginError, match="unknown strategy 'nope'; available: .*finetune"):
        model.adapt([row["wav"]], [row["wrd"]], strategy="nope")
    with pytest.raises(TypeError):
        model.adapt(row["wav"], [row["wrd"]])

    # a registered strategy that is not a gradient strategy cannot adapt at test time
    plugin = tmp_path / "oddplug.py"
    plugin.write_text(
        "from sb_meta.plugins import hookimpl\n"
        "from sb_meta.strategy import Strategy\n"
        "class Odd(Strategy):\n"
        "    name = 'odd'\n"
        "@hookimpl\n"
        "def sbmeta_strategies():\n"
        "    return [Odd]\n"
    )
    from sb_meta.plugins import PluginRegistry

    model._registry = PluginRegistry(extra=[str(plugin)])
    with pytest.raises(ValueError, match="cannot adapt at test time"):
        model.adapt([row["wav"]], [row["wrd"]], strategy="odd")

    # loading
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="offline"):
        load_model("sbmeta-test-org/not-a-cached-model")
    broken = tmp_path / "broken"
    shutil.copytree(setup["export"], broken)
    (broken / "tokenizer.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.ckpt"):
        load_model(broken)


def test_model_yaml_section_of_a_recipe():
    """The section of the AN4 recipe, as written and as SpeechBrain resolves it
    into an experiment folder (references become YAML aliases)."""
    from hyperpyyaml import load_hyperpyyaml, resolve_references

    from sb_meta.inference import model_yaml_section

    recipe = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "AN4" / "hparams"
    text = (recipe / "crdnn_ctc_meta.yaml").read_text()
    resolved = resolve_references(text, {"data_folder": "/data"}).getvalue()
    for source in (text, resolved):
        section, names = model_yaml_section(source)
        assert names == {k: k for k in ("compute_features", "normalize", "enc", "ctc_lin", "log_softmax")}
        assert "checkpointer" not in section and "data_folder" not in section
        hp = load_hyperpyyaml(section)
        assert hp["ctc_lin"].w.out_features == 40
        assert sum(p.numel() for p in hp["enc"].parameters()) > 0

    # keys clashing with the names an export defines are renamed
    clash = (
        "model: !new:speechbrain.nnet.linear.Linear\n    input_size: 4\n    n_neurons: 3\n"
        "encoder: !new:torch.nn.Identity\n"
        "modules:\n    ctc_lin: !ref <model>\n"
    )
    section, names = model_yaml_section(clash, {"ctc_lin": "modules"})
    assert names == {"ctc_lin": "src_model"}
    assert section.startswith("src_model:") and "encoder" not in section


def test_sentencepiece_export(setup, tmp_path):
    import sentencepiece

    from sb_meta.asr import SentencePieceTokenizer
    from sb_meta.inference import export_brain, load_model

    texts = ["AB CA", "BCA AC", "CB BAC", "A CAB", "AB", "CA BC"] * 5
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(tmp_path / "sp"), vocab_size=6,
        model_type="unigram", character_coverage=1.0, hard_vocab_limit=False, bos_id=-1, eos_id=-1,
        minloglevel=2,
    )
    tok = SentencePieceTokenizer(tmp_path / "sp.model")
    assert tok.vocab_size <= 8
    brain, yaml_path = train_tiny_brain(tmp_path / "exp", setup["csv"], strategy="fomaml",
                                        epochs=1, tokenizer=tok)
    folder = export_brain(brain, tmp_path / "sp_model", hparams_file=yaml_path)
    asr = speechbrain_asr(folder)
    assert isinstance(asr.tokenizer, sentencepiece.SentencePieceProcessor)
    assert asr.tokenizer.vocab_size() == 8 and asr.tokenizer.is_control(0)
    assert asr.tokenizer.is_control(7)  # a placeholder for the unused output
    text = "BCA AB"
    ids = tok.encode(text)
    assert asr.tokenizer.encode_as_ids(text) == ids
    assert asr.tokenizer.decode_ids(ids) == tok.decode(ids) == text
    model = load_model(folder)
    assert model.encode_transcript(text) == ids
    adapted = model.adapt([setup["rows"][0]["wav"]], [setup["rows"][0]["wrd"]], steps=1)
    wavs, lens = file_batch([r["wav"] for r in setup["rows"][:3]])
    out = adapted.export(tmp_path / "sp_adapted")
    assert speechbrain_asr(out).transcribe_batch(wavs, lens)[0] == adapted.transcribe_batch(wavs, lens)[0]


def test_init_from_loads_an_export_into_a_fresh_recipe_model(setup, tmp_path):
    # the recipes' init_from key: start (meta-)training from an exported model
    from hyperpyyaml import load_hyperpyyaml

    from sb_meta.asr import CharTokenizer, load_initialisation

    torch.manual_seed(123)  # other initial weights than the exported model's
    hp = load_hyperpyyaml(TINY_YAML)
    hp["model"] = torch.nn.ModuleList([hp["enc"], hp["ctc_lin"]])
    trained = setup["brain"].modules
    assert not torch.equal(hp["ctc_lin"].w.weight, trained.ctc_lin.w.weight)
    load_initialisation(hp, setup["export"], CharTokenizer.from_texts(["A B C"]))
    for (name, p), q in zip(hp["model"].named_parameters(),
                            torch.nn.ModuleList([trained.enc, trained.ctc_lin]).parameters()):
        assert torch.equal(p, q), name
    torch.testing.assert_close(hp["normalize"].glob_mean, trained.normalize.glob_mean)

    # another alphabet would misread the output layer: refused, naming both
    with pytest.raises(ValueError, match="tokenizer of .* differs"):
        load_initialisation(hp, setup["export"], CharTokenizer.from_texts(["A B D"]))
    # a folder without the weights is named
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks .*model.ckpt"):
        load_initialisation(hp, tmp_path / "empty")
    # a model of another shape is refused with the file named
    hp2 = load_hyperpyyaml(TINY_YAML, {"output_neurons": 9})
    hp2["model"] = torch.nn.ModuleList([hp2["enc"], hp2["ctc_lin"]])
    with pytest.raises(ValueError, match="does not fit this recipe's model"):
        load_initialisation(hp2, setup["export"])
