"""Tiny word corpora and models for testing word strategies and word models.

Each "word" is a sequence of tones; a speaker shifts every pitch by its own
factor. Recordings sit inside longer files padded with noise, and the
manifests point at them with ``start`` / ``stop`` (samples), as the AN4 word
corpus does, so segment reading is exercised too.

Example
-------
>>> import tempfile
>>> csv = make_tone_words(tempfile.mkdtemp(), words=3, speakers=2, per_speaker=2)
>>> from sb_meta.data.manifest import read_manifest
>>> rows = read_manifest(csv)
>>> len(rows), sorted({r["word"] for r in rows}), rows[0]["start"] != "0"
(12, ['W0', 'W1', 'W2'], True)
"""

import csv
import pathlib

import numpy as np

from sb_meta.utils import safe_name

__all__ = ["make_tone_words", "TINY_WORD_YAML", "WORD_COLUMNS"]

WORD_COLUMNS = ("ID", "duration", "wav", "start", "stop", "word", "spk_id")
_FREQS = (300.0, 450.0, 600.0, 800.0, 1000.0, 1300.0, 1600.0, 2000.0)


def _word_tones(index):
    rng = np.random.default_rng([index, 0x70E5])
    return [float(_FREQS[i]) for i in rng.choice(len(_FREQS), size=3, replace=False)]


def make_tone_words(folder, words=6, speakers=3, per_speaker=3, seed=0, name="words.csv",
                    word_offset=0, speaker_offset=0):
    """Write a tone-word corpus and its manifest ``folder/<name>``; returns the manifest path.

    Arguments
    ---------
    folder : str or pathlib.Path
    words, speakers, per_speaker : int
        Classes, speakers, and recordings of each word by each speaker.
    seed : int
    name : str
        The manifest's file name.
    word_offset, speaker_offset : int
        First word / speaker index (so that several corpora have disjoint classes or speakers).
    """
    import soundfile

    folder = pathlib.Path(folder)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sr = 16000
    rows = []
    for s in range(speaker_offset, speaker_offset + speakers):
        shift = 0.85 + 0.1 * (s % 4)
        for w in range(word_offset, word_offset + words):
            for r in range(per_speaker):
                pieces = []
                for f in _word_tones(w):
                    t = np.arange(int(0.09 * sr)) / sr
                    pieces.append(0.4 * np.sin(2 * np.pi * f * shift * (1 + 0.02 * rng.standard_normal()) * t))
                word = np.concatenate(pieces)
                lead, tail = int(rng.integers(800, 3200)), int(rng.integers(800, 3200))
                wav = np.concatenate([np.zeros(lead), word, np.zeros(tail)])
                wav = (wav + 0.01 * rng.standard_normal(len(wav))).astype(np.float32)
                uid = f"s{s}_w{w}_{r}"
                path = folder / "wav" / safe_name(uid, "utterance ID", suffix=".wav")
                soundfile.write(str(path), wav, sr)
                rows.append({"ID": uid, "duration": f"{len(word) / sr:.3f}", "wav": str(path),
                             "start": lead, "stop": lead + len(word), "word": f"W{w}", "spk_id": f"s{s}"})
    path = folder / safe_name(name, "manifest")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(WORD_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


#: a tiny word encoder in the layout of ``recipes/AN4Words/hparams/*.yaml``
TINY_WORD_YAML = """\
seed: 0
sample_rate: 16000
n_mels: 20
emb_dim: 8
eval_way: 3
eval_shots: [1]
eval_query: 2
valid_episodes: 5
test_episodes: 5
checkpoints_to_keep: 1
compute_features: !new:speechbrain.lobes.features.Fbank
    sample_rate: !ref <sample_rate>
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.Xvector.Xvector
    in_channels: !ref <n_mels>
    activation: !name:torch.nn.LeakyReLU
    tdnn_blocks: 3
    tdnn_channels: [8, 8, 16]
    tdnn_kernel_sizes: [3, 3, 1]
    tdnn_dilations: [1, 2, 1]
    lin_neurons: !ref <emb_dim>
modules:
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
"""
