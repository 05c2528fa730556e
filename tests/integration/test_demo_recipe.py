"""The demo's recipe, installed with the package (sb_meta/demo/), computes what the
SynthVoices recipe computes with crdnn_ctc_meta.yaml: the same model with the same
initial weights, the same features and tokens, the same loss and gradients. So the
demo's figures are the recipe's, and the two cannot drift apart unnoticed."""

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from sb_meta.demo import recipe as demo
from sb_meta.recipe import prepare_tokenizer

from helpers.recipes import ROOT, load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def build(brain_class, dataio, yaml, corpus, folder):
    with open(yaml, encoding="utf-8") as f:
        hp = load_hyperpyyaml(f, {"data_folder": str(corpus), "output_folder": str(folder),
                                  "meta_batch_tasks": 2, "k_support": 2, "k_query": 2})
    csvs = {split: corpus / f"{split}.csv" for split in ("train", "valid", "test")}
    prepare_tokenizer(hp, csvs["train"], folder / "save")
    data = dataio(hp, csvs)
    brain = brain_class(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                        run_opts={"device": "cpu", "noprogressbar": True})
    brain.init_optimizers()
    return brain, data


def test_the_demo_recipe_is_the_synthvoices_ctc_recipe(synth_corpus, tmp_path):
    synth = load_recipe("SynthVoices")
    ours, ours_data = build(demo.DemoASR, demo.dataio_prepare, demo.HPARAMS, synth_corpus, tmp_path / "demo")
    theirs, theirs_data = build(synth.ASR, synth.dataio_prepare,
                                ROOT / "recipes" / "SynthVoices" / "hparams" / "crdnn_ctc_meta.yaml",
                                synth_corpus, tmp_path / "synth")
    a, b = dict(ours.modules.named_parameters()), dict(theirs.modules.named_parameters())
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)  # the same seeded initialisation
    assert ours.hparams.tokenizer.lab2ind == theirs.hparams.tokenizer.lab2ind
    ep_ours = next(iter(ours.make_episode_loader(ours_data["train"], seed=3)))
    ep_theirs = next(iter(theirs.make_episode_loader(theirs_data["train"], seed=3)))
    for task_a, task_b in zip(ep_ours.tasks, ep_theirs.tasks):
        assert task_a.support_ids == task_b.support_ids
        torch.manual_seed(0)  # the same dropout masks
        pa = ours.compute_forward(task_a.support, sb.Stage.TRAIN)
        torch.manual_seed(0)
        pb = theirs.compute_forward(task_b.support, sb.Stage.TRAIN)
        la = ours.compute_objectives(pa, task_a.support, sb.Stage.TRAIN)
        lb = theirs.compute_objectives(pb, task_b.support, sb.Stage.TRAIN)
        torch.testing.assert_close(la, lb)
        ga = torch.autograd.grad(la, list(a.values()), allow_unused=True)
        gb = torch.autograd.grad(lb, list(b.values()), allow_unused=True)
        for x, y in zip(ga, gb):
            if x is not None:
                torch.testing.assert_close(x, y)
