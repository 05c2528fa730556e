"""The embedded espeak-ng corpus generator."""

import numpy as np
import pytest
import soundfile

from sb_meta.cli import main
from sb_meta.data.manifest import read_manifest
from sb_meta.data.synth import generate_corpus, list_voices, make_speakers, synthesize


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("c1")
    summary = generate_corpus(out, speakers=6, utts_per_speaker=3, seed=4, progress=False)
    return out, summary


def test_manifests_columns_durations_and_sample_rate(corpus):
    out, summary = corpus
    for split in ("train", "valid", "test"):
        rows = read_manifest(out / f"{split}.csv")
        assert list(rows[0]) == ["ID", "duration", "wav", "spk_id", "wrd", "lang", "voice"]
        assert len(rows) == summary[split]["utterances"]
        for row in rows:
            info = soundfile.info(row["wav"])
            assert info.samplerate == 16000 and info.channels == 1
            assert float(row["duration"]) == pytest.approx(info.frames / 16000, abs=1e-3)
            assert row["wrd"] == row["wrd"].upper() and 2 <= len(row["wrd"].split()) <= 6


def test_speakers_are_disjoint_across_splits(corpus):
    out, summary = corpus
    spk = {s: {r["spk_id"] for r in read_manifest(out / f"{s}.csv")} for s in ("train", "valid", "test")}
    assert not spk["train"] & spk["valid"] and not spk["train"] & spk["test"]
    assert not spk["valid"] & spk["test"]
    assert sum(len(v) for v in spk.values()) == 6
    assert summary["train"]["speakers"] == 4


def test_same_seed_gives_identical_corpus_and_other_seed_differs(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    generate_corpus(again, speakers=6, utts_per_speaker=3, seed=4, progress=False)
    for split in ("train", "test"):
        a = (out / f"{split}.csv").read_text().replace(str(out), "X")
        b = (again / f"{split}.csv").read_text().replace(str(again), "X")
        assert a == b
    first = read_manifest(out / "train.csv")[0]["wav"]
    assert open(first, "rb").read() == open(first.replace(str(out), str(again)), "rb").read()
    other = tmp_path / "other"
    generate_corpus(other, speakers=6, utts_per_speaker=3, seed=5, progress=False)
    assert (other / "train.csv").read_text().replace(str(other), "X") != a


def test_at_least_60_distinct_speakers():
    specs = make_speakers(80, langs=("en", "de"), seed=0)
    assert len({s.config for s in specs}) == 80
    assert len(list_voices()) >= 60


def test_speakers_sound_different_for_the_same_text():
    specs = make_speakers(4, seed=0, channel=False)
    waves = [synthesize("seven red houses", s.voice, s.rate, s.pitch, s.pitch_range)[0] for s in specs]
    assert len({len(w) for w in waves}) > 1 or any(not np.array_equal(waves[0], w) for w in waves[1:])
    # different pitch settings change the spectrum's centroid
    def centroid(w):
        spec = np.abs(np.fft.rfft(w.astype(np.float64)))
        return float((spec * np.arange(len(spec))).sum() / spec.sum() / len(spec))
    assert len({round(centroid(w), 3) for w in waves}) == len(waves)


def test_multilingual_corpus(tmp_path):
    generate_corpus(tmp_path, speakers=4, utts_per_speaker=2, langs="en,de", progress=False,
                    valid_speakers=1, test_speakers=1)
    rows = sum((read_manifest(tmp_path / f"{s}.csv") for s in ("train", "valid", "test")), [])
    assert {r["lang"] for r in rows} == {"en", "de"}
    assert all(r["voice"].startswith(r["lang"] + "+") for r in rows)


def test_named_wordlist(tmp_path):
    generate_corpus(tmp_path, speakers=3, utts_per_speaker=3, wordlist="digits", progress=False)
    digits = {"ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE", "OH"}
    words = {w for r in read_manifest(tmp_path / "train.csv") for w in r["wrd"].split()}
    assert words <= digits


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(speakers=2), "speakers must be an integer >= 3"),
        (dict(utts_per_speaker=0), "utts_per_speaker must be"),
        (dict(langs=["xx"]), r"unknown language\(s\) \['xx'\]"),
        (dict(speakers=3, valid_speakers=2), "leaves 0 training speakers"),
        (dict(wordlist="nope"), "no word list named 'nope'"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    args = dict(speakers=4, utts_per_speaker=1, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        generate_corpus(tmp_path, **args)


def test_cli_synth_prints_the_task_summary(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--speakers", "5", "--utts-per-speaker", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "spk_ids" in out and "hours" in out
    assert main(["synth", "--out", str(tmp_path), "--speakers", "2", "--quiet"]) == 2
    assert "speakers must be" in capsys.readouterr().err


def test_espeak_state_does_not_leak_between_utterances():
    # espeak-ng keeps function-level statics (pitch flutter phase...) that no API
    # resets; the private per-utterance library copy must make audio reproducible
    a, sr = synthesize("red house seven", "en+m3", seed=1)
    synthesize("bonjour le monde", "fr+f2", rate=300, pitch=90, seed=2)
    b, _ = synthesize("red house seven", "en+m3", seed=1)
    assert sr == 22050 and np.array_equal(a, b)


def test_manifest_header_and_wav_layout(corpus):
    out, _ = corpus
    header = (out / "train.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "ID,duration,wav,spk_id,wrd,lang,voice"
    for row in read_manifest(out / "valid.csv"):
        assert soundfile.info(row["wav"]).subtype == "PCM_16"
        assert row["wav"].endswith(f"/wav/{row['spk_id']}/{row['ID']}.wav")
        assert row["ID"].startswith(row["spk_id"] + "_")


def test_wordlists_and_many_speakers():
    from sb_meta.data.synth import available_languages, load_wordlist

    assert {"en", "de", "fr", "es", "it"} <= set(available_languages())
    assert len(load_wordlist("en")) >= 400
    assert all(len(load_wordlist(lang)) >= 150 for lang in ("de", "fr", "es", "it"))
    specs = make_speakers(300, langs=["en", "fr"], seed=1)
    assert len({s.config for s in specs}) == 300
    assert make_speakers(80, seed=5) == make_speakers(80, seed=5)


def test_unknown_language_message_lists_available(tmp_path):
    with pytest.raises(ValueError) as err:
        generate_corpus(tmp_path, speakers=3, langs=["xx"], progress=False)
    assert "'en'" in str(err.value) and "'de'" in str(err.value)
    assert not (tmp_path / "train.csv").exists()


def test_the_engine_lives_in_its_own_module():
    from sb_meta.data import espeak, synth

    assert synth.synthesize is espeak.synthesize and synth.list_voices is espeak.list_voices
    assert synth.load_wordlist is espeak.load_wordlist


@pytest.fixture(scope="module")
def word_corpus(tmp_path_factory):
    from sb_meta.data.synth import generate_word_corpus

    out = tmp_path_factory.mktemp("words")
    summary = generate_word_corpus(out, words=10, voices=10, seed=2, progress=False, exclude=["seven"])
    return out, summary


def test_single_word_corpus_is_words_by_voices_split_by_class_and_speaker(word_corpus):
    out, summary = word_corpus
    rows = {s: read_manifest(out / f"{s}.csv") for s in ("train", "valid", "test")}
    assert list(rows["train"][0]) == ["ID", "duration", "wav", "start", "stop", "word", "spk_id", "voice"]
    words = {s: {r["word"] for r in v} for s, v in rows.items()}
    voices = {s: {r["spk_id"] for r in v} for s, v in rows.items()}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not words[a] & words[b] and not voices[a] & voices[b]
    for split, v in rows.items():
        assert len(v) == len(words[split]) * len(voices[split]) == summary[split]["recordings"]
        assert len({(r["word"], r["spk_id"]) for r in v}) == len(v)  # every word once by every voice
    assert (len(words["train"]), len(voices["train"])) == (7, 7)
    assert "SEVEN" not in set().union(*words.values())
    assert all(w == w.upper() and " " not in w for w in set().union(*words.values()))
    for row in rows["test"][:3]:
        info = soundfile.info(row["wav"])
        assert info.samplerate == 16000 and int(row["start"]) == 0 and int(row["stop"]) == info.frames
        assert float(row["duration"]) == pytest.approx(info.frames / 16000, abs=1e-3)
        assert 0.1 < float(row["duration"]) < 2.0


def test_single_word_corpus_is_reproducible_and_checked(word_corpus, tmp_path):
    from sb_meta.data.synth import generate_word_corpus

    out, _ = word_corpus
    again = tmp_path / "again"
    generate_word_corpus(again, words=10, voices=10, seed=2, progress=False, exclude=["seven"])
    a = (out / "valid.csv").read_text().replace(str(out), "X")
    assert a == (again / "valid.csv").read_text().replace(str(again), "X")
    with pytest.raises(ValueError, match="words must be an integer >= 3"):
        generate_word_corpus(tmp_path / "bad", words=2, voices=5, progress=False)


def test_cli_words_synth(tmp_path, capsys):
    assert main(["words", "synth", "--out", str(tmp_path), "--words", "5", "--voices", "5", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train: 9 recordings, 3 words, 3 voices" in out
