"""Every command of the README runs: in a scratch folder, in the README's order, each as
printed, with flags appended only to shrink a training (argparse and SpeechBrain take a
flag's last value), and the README's Python blocks executed where they stand. A command
added to the README without a way to run it here fails the first test."""

import os
import subprocess
import sys

import pytest

from helpers import readme
from helpers.recipes import ROOT

#: how each README command is run: flags appended to shrink it, or the test that runs it
SHRINK = {
    "sb-meta synth --out data/synth --speakers 30 --utts-per-speaker 24": [],
    "python recipes/SynthVoices/train.py recipes/SynthVoices/hparams/crdnn_ctc_meta.yaml "
    "--data_folder=data/synth --meta_strategy=maml --inner_steps=3":
        ["--number_of_epochs=1", "--episodes_per_epoch=1", "--meta_batch_tasks=2", "--noprogressbar"],
    "sb-meta adapt --model results/SynthVoices/maml/1234/pretrained --support data/synth/test.csv "
    "--task spk024 --k 5 --steps 3 --out adapted/spk024": [],
    "sb-meta transcribe --model adapted/spk024 data/synth/wav/spk024/spk024_0020.wav": [],
    "sb-meta plugins --plugin ./signsgd.py": [],
}
ELSEWHERE = {
    "pip install .": "tests/e2e/test_wheel_install.py builds and installs the wheel of the checkout",
    "sb-meta demo --out demo_out": "tests/e2e/test_demo.py runs it with a tiny setting",
    "make demo": "test_the_make_targets_run_what_the_readme_says",
    "make test": "test_the_make_targets_run_what_the_readme_says (and CI runs it)",
}


def test_every_readme_command_has_a_way_to_run():
    assert set(readme.commands()) == set(SHRINK) | set(ELSEWHERE)


def test_the_make_targets_run_what_the_readme_says():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}

    def dry(target):  # what `make target` runs (-n), the venv taken as installed (-o)
        out = subprocess.run(["make", "--no-print-directory", "-n", "-o", ".venv/.sb-meta-installed", target],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
        return out.strip().splitlines()[-1]

    assert dry("demo") == ".venv/bin/sb-meta demo --out demo_out"  # the README's demo command
    assert dry("test") == ".venv/bin/python -m pytest -q"
    assert dry("test-fast") == ".venv/bin/python -m pytest -q tests/unit"
    assert "sphinx -W --keep-going" in dry("docs")


def test_the_readme_yaml_keys_are_meta_keys():
    import yaml

    from sb_meta.strategy import META_KEYS

    (block,) = readme.code_blocks("yaml")
    assert set(yaml.safe_load(block)) <= set(META_KEYS)


def run(command, cwd):
    """A README command in ``cwd``: ``sb-meta`` through this interpreter, ``python`` too."""
    import shlex

    args = shlex.split(command) + SHRINK[command]
    if args[0] == "sb-meta":
        args = [sys.executable, "-m", "sb_meta.cli", *args[1:]]
    elif args[0] == "python":
        args[0] = sys.executable
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, f"{command}\n{(proc.stdout + proc.stderr)[-3000:]}"
    return proc.stdout


@pytest.mark.usefixtures("one_thread")
def test_the_readme_walkthrough(tmp_path, monkeypatch):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    monkeypatch.chdir(tmp_path)
    python = readme.code_blocks("python")
    (plugin,) = [b for b in python if b.startswith("# signsgd.py")]
    (adapting,) = [b for b in python if "load_model" in b]
    (tmp_path / "signsgd.py").write_text(plugin)
    outputs = {}
    for command in readme.commands():
        if command in SHRINK:
            outputs[command] = run(command, tmp_path)
        if command.startswith("sb-meta transcribe"):  # the Python block follows the CLI one
            exec(compile(adapting, "README.md (python)", "exec"), {})
            assert (tmp_path / "adapted" / "spk025" / "sbmeta.json").is_file()
    assert (tmp_path / "adapted" / "spk024" / "hyperparams.yaml").is_file()
    listing = outputs["sb-meta plugins --plugin ./signsgd.py"]
    assert any(line.split()[:2] == ["strategy", "signsgd"] for line in listing.splitlines())
