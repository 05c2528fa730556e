"""Tiny corpora in the original layouts the preparation scripts read."""

import numpy as np
import soundfile


def write_audio(path, frames=1600, fmt="FLAC"):
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (np.random.default_rng(0).standard_normal(frames) * 1000).astype("int16")
    soundfile.write(path, samples, 16000, format=fmt, subtype="PCM_16")


def make_an4(root):
    """Tiny AN4: train an1..an8 (speakers fabc, mdef, fghi, mjkl, 2 each), test an9, an10 (mtst)."""
    n = 1
    for split, folder, speakers in (
        ("train", "an4_clstk", ("fabc", "mdef", "fghi", "mjkl")),
        ("test", "an4test_clstk", ("mtst",)),
    ):
        lines = []
        for spk in speakers:
            for _ in range(2):
                utt = f"an{n}-{spk}-b"
                lines.append(f"<s> WORD{n} </s> ({utt})" if split == "train" else f"WORD{n} ({utt})")
                write_audio(root / "wav" / folder / spk / f"{utt}.sph", fmt="NIST")
                n += 1
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / f"an4_{split}.transcription").write_text("\n".join(lines) + "\n")
    return root


def make_libri(root, dev_clean=True, speakers_txt=False):
    """Tiny LibriSpeech: test-other speakers 11 (chapter 100), 22 (200); with ``dev_clean``
    dev-clean 33 (300); 3 utterances each; with ``speakers_txt`` a SPEAKERS.TXT."""
    splits = [("test-other", {"11": "100", "22": "200"})] + ([("dev-clean", {"33": "300"})] if dev_clean else [])
    for split, speakers in splits:
        for spk, chapter in speakers.items():
            folder = root / split / spk / chapter
            lines = []
            for i in range(3):
                utt = f"{spk}-{chapter}-{i:04d}"
                write_audio(folder / f"{utt}.flac")
                lines.append(f"{utt} SOME WORDS {i}")
            (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    if speakers_txt:
        (root / "SPEAKERS.TXT").write_text("11 | F | test-other | 1.0 | A\n22 | M | test-other | 1.0 | B\n")
    return root
