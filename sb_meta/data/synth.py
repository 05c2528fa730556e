"""An embedded, offline, multi-speaker synthetic speech corpus.

Speech is synthesised with espeak-ng (:mod:`sb_meta.data.espeak`). A *speaker*
is a language, an espeak voice variant (``voices/!v``), a base pitch, a
speaking rate, a pitch range and, optionally, a recording *channel* (spectral
tilt, band limitation, room reverberation and additive white or pink noise at
a speaker-specific SNR): :mod:`sb_meta.data.speakers`, whose public names this
module re-exports. Everything is drawn from a seed, so the same seed gives
byte-identical manifests and audio.

Two corpora are generated: :func:`generate_corpus` (sentences of 2 to 6 words
per utterance, SpeechBrain's ``ID,duration,wav,spk_id,wrd`` manifests) and
:func:`generate_word_corpus` (one word per recording, many words x many
voices, the word manifests of few-shot spoken-term recognition:
``ID,duration,wav,start,stop,word,spk_id``).
"""

import csv
import pathlib
import re

import numpy as np
import soundfile

from sb_meta.data.espeak import (  # noqa: F401 - synthesize / list_voices are part of this module's API
    SAMPLE_RATE,
    WORDLIST_DIR,
    available_languages,
    list_voices,
    load_wordlist,
    synthesize,
)
from sb_meta.data.manifest import write_manifest
from sb_meta.data.speakers import (  # noqa: F401 - the speakers and channels are part of this module's API
    ChannelSpec,
    SpeakerSpec,
    apply_channel,
    check_langs,
    make_speakers,
    render_utterance,
)
from sb_meta.utils import atomic_open, safe_name

__all__ = ["generate_corpus", "generate_word_corpus", "list_voices", "available_languages",
           "make_speakers", "synthesize", "apply_channel"]

SPLITS = ("train", "valid", "test")


def _utterance_text(words, spk, utt_index):
    rng = np.random.default_rng([spk.seed, utt_index, 0x7E47])
    n = int(rng.integers(2, 7))
    return " ".join(words[i] for i in rng.choice(len(words), size=n, replace=False))


# --------------------------------------------------------------------------- corpus


def _split_sizes(speakers, valid_speakers, test_speakers):
    if valid_speakers is None:
        valid_speakers = max(1, round(0.1 * speakers))
    if test_speakers is None:
        test_speakers = max(1, round(0.2 * speakers))
    for name, value in (("valid_speakers", valid_speakers), ("test_speakers", test_speakers)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    n_train = speakers - int(valid_speakers) - int(test_speakers)
    if n_train < 1:
        raise ValueError(
            f"speakers={speakers} with valid_speakers={valid_speakers} and "
            f"test_speakers={test_speakers} leaves {n_train} training speakers; "
            f"at least 1 is needed"
        )
    return n_train, int(valid_speakers), int(test_speakers)


def _check_counts(speakers, utts_per_speaker):
    if int(speakers) != speakers or speakers < 3:
        raise ValueError(
            f"speakers must be an integer >= 3 (one each for train, valid and test), got {speakers!r}"
        )
    if int(utts_per_speaker) != utts_per_speaker or utts_per_speaker < 1:
        raise ValueError(f"utts_per_speaker must be an integer >= 1, got {utts_per_speaker!r}")


def _wordlists(langs, wordlist):
    """``{lang: words}``: each language's own list, or the list named ``wordlist`` for all."""
    if wordlist is None:
        return {lang: load_wordlist(lang) for lang in langs}
    if not (WORDLIST_DIR / f"{wordlist}.txt").is_file():
        names = sorted(p.stem for p in WORDLIST_DIR.glob("*.txt"))
        raise ValueError(f"no word list named {wordlist!r}; available: {names}")
    return {lang: load_wordlist(wordlist) for lang in langs}


def _synthesise_sentences(out_dir, specs, split_of, wordlists, utts_per_speaker, progress):
    """Write every speaker's wavs under ``out_dir/wav``; returns the manifest rows per split."""
    from tqdm import tqdm

    rows = {split: [] for split in SPLITS}
    width = max(4, len(str(utts_per_speaker - 1)))
    bar = tqdm(total=len(specs) * utts_per_speaker, desc="synthesising", unit="utt", disable=not progress)
    try:
        for spk, split in zip(specs, split_of):
            spk_dir = out_dir / "wav" / safe_name(spk.spk_id, "speaker")
            spk_dir.mkdir(parents=True, exist_ok=True)
            for u in range(utts_per_speaker):
                text = _utterance_text(wordlists[spk.lang], spk, u)
                wav = render_utterance(spk, text, u)
                uid = f"{spk.spk_id}_{u:0{width}d}"
                path = spk_dir / safe_name(uid, "utterance ID", suffix=".wav")
                soundfile.write(str(path), wav, SAMPLE_RATE, subtype="PCM_16")
                rows[split].append(
                    {
                        "ID": uid,
                        "duration": len(wav) / SAMPLE_RATE,
                        "wav": str(path),
                        "spk_id": spk.spk_id,
                        "wrd": text.upper(),
                        "lang": spk.lang,
                        "voice": spk.voice,
                    }
                )
                bar.update(1)
    finally:
        bar.close()
    return rows


def _write_sentence_manifests(out_dir, rows):
    """Write ``<split>.csv`` for every split; returns :func:`generate_corpus`'s summary."""
    summary = {}
    for split in SPLITS:
        write_manifest(out_dir / f"{split}.csv", rows[split], extra_columns=["lang", "voice"])  # safe-path: SPLITS
        seconds = sum(round(r["duration"], 3) for r in rows[split])
        summary[split] = {
            "speakers": len({r["spk_id"] for r in rows[split]}),
            "utterances": len(rows[split]),
            "hours": round(seconds / 3600.0, 4),
        }
    summary["out_dir"] = str(out_dir)
    return summary


def generate_corpus(out_dir, speakers=20, utts_per_speaker=20, langs=("en",), seed=0, valid_speakers=None,
                    test_speakers=None, channel=True, progress=True, wordlist=None):
    """Synthesise a multi-speaker corpus with train/valid/test manifests.

    Wavs go to ``out_dir/wav/<spk_id>/<ID>.wav`` (16 kHz, mono, PCM_16) and the
    SpeechBrain manifests ``train.csv``, ``valid.csv`` and ``test.csv`` to
    ``out_dir`` with columns ``ID,duration,wav,spk_id,wrd,lang,voice`` (``wav``
    absolute, ``wrd`` uppercase, ``voice`` e.g. ``en+m3``). Splits are disjoint
    in speakers: the first speakers train, the next ones validate, the last ones
    test. The same arguments give byte-identical manifests (up to the ``wav``
    folder prefix) and wavs.

    Arguments
    ---------
    out_dir : str or pathlib.Path
        Output folder (created if needed; existing files are overwritten).
    speakers : int
        Number of speakers, at least 3.
    utts_per_speaker : int
        Utterances per speaker (2 to 6 random words each), at least 1.
    langs : sequence of str or str
        Languages, spread over the speakers round robin; see
        :func:`available_languages`.
    seed : int
        Seed of speakers, texts, channels and noise.
    valid_speakers : int or None
        Validation speakers; default ``max(1, round(0.1 * speakers))``.
    test_speakers : int or None
        Test speakers; default ``max(1, round(0.2 * speakers))``.
    channel : bool
        Give each speaker a recording channel (tilt, low-pass, reverb, noise).
    progress : bool
        Show a tqdm progress bar.
    wordlist : str or None
        Name of a word list in ``sb_meta/data/wordlists`` used for every
        speaker instead of each language's own list (e.g. ``"digits"``: eleven
        digit words, a vocabulary small enough for a recognizer to learn in
        minutes).

    Returns
    -------
    dict
        ``{"train": {"speakers", "utterances", "hours"}, "valid": {...},
        "test": {...}, "out_dir": str}``.

    Raises
    ------
    ValueError
        For fewer than 3 speakers, fewer than 1 utterance per speaker, an
        unknown language or a split leaving no training speaker.

    Example
    -------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> summary = generate_corpus(out, speakers=3, utts_per_speaker=2, progress=False)
    >>> [summary[s]["speakers"] for s in ("train", "valid", "test")]
    [1, 1, 1]
    >>> summary["train"]["utterances"]
    2
    >>> from sb_meta.data.manifest import read_manifest
    >>> row = read_manifest(f"{out}/test.csv")[0]
    >>> row["ID"], row["spk_id"], row["lang"], row["voice"].startswith("en+")
    ('spk002_0000', 'spk002', 'en', True)
    """
    _check_counts(speakers, utts_per_speaker)
    speakers, utts_per_speaker = int(speakers), int(utts_per_speaker)
    langs = check_langs(langs)
    n_train, n_valid, n_test = _split_sizes(speakers, valid_speakers, test_speakers)
    specs = make_speakers(speakers, langs, seed=seed, channel=channel)
    split_of = ["train"] * n_train + ["valid"] * n_valid + ["test"] * n_test

    out_dir = pathlib.Path(out_dir).resolve()
    wordlists = _wordlists(langs, wordlist)
    rows = _synthesise_sentences(out_dir, specs, split_of, wordlists, utts_per_speaker, progress)
    return _write_sentence_manifests(out_dir, rows)


WORD_COLUMNS = ("ID", "duration", "wav", "start", "stop", "word", "spk_id", "voice")


def _split_three(items, valid_fraction, test_fraction, what):
    n = len(items)
    n_valid, n_test = max(1, round(valid_fraction * n)), max(1, round(test_fraction * n))
    if n - n_valid - n_test < 1:
        raise ValueError(f"{n} {what} leave no training {what[:-1]} after the valid and test shares")
    return {"train": items[: n - n_valid - n_test], "valid": items[n - n_valid - n_test : n - n_test],
            "test": items[n - n_test :]}


def _choose_words(words, lang, seed, exclude, wordlist):
    """``words`` words of the word list, drawn and shuffled with ``seed``, none of ``exclude``."""
    banned = {str(w).strip().lower() for w in exclude}
    pool = [w for w in load_wordlist(wordlist or check_langs([lang])[0]) if w not in banned]
    if len(pool) < words:
        raise ValueError(f"words={words} but the word list has {len(pool)} usable words")
    rng = np.random.default_rng([int(seed), 0x3D1])
    chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=int(words), replace=False))]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def _synthesise_words(out_dir, voices, words, chosen, bar):
    """Every one of ``words`` spoken once by every one of ``voices``; returns the manifest rows."""
    rows = []
    for spk in voices:
        spk_dir = out_dir / "wav" / safe_name(spk.spk_id, "speaker")
        spk_dir.mkdir(parents=True, exist_ok=True)
        for word in words:
            wav = render_utterance(spk, word, chosen.index(word))
            uid = f"{spk.spk_id}_{re.sub(r'[^a-z0-9]+', '_', word)}"
            path = spk_dir / safe_name(uid, "utterance ID", suffix=".wav")
            soundfile.write(str(path), wav, SAMPLE_RATE, subtype="PCM_16")
            rows.append({"ID": uid, "duration": f"{len(wav) / SAMPLE_RATE:.3f}", "wav": str(path),
                         "start": 0, "stop": len(wav), "word": word.upper(),
                         "spk_id": spk.spk_id, "voice": spk.voice})
            bar.update(1)
    return rows


def generate_word_corpus(out_dir, words=200, voices=40, lang="en", seed=0, valid_fraction=0.1,
                         test_fraction=0.2, channel=True, progress=True, exclude=(), wordlist=None):
    """Synthesise a single-word corpus: many words x many voices, split by word and by voice.

    Words (drawn from the word list with ``seed``) are split into train,
    valid and test *classes* and the voices into train, valid and test
    *speakers*; each split holds every one of its words spoken once by every
    one of its voices, so classes and speakers are disjoint across splits (the
    layout of few-shot spoken-term recognition). Wavs go to
    ``out_dir/wav/<spk_id>/<ID>.wav`` (16 kHz, trimmed); the manifests
    ``train.csv``, ``valid.csv``, ``test.csv`` have the columns
    ``ID,duration,wav,start,stop,word,spk_id,voice`` (``start``/``stop``: the
    whole file, in samples; ``word`` uppercase).

    Arguments
    ---------
    out_dir : str or pathlib.Path
    words : int
        Number of words.
    voices : int
        Number of synthetic speakers (see :func:`make_speakers`).
    lang : str
        Language of the speakers (and of the word list unless ``wordlist``).
    seed : int
    valid_fraction, test_fraction : float
        Shares of the words and of the voices for validation and test.
    channel : bool
        Give each speaker a recording channel.
    progress : bool
    exclude : sequence of str
        Words never to use (e.g. the classes a real corpus tests on).
    wordlist : str, optional
        A word list of ``sb_meta/data/wordlists`` other than the language's.

    Returns
    -------
    dict
        Per split: ``recordings``, ``words``, ``voices``; and ``out_dir``.

    Example
    -------
    >>> import tempfile
    >>> out = generate_word_corpus(tempfile.mkdtemp(), words=10, voices=10, progress=False)
    >>> out["train"]["words"], out["train"]["voices"], out["train"]["recordings"]
    (7, 7, 49)
    """
    from tqdm import tqdm

    for name, value in (("words", words), ("voices", voices)):
        if int(value) != value or value < 3:
            raise ValueError(f"{name} must be an integer >= 3 (train, valid and test), got {value!r}")
    chosen = _choose_words(words, lang, seed, exclude, wordlist)
    word_split = _split_three(chosen, valid_fraction, test_fraction, "words")
    specs = make_speakers(int(voices), [lang], seed=seed, channel=channel)
    voice_split = _split_three(specs, valid_fraction, test_fraction, "voices")
    out_dir = pathlib.Path(out_dir).resolve()
    total = sum(len(word_split[s]) * len(voice_split[s]) for s in SPLITS)
    bar = tqdm(total=total, desc="synthesising words", unit="rec", disable=not progress)
    summary = {"out_dir": str(out_dir)}
    try:
        for split in SPLITS:
            rows = _synthesise_words(out_dir, voice_split[split], word_split[split], chosen, bar)
            with atomic_open(out_dir / f"{split}.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(WORD_COLUMNS))
                writer.writeheader()
                writer.writerows(rows)
            summary[split] = {"recordings": len(rows), "words": len(word_split[split]),
                              "voices": len(voice_split[split])}
    finally:
        bar.close()
    return summary
