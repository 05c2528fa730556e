#!/usr/bin/env python3
"""Meta-train a speech recognizer over the speakers of the embedded synthetic
corpus (``sb-meta synth``).

To run::

    sb-meta synth --out data/synth --speakers 24 --utts-per-speaker 20
    python recipes/SynthVoices/train.py recipes/SynthVoices/hparams/crdnn_ctc_meta.yaml \
        --data_folder=data/synth --meta_strategy=fomaml --inner_steps=3

The models, the brain, the data pipeline and the training loop are the AN4
recipe's (``recipes/AN4/train.py``); only the data differ: the corpus already
holds SpeechBrain manifests (train/valid/test.csv).
"""

import pathlib

from sb_meta.recipe import run_main
from sb_meta.utils import load_script

an4 = load_script(pathlib.Path(__file__).resolve().parents[1] / "AN4" / "train.py", "sbmeta_recipe_an4")
dataio_prepare = an4.dataio_prepare


class ASR(an4.ASR):
    """The AN4 recipe's brain (CRDNN or Transformer, CTC head, optional attention decoder)."""


def prepare(hparams):
    """The synthetic corpus already has SpeechBrain manifests; check them."""
    folder = pathlib.Path(hparams["data_folder"])
    csvs = {split: folder / f"{split}.csv" for split in ("train", "valid", "test")}
    missing = [str(p) for p in csvs.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing manifests {missing}; create the corpus with `sb-meta synth --out {folder}`"
        )
    return csvs


def main(argv):
    """Train, test and export on the synthetic corpus; returns the trained brain."""
    return an4.main(argv, prepare_data=prepare, brain_class=ASR)


if __name__ == "__main__":
    run_main(main)
