#!/usr/bin/env python3
"""Meta-train a CRDNN-CTC recognizer over the speakers of the embedded
synthetic corpus (``sb-meta synth``).

To run::

    sb-meta synth --out data/synth --speakers 24 --utts-per-speaker 20
    python recipes/SynthVoices/train.py recipes/SynthVoices/hparams/crdnn_ctc_meta.yaml \
        --data_folder=data/synth --meta_strategy=fomaml --inner_steps=3

The brain is :class:`sb_meta.asr.CTCASRBrain` (a ``MetaBrain`` with the
recipe's ``compute_forward`` / ``compute_objectives``).
"""

import pathlib
import sys

from sb_meta.asr import run_recipe


def prepare(hparams):
    """The synthetic corpus already has SpeechBrain manifests; check them."""
    folder = pathlib.Path(hparams["data_folder"])
    csvs = {split: folder / f"{split}.csv" for split in ("train", "valid", "test")}
    missing = [str(p) for p in csvs.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing manifests {missing}; create the corpus with "
            f"`sb-meta synth --out {folder}`"
        )
    return csvs


if __name__ == "__main__":
    run_recipe(sys.argv[1:], prepare)
