"""The documentation's "add sb-meta to your own SpeechBrain recipe" diff
(docs/meta-training.md), applied exactly as printed to a minimal SpeechBrain recipe
written without sb-meta in mind (tests/data/plain_recipe), meta-trains."""

import pathlib
import re
import shutil
import subprocess
import sys

import pytest


ROOT = pathlib.Path(__file__).resolve().parents[2]
from helpers import tiny_asr as h


def docs_diff():
    text = (ROOT / "docs" / "meta-training.md").read_text()
    marker = text.index("<!-- add-sbmeta-diff -->")
    match = re.search(r"```diff\n(.*?)```", text[marker:], re.S)
    assert match, "the documentation's diff block is missing"
    return match.group(1)


def run(recipe, csv, out):
    cmd = [sys.executable, str(recipe / "train.py"), str(recipe / "hparams.yaml"),
           f"--train_csv={csv}", f"--output_folder={out}", "--noprogressbar",
           "--ckpt_interval_steps=1"]
    return subprocess.run(cmd, cwd=recipe, capture_output=True, text=True, timeout=600)


def test_the_documented_diff_turns_a_speechbrain_recipe_into_a_meta_learning_one(tmp_path):
    csv = h.make_corpus(tmp_path / "corpus", speakers=(("s0", 5), ("s1", 5), ("s2", 5)))
    recipe = tmp_path / "recipe"
    shutil.copytree(ROOT / "tests" / "data" / "plain_recipe", recipe)
    plain = run(recipe, csv, tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr[-2000:]

    (tmp_path / "add.diff").write_text(docs_diff())
    applied = subprocess.run(["git", "apply", "--verbose", str(tmp_path / "add.diff")], cwd=recipe,
                             capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    assert "class ASR(sb_meta.MetaBrain):" in (recipe / "train.py").read_text()
    meta = run(recipe, csv, tmp_path / "meta")
    assert meta.returncode == 0, meta.stderr[-2000:]
    log = (tmp_path / "meta" / "log.txt").read_text()
    assert "Going into epoch 1" in log and "MetaBrain" not in meta.stderr
    saved = (tmp_path / "meta" / "hyperparams.yaml").read_text()
    assert "meta_strategy: fomaml" in saved
    # SpeechBrain's own checkpoints, now holding the episode stream: meta-trained
    ckpts = sorted((tmp_path / "meta" / "save").glob("CKPT*"))
    assert ckpts and (ckpts[-1] / "episodes-TRAIN.ckpt").is_file()
    plain_ckpts = sorted((tmp_path / "plain" / "save").glob("CKPT*"))
    assert plain_ckpts and not (plain_ckpts[-1] / "episodes-TRAIN.ckpt").exists()
