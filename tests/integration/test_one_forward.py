"""One forward per model family: a model sb-meta exported is run at test time by the
recipe's own forward (``sb_meta.forward.family_forward``), so a hook sees the same
predictions in training and in test-time adaptation."""

import pytest
import torch

from helpers import tiny_asr as h

pytestmark = pytest.mark.usefixtures("one_thread")

YAMLS = {"crdnn": h.CTC_YAML, "crdnn_attention": h.ATTENTION_YAML, "transformer": h.TRANSFORMER_YAML}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one_forward")
    csv = h.make_corpus(tmp / "corpus")
    return {"tmp": tmp, "csv": csv, "rows": h.read_rows(csv)}


def _batch(rows, tokenizer_of):
    from speechbrain.dataio.batch import PaddedBatch
    from speechbrain.dataio.dataio import read_audio

    items = []
    for r in rows:
        tokens = tokenizer_of(r["wrd"])
        items.append({"id": r["ID"], "sig": read_audio(r["wav"]), "wrd": r["wrd"], "tokens": tokens,
                      "tokens_bos": torch.cat([torch.LongTensor([1]), tokens]),
                      "tokens_eos": torch.cat([tokens, torch.LongTensor([2])])})
    return PaddedBatch(items)


@pytest.mark.parametrize("kind", sorted(YAMLS))
def test_exported_model_runs_the_recipe_forward(corpus, kind, monkeypatch):
    import speechbrain as sb

    import sb_meta.adapt.objective as objective
    from sb_meta.adapt import Method, Support, load_model
    from sb_meta.export import export_brain

    tmp = corpus["tmp"] / kind
    brain, yaml_path = h.train_tiny_brain(tmp / "exp", corpus["csv"], strategy="fomaml", epochs=1,
                                          yaml_text=YAMLS[kind])
    model = load_model(export_brain(brain, tmp / "pretrained", hparams_file=yaml_path))
    assert model.view.family == kind.split("_")[0]

    rows = corpus["rows"][:3]
    batch = _batch(rows, lambda text: torch.LongTensor([3 + (ord(c) % 3) for c in text.replace(" ", "")]))
    brain.modules.eval()
    with torch.no_grad():
        trained = brain.compute_forward(batch, sb.Stage.VALID)
        tested = objective.view_forward(model.view, *batch.sig, batch.tokens_bos[0])
    for field in ("log_probs", "encoder_out", "seq_log_probs"):
        a, b = getattr(trained, field), getattr(tested, field)
        assert (a is None) == (b is None), field
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=field)

    calls = []
    real = objective.family_forward
    monkeypatch.setattr(objective, "family_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    support = Support([r["wav"] for r in rows], [r["wrd"] for r in rows])
    model.adapt(support, Method(name="ft", strategy="finetune", steps=1, lr=0.01))
    assert calls, "test-time adaptation did not run the recipe family's forward"
