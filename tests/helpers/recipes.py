"""Short runs of the repository's recipes, for the tests that train one."""

import pathlib
import subprocess
import sys

from sb_meta.utils import load_script

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: one epoch of one tiny episode: the smallest meta-training run
SMALL = ["--number_of_epochs=1", "--episodes_per_epoch=1", "--meta_batch_tasks=2",
         "--k_support=2", "--k_query=2", "--inner_steps=1", "--noprogressbar"]
#: SpeechBrain's debug mode: a batch per stage, no checkpoints (the recipes' CI runs)
DEBUG = ["--debug", "--debug_batches=1", "--debug_epochs=1", "--meta_batch_tasks=2",
         "--k_support=2", "--k_query=2", "--noprogressbar"]


def run_recipe(corpus, out, *args, yaml=None, env=None, debug=True):
    """One short run of the SynthVoices recipe in a subprocess, as a user types it
    (``--debug``: SpeechBrain's few batches, no checkpoints; ``debug=False`` checkpoints)."""
    yaml = yaml or ROOT / "recipes" / "SynthVoices" / "hparams" / "crdnn_ctc_meta.yaml"
    cmd = [sys.executable, str(ROOT / "recipes" / "SynthVoices" / "train.py"), str(yaml),
           f"--data_folder={corpus}", f"--output_folder={out}", *SMALL, *args] + (["--debug"] if debug else [])
    proc = subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def load_recipe(recipe):
    """``recipes/<recipe>/train.py`` as a module."""
    return load_script(ROOT / "recipes" / recipe / "train.py", f"sbmeta_test_recipe_{recipe}")


def train_in_process(recipe, args, yaml="crdnn_ctc_meta.yaml"):
    """The recipe's ``main`` in this process (what ``python train.py`` runs, without
    the seconds of start-up a subprocess costs); returns the trained brain."""
    return load_recipe(recipe).main([str(ROOT / "recipes" / recipe / "hparams" / yaml), *args])
