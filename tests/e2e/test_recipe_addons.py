"""Each add-on runs from a recipe by flag: its loss terms reach the train log, its
modules are checkpointed or exported as it declares (SpeechBrain's recipe layout,
the SynthVoices recipe on a tiny synthetic corpus)."""

import json

import torch

from helpers.recipes import ROOT, run_recipe
from helpers.tiny_asr import speechbrain_asr


def test_recipe_runs_with_dann_by_flag(synth_corpus, tmp_path):
    out = tmp_path / "exp"
    run_recipe(synth_corpus, out, "--meta_addons=dann", "--meta_strategy=joint", debug=False)
    log = (out / "train_log.txt").read_text()
    assert "train outer_dann_domain:" in log
    ckpt = next((out / "save").glob("CKPT*"))
    assert (ckpt / "sbmeta_addons.ckpt").is_file()  # the classifier is checkpointed ...
    state = torch.load(out / "pretrained" / "model.ckpt", weights_only=True)
    assert not any("sbmeta" in k or "classifier" in k for k in state)  # ... and not exported
    info = json.loads((out / "pretrained" / "sbmeta.json").read_text())
    assert info["meta_config"]["meta_addons"] == ["dann"]


def test_recipe_runs_with_augment_by_flag(synth_corpus, tmp_path):
    out = tmp_path / "exp"
    run_recipe(synth_corpus, out, "--meta_addons=augment")
    assert "train loss" in (out / "train_log.txt").read_text()


def test_recipe_exports_a_compressed_model_by_flag(synth_corpus, tmp_path):
    out = tmp_path / "exp"
    run_recipe(synth_corpus, out, "--meta_addons=compress")  # default: int8
    info = json.loads((out / "pretrained" / "sbmeta.json").read_text())
    assert info["compression"][0]["int8"]["model"]
    asr = speechbrain_asr(out / "pretrained")
    assert any(m._get_name().startswith("DynamicQuantized") for m in asr.mods.modules())
    wav = next(synth_corpus.rglob("*.wav"))
    assert isinstance(asr.transcribe_file(str(wav)), str)


def test_recipe_runs_with_distill_by_flag_and_its_yaml(synth_corpus, tmp_path):
    # the reusable YAML appended to the recipe's: its keys are then settable on the command line
    yaml = tmp_path / "with_distill.yaml"
    yaml.write_text((ROOT / "recipes/SynthVoices/hparams/crdnn_ctc_meta.yaml").read_text()
                    + "\n" + (ROOT / "hparams/addons/distill.yaml").read_text())
    out = tmp_path / "exp"
    run_recipe(synth_corpus, out, "--meta_addons=distill", "--distill_phases=[inner,outer]",
                       "--distill_seq_weight=0.5", yaml=yaml)
    log = (out / "train_log.txt").read_text()
    assert "train inner_distill_frame:" in log and "train outer_distill_frame:" in log
