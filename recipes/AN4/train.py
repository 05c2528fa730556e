#!/usr/bin/env python3
"""Meta-train a CRDNN-CTC recognizer over the speakers of CMU AN4.

To run (the AN4 root holds CMU's original ``etc/`` and ``wav/`` folders)::

    python recipes/AN4/train.py recipes/AN4/hparams/crdnn_ctc_meta.yaml \
        --data_folder=$SBMETA_AN4_ROOT --meta_strategy=fomaml --inner_steps=3

Manifests (``train.csv``, ``dev.csv`` with whole held-out training speakers,
``test.csv``) are written by ``an4_prepare.py`` beside this file.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from an4_prepare import prepare_an4  # noqa: E402

from sb_meta.asr import run_recipe  # noqa: E402


def prepare(hparams):
    """Write (or reuse) the AN4 manifests and return them by split."""
    folder = pathlib.Path(hparams["prepare_folder"])
    prepare_an4(
        data_folder=hparams["data_folder"],
        save_folder=str(folder),
        dev_speakers=hparams["dev_speakers"],
        seed=hparams["seed"],
    )
    return {"train": folder / "train.csv", "valid": folder / "dev.csv", "test": folder / "test.csv"}


if __name__ == "__main__":
    run_recipe(sys.argv[1:], prepare)
