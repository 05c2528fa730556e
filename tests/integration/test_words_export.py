"""Word models: export -> load -> enrol -> classify, SpeechBrain's EncoderClassifier, the commands."""

import json
import pathlib

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.inference.classifiers import EncoderClassifier

from sb_meta.cli import main
from sb_meta.contract import Phase
from sb_meta.data.manifest import read_manifest
from sb_meta.utils import load_script
from sb_meta.words import load_word_model
from sb_meta.words.export import export_word_brain
from sb_meta.words.testing import TINY_WORD_YAML, make_tone_words

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPE = load_script(ROOT / "recipes" / "AN4Words" / "train.py", "sbmeta_an4words_recipe_export_tests")

pytestmark = pytest.mark.usefixtures("one_thread")

#: x-vector statistics pooling adds Gaussian noise of ~1e-5 to every forward (even in eval mode)
ATOL = 2e-3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tone_words(tmp_path_factory.mktemp("tone_words"), words=5, speakers=2, per_speaker=3)


def train(folder, csv, strategy):
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hparams.yaml").write_text(TINY_WORD_YAML)
    hp = load_hyperpyyaml(TINY_WORD_YAML)
    classes = sorted({r["word"] for r in read_manifest(csv)})
    hp.update(meta_strategy=strategy, task_column="word", meta_batch_tasks=3, k_support=2, k_query=2,
              episodes_per_epoch=2, max_grad_norm=5.0, word_classes=classes, output_folder=str(folder))
    data = RECIPE.dataio_prepare(hp, {"train": csv})
    brain = RECIPE.WordEmbedder(modules=hp["modules"], opt_class=lambda p: torch.optim.Adam(p, 0.01),
                                hparams=hp, run_opts={"device": "cpu", "noprogressbar": True})
    loader = brain.make_episode_loader(data["train"])
    brain.fit(range(1, 2), loader, progressbar=False)
    brain.strategy.pop_train_accuracy()
    return brain, loader


@pytest.fixture(scope="module", params=["protonet", "matching", "finetune_classifier"])
def trained(request, corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    brain, loader = train(folder / "exp", corpus, request.param)
    export = export_word_brain(brain, folder / "pretrained", hparams_file=folder / "exp" / "hparams.yaml")
    return brain, loader, export, {r["ID"]: r for r in read_manifest(corpus)}


def segment(row):
    return {"file": row["wav"], "start": int(row["start"]), "stop": int(row["stop"])}


def test_enrol_export_load_classify_gives_the_same_predictions(trained, tmp_path):
    brain, loader, export, rows = trained
    episode = next(iter(loader))
    support = {t.name: t.support for t in episode.tasks}
    query_ids = [i for t in episode.tasks for i in t.query_ids]
    # the strategy's own few-shot classification, inside the training brain
    fast = brain.strategy.adapt(support)
    _, want = brain.strategy.forward(fast, loader.collate(query_ids), Phase.EVAL)
    # the exported model, loaded, enrolled with the same recordings
    model = load_word_model(export)
    assert model.words == [] and model.strategy == brain.strategy.name
    enrolled = model.enrol({t.name: [segment(rows[i]) for i in t.support_ids] for t in episode.tasks})
    assert enrolled.words == list(support) and model.words == []
    queries = [segment(rows[i]) for i in query_ids]
    got = enrolled.head(enrolled.embed(queries))
    assert torch.allclose(got, want, atol=ATOL)
    words = [w for w, _ in enrolled.classify(queries)]
    assert words == [list(support)[i] for i in want.argmax(-1).tolist()]
    # written as a folder and loaded again
    again = load_word_model(enrolled.export(tmp_path / "enrolled"))
    assert again.words == enrolled.words
    assert [w for w, _ in again.classify(queries)] == words
    assert torch.allclose(again.head(again.embed(queries)), want, atol=ATOL)
    # SpeechBrain alone classifies with it
    sb_model = EncoderClassifier.from_hparams(source=str(tmp_path / "enrolled"), savedir=str(tmp_path / "enrolled"))
    wavs = torch.stack([sb_model.load_audio(rows[i]["wav"])[int(rows[i]["start"]):int(rows[i]["stop"])]
                        for i in query_ids])
    out_prob, _, _, labels = sb_model.classify_batch(wavs)
    assert list(labels) == words
    assert torch.allclose(out_prob, want, atol=ATOL)


def test_the_training_export_loads_with_encoder_classifier(trained):
    brain, _, export, _ = trained
    info = json.loads((export / "sbmeta.json").read_text())
    assert info["kind"] == "words" and info["words"] == [] and info["train_classes"] == [f"W{i}" for i in range(5)]
    assert info["head"] == type(brain.strategy.head).__name__
    sb_model = EncoderClassifier.from_hparams(source=str(export), savedir=str(export))
    wav = torch.randn(1, 8000) * 0.1
    brain.modules.eval()
    from speechbrain.dataio.batch import PaddedBatch

    with torch.no_grad():
        torch.manual_seed(0)
        want = brain.compute_forward(PaddedBatch([{"id": "a", "sig": wav[0]}]), None)
        torch.manual_seed(0)
        got = sb_model.encode_batch(wav).reshape(1, -1)
    assert torch.allclose(got, want, atol=1e-5)


def test_a_model_without_words_refuses_to_classify(trained):
    _, _, export, rows = trained
    model = load_word_model(export)
    with pytest.raises(ValueError, match="no word is enrolled"):
        model.classify([segment(next(iter(rows.values())))])
    with pytest.raises(ValueError, match="at least two words"):
        model.enrol({"W0": [segment(next(iter(rows.values())))]})


def test_commands_enrol_classify_evaluate(trained, corpus, tmp_path, capsys):
    _, _, export, rows = trained
    out = tmp_path / "mine"
    assert main(["words", "enrol", "--model", str(export), "--manifest", str(corpus), "--k", "2",
                 "--words", "W0,W1,W2", "--out", str(out)]) == 0
    assert "Enrolled 3 words" in capsys.readouterr().out
    info = json.loads((out / "sbmeta.json").read_text())
    assert info["words"] == ["W0", "W1", "W2"] and len(info["enrolments"][0]["words"]["W0"]) == 2
    files = sorted({r["wav"] for r in rows.values()})[:2]
    assert main(["words", "classify", "--model", str(out)] + files) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[1] in {"W0", "W1", "W2"} for line in lines)
    # the encoder was trained on these classes: evaluation refuses them unless told
    assert main(["words", "evaluate", "--model", str(export), "--data", str(corpus), "--way", "3",
                 "--shots", "1,2", "--query", "2", "--episodes", "20"]) == 2
    assert "trained on" in capsys.readouterr().err
    report = tmp_path / "r.json"
    assert main(["words", "evaluate", "--model", str(export), "--data", str(corpus), "--way", "3",
                 "--shots", "1,2", "--query", "2", "--episodes", "20", "--allow-seen-classes",
                 "--out", str(report)]) == 0
    assert "3-way 1-shot" in capsys.readouterr().out
    results = json.loads(report.read_text())["results"]
    assert set(results) == {"1", "2"} and results["1"]["episodes"] == 20
    assert 0.0 <= results["1"]["mean"] <= 1.0 and results["1"]["ci95"] >= 0.0


def test_loading_a_word_model_as_a_recognizer_says_what_it_is(trained):
    from sb_meta.adapt import load_model

    _, _, export, _ = trained
    with pytest.raises(ValueError, match="is a word model .*sb-meta words"):
        load_model(export)
