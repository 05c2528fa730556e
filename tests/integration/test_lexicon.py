"""Lexicon-constrained CTC decoding (:mod:`sb_meta.adapt.lexicon`)."""


import pytest
import torch

from sb_meta.adapt.lexicon import LexiconDecoder, read_words

from helpers import tiny_asr as h
from sb_meta.adapt import Method

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = ["<blank>", " ", "A", "B", "N", "O"]


def frames(*steps, labels=LABELS):
    """Log-probabilities ``[1, T, V]``: each step a {label: log-prob} dict, -10 elsewhere."""
    x = torch.full((1, len(steps), len(labels)), -10.0)
    for t, step in enumerate(steps):
        for label, value in step.items():
            x[0, t, labels.index(label)] = value
    return x


def greedy(x, labels=LABELS):
    out, last = [], None
    for i in x[0].argmax(-1).tolist():
        if i != last and i != 0:
            out.append(labels[i])
        last = i
    return "".join(out)


def test_a_misspelling_becomes_the_closest_word_of_the_lexicon():
    # greedy reads "NA" (A slightly above O in the second frame): not a word
    x = frames({"N": 0.0}, {"A": -0.5, "O": -0.9}, {"<blank>": 0.0})
    assert greedy(x) == "NA"
    assert LexiconDecoder(LABELS, ["NO", "BAN"])(x, torch.tensor([1.0])) == ["NO"]


def test_words_run_together_are_split_and_the_last_word_is_closed():
    # no space emitted between or after the words: greedy reads one word "NONO"
    x = frames({"N": 0.0}, {"O": 0.0}, {"<blank>": 0.0}, {"N": 0.0}, {"O": 0.0})
    assert greedy(x) == "NONO"
    assert LexiconDecoder(LABELS, ["NO", "BAN"])(x, torch.tensor([1.0])) == ["NO NO"]


def test_padding_beyond_each_utterance_is_never_decoded():
    long = frames({"B": 0.0}, {"A": 0.0}, {"N": 0.0}, {"<blank>": 0.0})
    short = frames({"N": 0.0}, {"O": 0.0}, {"B": 0.0}, {"A": 0.0})  # "BA" lies in the padding
    dec = LexiconDecoder(LABELS, ["NO", "BAN", "A"])
    assert dec(torch.cat([long, short]), torch.tensor([1.0, 0.5])) == ["BAN", "NO"]


def test_bad_lexicons_and_labels_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"characters the model cannot emit: \['Z'\]"):
        LexiconDecoder(LABELS, ["NO", "ZOO"])
    with pytest.raises(ValueError, match="include the space"):
        LexiconDecoder([x for x in LABELS if x != " "], ["NO"])
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        LexiconDecoder(LABELS, str(tmp_path / "nowhere.txt"))
    (tmp_path / "m.csv").write_text("ID,words\na,NO\n")
    with pytest.raises(ValueError, match="no wrd column"):
        read_words(tmp_path / "m.csv")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="has no word"):
        read_words(tmp_path / "empty.txt")
    (tmp_path / "m.csv").write_text("ID,wrd\na,NO BAN\nb,NO\n")
    (tmp_path / "w.txt").write_text("NO\nBAN\n")
    assert read_words(tmp_path / "m.csv") == read_words(tmp_path / "w.txt") == ["BAN", "NO"]


setup = h.exported_fixture("lexicon")


def test_a_model_with_a_lexicon_only_says_its_words_and_adapted_copies_keep_it(setup, tmp_path, capsys):
    from sb_meta.adapt import load_model
    from sb_meta.cli import main

    model = load_model(setup["export"])
    rows = setup["rows"]
    wavs = [model.load_audio(r["wav"]) for r in rows[:6]]
    words = ["AB", "CA", "BC"]  # "BCA", "CAB"... are not words any more
    assert model.set_lexicon(words) is model
    hyps = model.transcribe_waveforms(wavs)
    assert any(hyps) and all(set(hyp.split()) <= set(words) for hyp in hyps)
    assert hyps == model.transcribe_waveforms(wavs, batch_size=1)  # batching changes nothing
    adapted = model.adapt(([r["wav"] for r in rows[:3]], [r["wrd"] for r in rows[:3]]), Method(steps=1, lr=0.01))
    assert adapted.decoder is model.decoder
    assert all(set(hyp.split()) <= set(words) for hyp in adapted.transcribe_waveforms(wavs))
    model.set_lexicon(None)
    assert model.decoder is None
    # the command line: transcribe and evaluate with --lexicon
    (tmp_path / "words.txt").write_text("AB\nCA\nBC\n")
    assert main(["transcribe", "--model", str(setup["export"]), "--lexicon", str(tmp_path / "words.txt"),
                 rows[0]["wav"]]) == 0
    text = capsys.readouterr().out.strip().split("\t")[1]
    assert set(text.split()) <= set(words)
    assert main(["evaluate", "--model", str(setup["export"]), "--data", str(setup["csv"]), "--k", "0",
                 "--repeats", "1", "--quiet", "--lexicon", str(setup["csv"]), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "results.json").is_file()
