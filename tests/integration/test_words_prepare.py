"""Cutting word segments out of AN4-layout utterances by CTC forced alignment.

The mechanics run on a tiny AN4 layout of tone "utterances" (each character a
tone, words separated by silence) with an oracle aligner that hears the tones;
the real corpus is read when $SBMETA_AN4_ROOT is set.
"""

import os
import pathlib

import numpy as np
import pytest
import soundfile
import speechbrain as sb
import torch
from speechbrain.dataio.encoder import CTCTextEncoder

from sb_meta.data.manifest import read_manifest
from sb_meta.episodes import EpisodeSampler
from sb_meta.utils import load_script

ROOT = pathlib.Path(__file__).resolve().parents[2]
PREP = load_script(ROOT / "recipes" / "AN4Words" / "an4words_prepare.py", "sbmeta_an4words_prepare_tests")
RECIPE = load_script(ROOT / "recipes" / "AN4Words" / "train.py", "sbmeta_an4words_recipe_prep_tests")

SR = 16000
FREQ = {"A": 400.0, "B": 700.0, "C": 1000.0}
CHAR, GAP = 1600, 800  # samples per character tone, silence around and between words


def tone_utterance(text, rng):
    """The waveform of ``text`` and the true (start, stop) of each word, in samples."""
    pieces, bounds, pos = [np.zeros(GAP)], [], GAP
    for w, word in enumerate(text.split()):
        if w:
            pieces.append(np.zeros(GAP))
            pos += GAP
        start = pos
        for c in word:
            t = np.arange(CHAR) / SR
            pieces.append(0.4 * np.sin(2 * np.pi * FREQ[c] * t))
            pos += CHAR
        bounds.append((start, pos))
    pieces.append(np.zeros(GAP))
    wav = np.concatenate(pieces)
    return (wav + 0.003 * rng.standard_normal(len(wav))).astype(np.float32), bounds


class OracleAligner:
    """A CTC 'model' that hears the tones: per 20-ms frame, the character whose
    frequency dominates the frame, or blank/space in silence."""

    sample_rate = SR

    def __init__(self):
        self.tokenizer = CTCTextEncoder()
        self.tokenizer.insert_blank("<blank>", index=0)
        for c in "ABC ":
            self.tokenizer.add_label(c)

    def load_audio(self, path):
        return sb.dataio.dataio.read_audio(str(path))

    def log_probs(self, wavs, lens):
        wav = wavs[0]
        hop = 320
        frames = wav[: len(wav) // hop * hop].reshape(-1, hop)
        spec = torch.fft.rfft(frames, dim=-1).abs()
        freqs = torch.fft.rfftfreq(hop, 1 / SR)
        probs = torch.full((frames.shape[0], 5), 0.01)
        loud = frames.pow(2).mean(-1) > 1e-3
        for t in range(frames.shape[0]):
            if loud[t]:
                peak = float(freqs[spec[t].argmax()])
                c = min(FREQ, key=lambda k: abs(FREQ[k] - peak))
                probs[t, self.tokenizer.lab2ind[c]] = 0.7
                probs[t, 0] = 0.25
            else:
                probs[t, 0], probs[t, 4] = 0.6, 0.35
        return torch.log(probs / probs.sum(-1, keepdim=True)).unsqueeze(0)


WORDS = ["AB", "CA", "BC", "ABC", "CB", "BAC", "AC", "CAB"]


def make_layout(root, rng):
    """A tiny AN4 layout: 6 training speakers, 2 test speakers; returns the true word bounds."""
    (root / "etc").mkdir(parents=True)
    truth = {}
    for split, folder, speakers, tags in (("train", "an4_clstk", ["fa", "fb", "mc", "md", "me", "mf"], True),
                                          ("test", "an4test_clstk", ["ft", "mt"], False)):
        lines = []
        for s, spk in enumerate(speakers):
            (root / "wav" / folder / spk).mkdir(parents=True)
            for u in range(5):
                n = 1 if u == 0 else 3
                text = " ".join(rng.choice(WORDS, size=n, replace=False))
                utt = f"an{len(truth) + 1}-{spk}-b"
                wav, bounds = tone_utterance(text, rng)
                soundfile.write(str(root / "wav" / folder / spk / f"{utt}.sph"), wav, SR,
                                format="NIST", subtype="PCM_16")
                truth[utt] = bounds
                lines.append(f"<s> {text} </s> ({utt})" if tags else f"{text} ({utt})")
        (root / "etc" / f"an4_{split}.transcription").write_text("\n".join(lines) + "\n")
    return truth


SMALL = dict(extra_test_speakers=1, valid_speakers=1, test_classes=2, valid_classes=2,
             min_test_examples=2, min_valid_examples=2, min_train_examples=2, min_confidence=0.3)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("an4")
    truth = make_layout(root, rng)
    out = root / "words"
    report = PREP.prepare_an4words(root, None, out, aligner=OracleAligner(), progress=False, **SMALL)
    return root, out, report, truth


def test_segments_cover_their_word_and_not_the_neighbours(prepared):
    _, out, report, truth = prepared
    rows = read_manifest(out / "segments.csv")
    assert len(rows) == sum(len(b) for b in truth.values()) == report["segments_aligned"]
    for row in rows:
        bounds = truth[row["utt"]]
        i = int(row["ID"].rsplit("_w", 1)[1])
        start, stop = int(row["start"]), int(row["stop"])
        lo, hi = bounds[i]
        assert start <= lo + 320 and stop >= hi - 320, row  # the whole word, within a frame
        if i > 0:
            assert start >= bounds[i - 1][1], row  # not into the previous word
        if i + 1 < len(bounds):
            assert stop <= bounds[i + 1][0], row  # nor into the next
        assert float(row["duration"]) == pytest.approx((stop - start) / SR, abs=1e-3)
        assert float(row["confidence"]) > 0.5 and row["recognized"] == row["word"]


def test_manifests_split_classes_and_speakers(prepared):
    _, out, report, _ = prepared
    splits = {s: read_manifest(out / f"{s}.csv") for s in ("train", "valid", "test")}
    assert list(splits["train"][0])[:7] == ["ID", "duration", "wav", "start", "stop", "word", "spk_id"]
    classes = {s: {r["word"] for r in rows} for s, rows in splits.items()}
    speakers = {s: {r["spk_id"] for r in rows} for s, rows in splits.items()}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not classes[a] & classes[b] and not speakers[a] & speakers[b]
    assert {"ft", "mt"} <= speakers["test"]  # AN4's test speakers are test speakers
    assert all(len(c) for c in classes.values())
    assert report["splits"]["test"]["segments"] == len(splits["test"])
    # a segment reads as SpeechBrain reads it
    row = splits["test"][0]
    sig = sb.dataio.dataio.read_audio({"file": row["wav"], "start": int(row["start"]), "stop": int(row["stop"])})
    assert sig.shape[0] == int(row["stop"]) - int(row["start"])


def test_the_sampler_never_mixes_meta_train_and_meta_test_classes(prepared):
    _, out, _, _ = prepared
    train = read_manifest(out / "train.csv")
    test_classes = {r["word"] for r in read_manifest(out / "test.csv")}
    train_classes = {r["word"] for r in train}
    sampler = EpisodeSampler(train, task_column="word", k_support=1, k_query=0,
                             meta_batch_tasks=min(2, len(train_classes)), episodes_per_epoch=20, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for episode in sampler:
            names = {t.name for t in episode.tasks}
            assert names <= train_classes and not names & test_classes
            assert {t.rows[i]["word"] for t in episode.tasks for i in t.support_ids} <= train_classes


def test_the_recipe_refuses_manifests_sharing_classes(prepared, tmp_path):
    _, out, _, _ = prepared
    rows = read_manifest(out / "test.csv")
    leak = tmp_path / "train.csv"
    PREP.write_segments(leak, read_manifest(out / "train.csv") + [dict(rows[0], ID="leak", spk_id="zz")])
    csvs = {"train": [leak], "valid": [out / "valid.csv"], "test": [out / "test.csv"]}
    with pytest.raises(RECIPE.RecipeError, match="train and test manifests share 1 classes"):
        RECIPE.check_disjoint(csvs)


def test_preparation_is_reused_when_nothing_changed(prepared):
    root, out, report, _ = prepared
    again = PREP.prepare_an4words(root, None, out, aligner=OracleAligner(), progress=False, **SMALL)
    assert again == report
    with pytest.raises(KeyError, match="unknown option"):
        PREP.prepare_an4words(root, None, out, aligner=OracleAligner(), min_confidenze=0.1)


def test_real_an4_utterances_and_single_word_commands(an4_root):
    rows = PREP.read_an4(an4_root)
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 948 and len(rows) == 948 + 130
    assert len({r["spk_id"] for r in train}) == 74 and len({r["spk_id"] for r in rows if r["split"] == "test"}) == 10
    assert len({w for r in train for w in r["wrd"].split()}) == 99
    single = {}
    for r in train:
        if len(r["wrd"].split()) == 1:
            single[r["wrd"]] = single.get(r["wrd"], 0) + 1
    # the 103 single-word command utterances, and one "THIRTY"
    assert single == {"YES": 21, "REPEAT": 17, "STOP": 16, "NO": 16, "HELP": 12, "START": 11, "GO": 10,
                      "THIRTY": 1}


def test_real_an4_alignment_is_confident(an4_root):
    folder = os.environ.get("SBMETA_AN4WORDS_ALIGNER")
    if not folder:
        pytest.skip("SBMETA_AN4WORDS_ALIGNER is not set (an export of the AN4 CTC recipe)")
    aligner = PREP.load_aligner(folder)
    rows = [r for r in PREP.read_an4(an4_root) if r["split"] == "test"][:10]
    confidences = []
    for row in rows:
        words = PREP.align_words(aligner, aligner.load_audio(row["wav"]), row["wrd"])
        assert [w["word"] for w in words] == row["wrd"].split()
        assert all(0 <= w["start"] < w["stop"] for w in words)
        assert all(a["stop"] <= b["start"] for a, b in zip(words, words[1:]))  # in order, no overlap
        confidences += [w["confidence"] for w in words]
    # most words of unseen (test) speakers are aligned confidently (the corpus keeps >= 0.5)
    assert np.mean(np.array(confidences) >= 0.5) > 0.5


@pytest.mark.parametrize("yaml_name", ["protonet.yaml", "matching.yaml", "finetune_classifier.yaml"])
def test_the_recipe_trains_tests_and_exports_on_prepared_manifests(prepared, tmp_path, yaml_name):
    from sb_meta.words import load_word_model

    root, out, _, _ = prepared
    brain = RECIPE.main([
        str(ROOT / "recipes" / "AN4Words" / "hparams" / yaml_name), f"--data_folder={root}",
        f"--prepare_folder={out}", f"--output_folder={tmp_path / 'exp'}", "--number_of_epochs=1",
        "--episodes_per_epoch=2", "--meta_batch_tasks=2", "--k_support=1", "--k_query=1",
        "--eval_way=2", "--eval_shots=[1]", "--eval_query=1", "--valid_query=1", "--valid_episodes=3",
        "--test_episodes=3", "--emb_dim=16", "--noprogressbar",
    ])
    assert set(brain.test_results) == {1} and brain.test_results[1]["episodes"] == 3
    log = (tmp_path / "exp" / "train_log.txt").read_text()
    assert "acc_2w1s" in log and "Epoch loaded: 1" in log
    model = load_word_model(tmp_path / "exp" / "pretrained")
    assert model.strategy == brain.strategy.name and model.head.embedding_dim == 16
    assert model.train_classes == sorted({r["word"] for r in read_manifest(out / "train.csv")})
