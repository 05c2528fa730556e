"""The models people download: SSL encoder + CTC (wav2vec2, HuBERT, WavLM) and Whisper
folders, in SpeechBrain's published layouts with tiny random Hugging Face encoders
made offline, load, transcribe, adapt (LoRA and full), export, and SpeechBrain's own
interface reloads the export with the same output. Also the default adapter targets
of every model family."""

import json
import pathlib
import sys

import pytest
import torch

from sb_meta.utils import load_script

from helpers import tiny_asr as h
from sb_meta.adapt import Method
pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("transformers", reason="the hf extra (pip install 'sb-meta[hf]') is not installed")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    csv = h.make_corpus(tmp / "corpus")
    rows = h.read_rows(csv)
    return {"tmp": tmp, "csv": csv, "rows": rows, "texts": [r["wrd"] for r in rows]}


def _changed(before, after):
    """Parameters of ``after`` that moved: base weights that differ from ``before``'s
    (named as in ``before``), and adapter tensors that left their zero initialisation
    (LoRA's up-projection, LHUC's amplitudes)."""
    old = dict(before.named_parameters())
    moved = set()
    for n, p in after.named_parameters():
        base = n.replace(".pretrained_module.", ".").replace(".pretrained_linear.", ".")
        if base in old:
            if not torch.equal(p, old[base]):
                moved.add(n)
        elif ("adapter_up_proj" in n or n.endswith("lhuc_r")) and bool(p.abs().sum() > 0):
            moved.add(n)
    return moved


def _round_trip(model, folder, interface, wavs, lens):
    """Export ``model``; SpeechBrain's own interface transcribes the export as ``model`` does."""
    out = model.export(folder)
    again = h.speechbrain_asr(out, interface)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_batch(wavs, lens), model.asr.encode_batch(wavs, lens),
                                   rtol=1e-4, atol=1e-4)
    assert again.transcribe_batch(wavs, lens)[0] == model.transcribe_batch(wavs, lens)[0]
    return out


@pytest.mark.parametrize("family, freeze", [("wav2vec2", True), ("hubert", False), ("wavlm", False)])
def test_ssl_ctc_folder_loads_adapts_with_lora_and_fully_and_exports(corpus, family, freeze):
    from sb_meta.adapt import load_model
    from sb_meta.adapt.families import front_end_params, model_family
    from sb_meta.adapt.hf_folders import ssl_ctc_folder

    folder = ssl_ctc_folder(corpus["tmp"] / family, corpus["texts"], family=family, freeze=freeze)
    if family == "hubert":  # the module path of the folders published before SpeechBrain 1.1
        yaml = folder / "hyperparams.yaml"
        yaml.write_text(yaml.read_text().replace("speechbrain.integrations.huggingface.",
                                                 "speechbrain.lobes.models.huggingface_transformers."))
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == [
        "asr.ckpt", "hyperparams.yaml", "tokenizer.ckpt", "wav2vec2.ckpt"]
    model = load_model(folder)
    assert model.interface.endswith(".EncoderASR") and model.view.losses == ["ctc"]
    modules = torch.nn.ModuleDict(model.view.modules)
    assert model_family(modules) == "ssl"
    frozen = set(front_end_params(modules))
    assert frozen and all(".feature_extractor." in n for n in frozen)
    rows = corpus["rows"]
    wavs, lens = h.file_batch([r["wav"] for r in rows[:3]])
    before = model.transcribe_batch(wavs, lens)[0]
    support = rows[5:10]
    paths, texts = [r["wav"] for r in support], [r["wrd"] for r in support]

    lora = model.adapt((paths, texts), Method(steps=2, lr=0.05, addons=["lora"]))
    changed = _changed(model, lora)
    assert changed and all(".adapter_" in n for n in changed)
    projections = {n.rsplit(".adapter_", 1)[0].rsplit(".", 1)[-1] for n in changed}
    assert projections <= {"q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense",
                           "w", "ctc_lin"}
    attention = set() if family == "wavlm" else {"q_proj", "k_proj", "v_proj", "out_proj"}
    assert attention | {"intermediate_dense", "output_dense"} <= projections  # the encoder's layers adapt
    assert any(n.startswith("ctc_lin.") for n in changed)  # and the CTC head (its adapter)
    assert model.transcribe_batch(wavs, lens)[0] == before  # the loaded model is untouched
    out = _round_trip(lora, corpus["tmp"] / f"{family}_lora", "EncoderASR", wavs, lens)
    assert json.loads((out / "sbmeta.json").read_text())["merged_adapters"] == ["lora"]
    adapters = lora.export_adapters(corpus["tmp"] / f"{family}_adapters")
    sizes = {p.name: p.stat().st_size for p in adapters.iterdir()}
    assert sum(sizes.values()) < (out / "wav2vec2.ckpt").stat().st_size  # the adapters travel alone

    full = model.adapt((paths, texts), Method(steps=2, lr=0.05))
    changed = _changed(model, full)
    assert any(".encoder.layers." in n for n in changed) and any(n.startswith("ctc_lin.") for n in changed)
    assert not changed & frozen  # the convolutional front end stays as it was
    _round_trip(full, corpus["tmp"] / f"{family}_full", "EncoderASR", wavs, lens)
    again = load_model(out)  # an sb-meta export of it loads too
    assert again.transcribe_batch(wavs, lens)[0] == lora.transcribe_batch(wavs, lens)[0]


def test_whisper_folder_loads_adapts_with_lora_and_fully_and_exports(corpus):
    from sb_meta.adapt import load_model
    from sb_meta.adapt.families import front_end_params, model_family
    from sb_meta.adapt.hf_folders import whisper_folder

    folder = whisper_folder(corpus["tmp"] / "whisper")
    model = load_model(folder)
    assert model.interface.endswith(".WhisperASR")
    view = model.view
    assert view.losses == ["attention"] and view.prefix == list(model.asr.mods.decoder.initial_tokens)
    modules = torch.nn.ModuleDict(view.modules)
    assert model_family(modules) == "whisper"
    frozen = set(front_end_params(modules))
    assert {n.rsplit(".", 2)[-2] for n in frozen} == {"conv1", "conv2"}
    rows = corpus["rows"]
    wavs, lens = h.file_batch([r["wav"] for r in rows[:2]])
    support = rows[5:8]
    paths, texts = [r["wav"] for r in support], [r["wrd"] for r in support]

    lora = model.adapt((paths, texts), Method(steps=2, lr=0.05, addons=["lora"]))
    changed = _changed(model, lora)
    assert changed and all(".adapter_" in n for n in changed)
    kinds = {n.split(".adapter_")[0].rsplit(".", 1)[-1] for n in changed}
    assert kinds == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert any(".encoder.layers." in n for n in changed) and any(".decoder.layers." in n for n in changed)
    _round_trip(lora, corpus["tmp"] / "whisper_lora", "WhisperASR", wavs, lens)

    full = model.adapt((paths, texts), Method(steps=2, lr=0.05))
    assert full.last_adaptation["losses"] == ["attention"]
    changed = _changed(model, full)
    assert any(".decoder." in n for n in changed) and not changed & frozen
    _round_trip(full, corpus["tmp"] / "whisper_full", "WhisperASR", wavs, lens)


def test_whisper_adaptation_lowers_the_teacher_forced_loss(corpus):
    """The attention loss Whisper adapts with is the searcher's own task: more steps on
    the support lower it (the prompt is read, the transcript predicted after it)."""
    from sb_meta.adapt import load_model
    from sb_meta.adapt.hf_folders import whisper_folder

    model = load_model(whisper_folder(corpus["tmp"] / "whisper_loss", seed=1))
    support = corpus["rows"][5:8]
    paths, texts = [r["wav"] for r in support], [r["wrd"] for r in support]
    one = model.adapt((paths, texts), Method(steps=1, lr=0.01, strategy="finetune"))
    many = model.adapt((paths, texts), Method(steps=8, lr=0.01, strategy="finetune"))
    assert many.last_adaptation["last_inner_loss"] < one.last_adaptation["last_inner_loss"]


def test_a_hugging_face_folder_without_transformers_names_the_extra(tmp_path, monkeypatch):
    from sb_meta.adapt import load_model

    folder = tmp_path / "w2v"
    folder.mkdir()
    (folder / "hyperparams.yaml").write_text(
        "ssl: !new:speechbrain.integrations.huggingface.wav2vec2.Wav2Vec2\n    source: x\n"
        "    save_path: y\nencoder: !ref <ssl>\ntokenizer: null\ndecoding_function: null\n"
        "modules:\n    encoder: !ref <encoder>\npretrainer:\n    loadables: {}\n")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    with pytest.raises(ImportError, match=r"^the model in .*w2v .* needs the transformers package: "
                                          r"pip install 'sb-meta\[hf\]'$"):
        load_model(folder)


CONFORMER = ("    encoder_module: conformer\n    attention_type: RelPosMHAXL\n"
             "    normalize_before: True\n")


@pytest.fixture(scope="module")
def conformer(corpus):
    """An sb-meta export of a tiny encoder-decoder Conformer (CTC + attention)."""
    from sb_meta.adapt import load_model
    from sb_meta.export import export_brain

    yaml_text = h.TRANSFORMER_YAML.replace("    normalize_before: True\n", CONFORMER)
    assert yaml_text != h.TRANSFORMER_YAML
    brain, yaml_path = h.train_tiny_brain(corpus["tmp"] / "conformer", corpus["csv"], strategy="fomaml",
                                          epochs=1, yaml_text=yaml_text)
    return load_model(export_brain(brain, corpus["tmp"] / "conformer_export", hparams_file=yaml_path))


@pytest.mark.parametrize("addon, tensor", [("lora", ".adapter_"), ("lhuc", ".lhuc_r")])
def test_adapters_on_an_encoder_decoder_conformer_wrap_attention_and_feed_forward(corpus, conformer,
                                                                                   addon, tensor):
    """`--peft lora` (or lhuc) on a Conformer: the attention output and feed-forward
    projections of encoder and decoder layers and the CTC head, not the CTC head alone."""
    from sb_meta.adapt.families import model_family

    model = conformer
    assert model_family(torch.nn.ModuleDict(model.view.modules)) == "transformer"
    support = corpus["rows"][5:8]
    adapted = model.adapt(([r["wav"] for r in support], [r["wrd"] for r in support]), Method(steps=2, lr=0.05, addons=[addon]))
    changed = _changed(model, adapted)
    assert changed and all(tensor in n for n in changed)
    wrapped = {n.split(tensor)[0] for n in changed}
    assert any(n.endswith("mha_layer.out_proj") for n in wrapped)  # Conformer self-attention
    assert any(".ffn_module1." in n for n in wrapped) and any(".pos_ffn.ffn." in n for n in wrapped)
    assert any(n.startswith("ctc_lin") for n in wrapped)
    assert len(wrapped) > 5
    wavs, lens = h.file_batch([r["wav"] for r in corpus["rows"][:2]])
    _round_trip(adapted, corpus["tmp"] / f"conformer_{addon}", "EncoderDecoderASR", wavs, lens)


def test_default_adapter_targets_of_each_family():
    """CRDNN: its DNN and CTC head; Transformer-style models: attention and feed-forward
    projections, then the CTC head; torch's MultiheadAttention is left alone (it reads
    its out_proj weight directly)."""
    from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
    from speechbrain.nnet.attention import MultiheadAttention

    from sb_meta.adapt.families import default_adapter_targets, model_family, projection_layers

    crdnn = torch.nn.ModuleDict({"enc": torch.nn.Sequential(torch.nn.LSTM(2, 2)),
                                 "DNN": torch.nn.Linear(2, 2), "ctc_lin": torch.nn.Linear(2, 3)})
    assert model_family(crdnn) == "crdnn" and default_adapter_targets(crdnn) == ["*DNN*", "*ctc_lin*"]
    conformer = torch.nn.ModuleDict({"enc": ConformerEncoder(2, 8, 16, 2), "ctc_lin": torch.nn.Linear(8, 3)})
    targets = default_adapter_targets(conformer)
    assert model_family(conformer) == "transformer"
    assert targets[-1] == "ctc_lin" and len(targets) == 2 * 5 + 1
    assert projection_layers(torch.nn.ModuleDict({"mha": MultiheadAttention(nhead=2, d_model=8)})) == []


@pytest.fixture(scope="module")
def synth_corpus(tmp_path_factory):
    from sb_meta.data.synth import generate_corpus

    out = tmp_path_factory.mktemp("synth_hf")
    generate_corpus(out, speakers=6, utts_per_speaker=5, seed=1, progress=False)  # as test_recipes.py
    return out


@pytest.mark.parametrize("strategy, extra", [
    ("fomaml", []), ("reptile", []), ("fomaml", ["--meta_addons=[]", "--adapt_params=[enc.*,ctc_lin.*]"])])
def test_the_ssl_ctc_recipe_meta_trains_only_adapters_in_the_inner_loop(synth_corpus, tmp_path, strategy,
                                                                        extra):
    """`recipes/AN4/hparams/ssl_ctc_meta.yaml --debug` at tiny size (the AN4 recipe's brain on
    the synthetic corpus): the frozen encoder's weights stay, its LoRA adapters and the
    head's adapt in the inner loop (without adapters: the DNN and the head), and
    SpeechBrain loads the export."""
    from sb_meta.adapt.hf_folders import hf_ssl_source
    from sb_meta.adapt.families import front_end_params

    root = pathlib.Path(__file__).resolve().parents[2]
    source = hf_ssl_source(tmp_path / "hf_wav2vec2")
    recipe = load_script(root / "recipes" / "SynthVoices" / "train.py", "sbmeta_test_recipe_synth_hf")
    out = tmp_path / "exp"
    brain = recipe.main([str(root / "recipes" / "AN4" / "hparams" / "ssl_ctc_meta.yaml"),
                         f"--data_folder={synth_corpus}", f"--output_folder={out}", f"--ssl_hub={source}",
                         "--ssl_output_size=16", "--dnn_neurons=16", f"--meta_strategy={strategy}",
                         "--debug", "--debug_batches=1", "--debug_epochs=1", "--meta_batch_tasks=2",
                         "--k_support=2", "--k_query=2", "--noprogressbar", *extra])
    names = brain.strategy.adapt_names()
    if extra:
        assert names and all(n.startswith(("enc.", "ctc_lin.")) for n in names)
    else:
        assert names and all(".adapter_" in n for n in names)
        assert any(n.startswith("ssl.model.encoder.") for n in names) and any(n.startswith("ctc_lin") for n in names)
    own = [p for n, p in brain.modules.ssl.named_parameters() if ".adapter_" not in n]
    assert not any(p.requires_grad for p in own)  # the encoder's weights stay as downloaded
    assert front_end_params(brain.modules)
    info = json.loads((out / "pretrained" / "sbmeta.json").read_text())
    assert info["interface"] == "speechbrain.inference.ASR.EncoderASR" and info["strategy"] == strategy
    asr = h.speechbrain_asr(out / "pretrained")
    wav = next(pathlib.Path(synth_corpus).rglob("*.wav"))
    assert isinstance(asr.transcribe_file(str(wav)), str)


def test_sb_meta_adapt_command_on_a_whisper_folder(corpus, tmp_path):
    """The documented command: `sb-meta adapt --model <whisper folder> --support ... --peft lora
    --adapters-only`, then `sb-meta transcribe` with the adapted export."""
    from sb_meta.adapt.hf_folders import whisper_folder
    from sb_meta.cli import main

    folder = whisper_folder(tmp_path / "whisper")
    spk = corpus["rows"][5]["spk_id"]
    args = ["adapt", "--model", str(folder), "--support", str(corpus["csv"]), "--task", spk, "--k", "2",
            "--steps", "1", "--peft", "lora"]
    assert main(args + ["--adapters-only", "--out", str(tmp_path / "adapters")]) == 0
    assert (tmp_path / "adapters" / "adapters.json").is_file()
    assert main(args + ["--out", str(tmp_path / "adapted")]) == 0
    assert main(["transcribe", "--model", str(tmp_path / "adapted"), corpus["rows"][0]["wav"]]) == 0
