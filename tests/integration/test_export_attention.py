"""Attention models (CRDNN + attention decoder, Transformer) and models sb-meta
did not train: export -> SpeechBrain's own EncoderDecoderASR -> same
transcripts, test-time adaptation with the losses the model allows, export again."""

import json

import pytest
import torch

from helpers import tiny_asr as h
from helpers.published import PUBLISHED_YAML
from sb_meta.adapt import Method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attention")
    csv = h.make_corpus(tmp / "corpus")
    return {"tmp": tmp, "csv": csv, "rows": h.read_rows(csv)}


@pytest.mark.parametrize("kind", ["crdnn_attention", "transformer"])
def test_attention_model_round_trip_through_encoder_decoder_asr(corpus, kind):
    import speechbrain as sb

    from sb_meta.adapt import load_model
    from sb_meta.export import export_brain

    yaml_text = h.ATTENTION_YAML if kind == "crdnn_attention" else h.TRANSFORMER_YAML
    tmp = corpus["tmp"] / kind
    brain, yaml_path = h.train_tiny_brain(tmp / "exp", corpus["csv"], strategy="fomaml", epochs=1,
                                          yaml_text=yaml_text)
    out = export_brain(brain, tmp / "pretrained", hparams_file=yaml_path)
    info = json.loads((out / "sbmeta.json").read_text())
    assert info["interface"] == "speechbrain.inference.ASR.EncoderDecoderASR"
    asr = h.speechbrain_asr(out, "EncoderDecoderASR")  # SpeechBrain alone
    paths = [r["wav"] for r in corpus["rows"][:4]]
    wavs, lens = h.file_batch(paths)
    # the brain's own beam search (the recipe's test decoding) gives the same words
    pred = h.probe(brain, wavs, lens)
    with torch.no_grad():
        want = brain.transcribe(pred, sb.Stage.TEST)
        torch.testing.assert_close(asr.encode_batch(wavs, lens), pred.encoder_out, rtol=1e-5, atol=1e-5)
    assert asr.transcribe_batch(wavs, lens)[0] == want

    model = load_model(out)
    assert model.view.losses == ["ctc", "attention"]
    support = corpus["rows"][5:8]
    adapted = model.adapt(([r["wav"] for r in support], [r["wrd"] for r in support]), Method(steps=2, lr=0.05, strategy="finetune"))
    changed = {n for n, p in adapted.named_parameters() if not torch.equal(p, dict(model.named_parameters())[n])}
    assert any(n.startswith("seq_lin") for n in changed)  # the attention loss reached the decoder
    assert any(n.startswith("ctc_lin") for n in changed)  # and the CTC one the CTC head
    again = h.speechbrain_asr(adapted.export(tmp / "adapted"), "EncoderDecoderASR")
    assert again.transcribe_batch(wavs, lens)[0] == adapted.transcribe_batch(wavs, lens)[0]




def make_published_like(folder, texts):
    """Random weights in the published model's layout: hyperparams.yaml and one
    file per loadable, as on the model hub."""
    import sentencepiece
    from hyperpyyaml import load_hyperpyyaml

    folder.mkdir(parents=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(folder / "sp"), vocab_size=7,
        model_type="char", unk_id=0, bos_id=1, eos_id=2, minloglevel=2,
    )
    (folder / "tokenizer.ckpt").write_bytes((folder / "sp.model").read_bytes())
    for f in folder.glob("sp.*"):
        f.unlink()
    (folder / "hyperparams.yaml").write_text(PUBLISHED_YAML)
    torch.manual_seed(0)
    hp = load_hyperpyyaml(PUBLISHED_YAML)
    hp["normalize"]._load_statistics_dict(
        {"count": 1, "glob_mean": torch.zeros(20), "glob_std": torch.ones(20)})
    torch.save(hp["asr_model"].state_dict(), folder / "asr.ckpt")
    torch.save(hp["lm_model"].state_dict(), folder / "lm.ckpt")
    hp["normalize"]._save(folder / "normalizer.ckpt")
    return folder


def test_a_model_sb_meta_did_not_train_loads_adapts_and_exports(corpus):
    from sb_meta.adapt import load_model

    rows = corpus["rows"]
    folder = make_published_like(corpus["tmp"] / "published", [r["wrd"] for r in rows] * 3)
    model = load_model(folder)
    assert model.info is None and model.interface.endswith("EncoderDecoderASR")
    view = model.view
    assert view.losses == ["attention"]  # no CTC scorer: its ctc_lin is not a decoding head
    assert "lm_model" not in view.modules and "decoder" in view.modules
    wavs, lens = h.file_batch([r["wav"] for r in rows[:3]])
    before = model.transcribe_batch(wavs, lens)[0]
    support = rows[5:8]
    adapted = model.adapt(([r["wav"] for r in support], [r["wrd"] for r in support]), Method(steps=2, lr=0.1))
    assert adapted.last_adaptation["losses"] == ["attention"]
    old = dict(model.named_parameters())
    changed = {n for n, p in adapted.named_parameters() if not torch.equal(p, old[n])}
    assert any(n.startswith("decoder.") for n in changed) and any(n.startswith("model.") for n in changed)
    assert model.transcribe_batch(wavs, lens)[0] == before  # the loaded model is untouched
    out = adapted.export(corpus["tmp"] / "published_adapted")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["hyperparams.yaml", "asr.ckpt", "lm.ckpt", "normalizer.ckpt", "tokenizer.ckpt", "sbmeta.json"])
    again = h.speechbrain_asr(out, "EncoderDecoderASR")
    assert again.transcribe_batch(wavs, lens)[0] == adapted.transcribe_batch(wavs, lens)[0]
    info = json.loads((out / "sbmeta.json").read_text())
    assert info["base_model"]["kind"] == "loaded" and len(info["adaptations"]) == 1
