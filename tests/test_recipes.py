"""The recipes run every strategy from the command line and export a model."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = [
    "--number_of_epochs=1",
    "--episodes_per_epoch=1",
    "--meta_batch_tasks=2",
    "--k_support=2",
    "--k_query=2",
    "--inner_steps=1",
    "--noprogressbar",
]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    from sb_meta.data.synth import generate_corpus

    out = tmp_path_factory.mktemp("synth")
    generate_corpus(out, speakers=6, utts_per_speaker=5, seed=1, progress=False)
    return out


def run_recipe(recipe, args, cwd):
    cmd = [sys.executable, str(ROOT / "recipes" / recipe / "train.py"),
           str(ROOT / "recipes" / recipe / "hparams" / "crdnn_ctc_meta.yaml"), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize(
    "strategy", ["maml", "fomaml", "reptile", "metasgd", "anil", "joint", "finetune"]
)
def test_synthvoices_recipe_runs_every_strategy(tiny_corpus, tmp_path, strategy):
    out = tmp_path / "exp"
    run_recipe(
        "SynthVoices",
        [f"--data_folder={tiny_corpus}", f"--output_folder={out}",
         f"--meta_strategy={strategy}", *SMALL],
        cwd=tmp_path,
    )
    log = (out / "train_log.txt").read_text()
    assert "train loss" in log and "valid WER" in log and "test WER" in log
    info = json.loads((out / "pretrained" / "sbmeta.json").read_text())
    assert info["strategy"] == strategy


def test_unknown_strategy_on_the_command_line_lists_valid_ones(tiny_corpus, tmp_path):
    cmd = [sys.executable, str(ROOT / "recipes/SynthVoices/train.py"),
           str(ROOT / "recipes/SynthVoices/hparams/crdnn_ctc_meta.yaml"),
           f"--data_folder={tiny_corpus}", f"--output_folder={tmp_path}/x", "--meta_strategy=mamll"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr  # SpeechBrain logs the exception to stdout
    assert "unknown strategy 'mamll'; available: anil, finetune, fomaml, joint, maml" in out


def test_unknown_key_on_the_command_line_is_rejected(tiny_corpus, tmp_path):
    cmd = [sys.executable, str(ROOT / "recipes/SynthVoices/train.py"),
           str(ROOT / "recipes/SynthVoices/hparams/crdnn_ctc_meta.yaml"),
           f"--data_folder={tiny_corpus}", f"--output_folder={tmp_path}/x", "--inner_stepz=3"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "inner_stepz" in out and "inner_steps" in out


def test_an4_recipe_trains_tests_and_exports(an4_root, tmp_path):
    from speechbrain.inference.ASR import EncoderASR

    out = tmp_path / "exp"
    run_recipe(
        "AN4",
        [f"--data_folder={an4_root}", f"--output_folder={out}", "--meta_strategy=fomaml", *SMALL],
        cwd=tmp_path,
    )
    manifests = out / "manifests"
    assert sum(1 for _ in open(manifests / "test.csv")) == 131
    asr = EncoderASR.from_hparams(source=str(out / "pretrained"), savedir=str(out / "pretrained"))
    wav = next((pathlib.Path(an4_root) / "wav" / "an4test_clstk").rglob("*.sph"))
    assert isinstance(asr.transcribe_file(str(wav)), str)
