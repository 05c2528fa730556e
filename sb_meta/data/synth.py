"""An embedded, offline, multi-speaker synthetic speech corpus.

Speech is synthesised with espeak-ng (:mod:`sb_meta.data.espeak`). A *speaker*
is a language, an espeak voice variant (``voices/!v``), a base pitch, a
speaking rate, a pitch range and, optionally, a recording *channel* (spectral
tilt, band limitation, room reverberation and additive white or pink noise at
a speaker-specific SNR). Everything is drawn from a seed, so the same seed
gives byte-identical manifests and audio.

Two corpora are generated: :func:`generate_corpus` (sentences of 2 to 6 words
per utterance, SpeechBrain's ``ID,duration,wav,spk_id,wrd`` manifests) and
:func:`generate_word_corpus` (one word per recording, many words x many
voices, the word manifests of few-shot spoken-term recognition:
``ID,duration,wav,start,stop,word,spk_id``).
"""

import csv
import dataclasses
import functools
import pathlib
import re

import numpy as np
import soundfile

from sb_meta.data.espeak import (  # noqa: F401 - synthesize / list_voices are part of this module's API
    SAMPLE_RATE,
    WORDLIST_DIR,
    _espeak_languages,
    _resample,
    _trim,
    available_languages,
    list_voices,
    load_wordlist,
    synthesize,
)
from sb_meta.data.manifest import write_manifest
from sb_meta.utils import atomic_open, safe_name

__all__ = ["generate_corpus", "generate_word_corpus", "list_voices", "available_languages",
           "make_speakers", "synthesize", "apply_channel"]

SPLITS = ("train", "valid", "test")


# --------------------------------------------------------------------------- speakers


@dataclasses.dataclass(frozen=True)
class ChannelSpec:
    """Recording channel of one speaker (all fixed per speaker).

    Arguments
    ---------
    tilt : float
        First-order FIR ``y[n] = x[n] + tilt * x[n-1]``: > 0 muffles, < 0 brightens.
    lowpass_hz : float or None
        Cut-off of a windowed-sinc low-pass (band-limited microphone), or None.
    reverb_rt60 : float or None
        Decay time (s) of an exponentially decaying noise impulse response, or None.
    reverb_wet : float
        Level of the reverberant tail relative to the direct sound.
    noise : str
        ``"white"`` or ``"pink"``.
    snr_db : float
        Signal-to-noise ratio of the additive noise.
    peak : float
        Peak level of the final waveform (full scale is 1).
    seed : int
        Seed of the impulse response.
    """

    tilt: float
    lowpass_hz: float | None
    reverb_rt60: float | None
    reverb_wet: float
    noise: str
    snr_db: float
    peak: float
    seed: int


@dataclasses.dataclass(frozen=True)
class SpeakerSpec:
    """One synthetic speaker: espeak settings plus an optional channel."""

    index: int
    spk_id: str
    lang: str
    variant: str
    pitch: int
    rate: int
    pitch_range: int
    seed: int
    channel: ChannelSpec | None

    @property
    def voice(self):
        """The espeak voice name, e.g. ``en+m3``."""
        return f"{self.lang}+{self.variant}"

    @property
    def config(self):
        """What makes the speaker's voice: (lang, variant, pitch, rate, range)."""
        return (self.lang, self.variant, self.pitch, self.rate, self.pitch_range)


def _check_langs(langs):
    if isinstance(langs, str):
        langs = [s for s in re.split(r"[,\s]+", langs) if s]
    langs = list(dict.fromkeys(str(lang).strip().lower() for lang in langs))
    if not langs:
        raise ValueError(f"langs is empty; choose from {available_languages()}")
    available = available_languages()
    unknown = [lang for lang in langs if lang not in available]
    if unknown:
        words = sorted(p.stem for p in WORDLIST_DIR.glob("*.txt"))
        raise ValueError(
            f"unknown language(s) {unknown}: available languages are {available} "
            f"(word lists in {WORDLIST_DIR}: {words}; espeak-ng knows {len(_espeak_languages())} "
            f"languages, but a word list is needed too)"
        )
    return langs


def _make_channel(rng, seed):
    return ChannelSpec(
        tilt=round(float(rng.uniform(-0.6, 0.8)), 3),
        lowpass_hz=round(float(rng.uniform(3400.0, 7000.0)), 1) if rng.random() < 0.5 else None,
        reverb_rt60=round(float(rng.uniform(0.15, 0.6)), 3) if rng.random() < 0.5 else None,
        reverb_wet=round(float(rng.uniform(0.15, 0.5)), 3),
        noise="pink" if rng.random() < 0.5 else "white",
        snr_db=round(float(rng.uniform(15.0, 30.0)), 2),
        peak=round(float(rng.uniform(0.3, 0.9)), 3),
        seed=seed,
    )


def make_speakers(speakers, langs=("en",), seed=0, channel=True):
    """Build ``speakers`` distinct speaker specs deterministically from ``seed``.

    Languages are assigned round robin; voice variants follow a seeded
    permutation of :func:`list_voices` so that the first ``len(list_voices())``
    speakers all have different variants. Pitch, rate and pitch range are drawn
    per speaker; two speakers sharing a language and variant differ by at least
    12 in pitch or 25 words/minute in rate.

    Arguments
    ---------
    speakers : int
        Number of speakers.
    langs : sequence of str or str
        Languages (see :func:`available_languages`); a string may hold several,
        comma-separated.
    seed : int
        Seed of all draws.
    channel : bool
        Whether speakers get a recording channel.

    Returns
    -------
    list of SpeakerSpec

    Example
    -------
    >>> spks = make_speakers(4, langs=["en", "de"], seed=1)
    >>> [s.spk_id for s in spks], [s.lang for s in spks]
    (['spk000', 'spk001', 'spk002', 'spk003'], ['en', 'de', 'en', 'de'])
    >>> spks == make_speakers(4, langs="en,de", seed=1)
    True
    """
    langs = _check_langs(langs)
    if int(speakers) != speakers or speakers < 1:
        raise ValueError(f"speakers must be a positive integer, got {speakers!r}")
    speakers = int(speakers)
    variants = list_voices()
    rng = np.random.default_rng([int(seed), 0x5EA7])
    order = [variants[i] for i in rng.permutation(len(variants))]
    width = max(3, len(str(speakers - 1)))
    specs, taken = [], {}
    for i in range(speakers):
        lang = langs[i % len(langs)]
        variant = order[i % len(order)]
        others = taken.setdefault((lang, variant), [])
        for _ in range(1000):
            pitch = int(rng.integers(15, 86))
            rate = int(rng.integers(125, 211))
            pitch_range = int(rng.integers(20, 91))
            if all(abs(pitch - p) >= 12 or abs(rate - r) >= 25 for p, r in others):
                break
        else:  # pragma: no cover - only with thousands of speakers per variant
            raise RuntimeError(f"cannot draw a distinct speaker for {lang}+{variant}")
        others.append((pitch, rate))
        spk_seed = int(np.random.default_rng([int(seed), i, 0xC0DE]).integers(0, 2**31 - 1))
        chan = _make_channel(np.random.default_rng([spk_seed, 0xC4A7]), spk_seed) if channel else None
        specs.append(
            SpeakerSpec(
                index=i, spk_id=f"spk{i:0{width}d}", lang=lang, variant=variant, pitch=pitch,
                rate=rate, pitch_range=pitch_range, seed=spk_seed, channel=chan,
            )
        )
    return specs


# --------------------------------------------------------------------------- audio


@functools.lru_cache(maxsize=256)
def _lowpass_filter(cutoff_hz, sample_rate):
    from scipy.signal import firwin

    return firwin(31, cutoff_hz, fs=sample_rate)



def _noise(kind, n, rng):
    white = rng.standard_normal(n)
    if kind == "pink" and n > 1:
        spec = np.fft.rfft(white)
        freqs = np.arange(len(spec), dtype=np.float64)
        freqs[0] = 1.0
        spec /= np.sqrt(freqs)
        spec[0] = 0.0
        white = np.fft.irfft(spec, n)
    return white / max(np.sqrt(np.mean(white**2)), 1e-12)


_IR_CACHE = {}


def _impulse_response(chan, sample_rate):
    key = (chan, sample_rate)
    if key not in _IR_CACHE:
        rng = np.random.default_rng([chan.seed, 0x1A])
        n = int(chan.reverb_rt60 * sample_rate)
        t = np.arange(n) / sample_rate
        tail = rng.standard_normal(n) * np.exp(-6.9078 * t / chan.reverb_rt60)
        tail[: int(0.003 * sample_rate)] = 0.0  # first reflections after 3 ms
        tail *= chan.reverb_wet / max(np.sqrt(np.sum(tail**2)), 1e-12)
        tail[0] = 1.0
        if len(_IR_CACHE) > 512:
            _IR_CACHE.clear()
        _IR_CACHE[key] = tail
    return _IR_CACHE[key]


def apply_channel(wav, chan, sample_rate=SAMPLE_RATE, seed=0):
    """Colour ``wav`` (float) with the channel ``chan``; ``seed`` picks the noise.

    Arguments
    ---------
    wav : numpy.ndarray
        Clean float waveform.
    chan : ChannelSpec
        The speaker's channel.
    sample_rate : int
        Sample rate of ``wav``.
    seed : int
        Seed of this utterance's noise.

    Returns
    -------
    numpy.ndarray
        The waveform after tilt, low-pass, reverberation and noise, of the
        same length (the reverberation tail is cut).

    Example
    -------
    >>> chan = make_speakers(3, seed=0)[0].channel
    >>> x = np.sin(np.linspace(0, 400, 8000))
    >>> y = apply_channel(x, chan, seed=1)
    >>> y.shape == x.shape, bool(np.allclose(y, apply_channel(x, chan, seed=1)))
    (True, True)
    """
    from scipy.signal import fftconvolve, lfilter

    y = lfilter([1.0, chan.tilt], [1.0], wav)
    if chan.lowpass_hz is not None and chan.lowpass_hz < sample_rate / 2:
        taps = _lowpass_filter(chan.lowpass_hz, sample_rate)
        y = np.convolve(y, taps, mode="full")[15 : 15 + len(y)]
    if chan.reverb_rt60 is not None:
        y = fftconvolve(y, _impulse_response(chan, sample_rate))[: len(y)]
    power = np.mean(y**2)
    if power > 0:
        rng = np.random.default_rng([chan.seed, int(seed), 0x401])
        y = y + _noise(chan.noise, len(y), rng) * np.sqrt(power / 10 ** (chan.snr_db / 10))
    return y


def _render(spk, text, utt_index):
    utt_seed = int(np.random.default_rng([spk.seed, utt_index, 0x5A]).integers(0, 2**31 - 1))
    raw, sr = synthesize(text, spk.voice, spk.rate, spk.pitch, spk.pitch_range, seed=utt_seed)
    wav = raw.astype(np.float64) / 32768.0
    wav = _trim(_resample(wav, sr), SAMPLE_RATE)
    peak = 0.9
    if spk.channel is not None:
        wav = apply_channel(wav, spk.channel, SAMPLE_RATE, seed=utt_seed)
        peak = spk.channel.peak
    wav *= peak / max(np.abs(wav).max(), 1e-9)
    return np.clip(wav, -1.0, 1.0).astype(np.float32)


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


def generate_corpus(
    out_dir,
    speakers=20,
    utts_per_speaker=20,
    langs=("en",),
    seed=0,
    valid_speakers=None,
    test_speakers=None,
    channel=True,
    progress=True,
    wordlist=None,
):
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
    from tqdm import tqdm

    if int(speakers) != speakers or speakers < 3:
        raise ValueError(
            f"speakers must be an integer >= 3 (one each for train, valid and test), got {speakers!r}"
        )
    if int(utts_per_speaker) != utts_per_speaker or utts_per_speaker < 1:
        raise ValueError(f"utts_per_speaker must be an integer >= 1, got {utts_per_speaker!r}")
    speakers, utts_per_speaker = int(speakers), int(utts_per_speaker)
    langs = _check_langs(langs)
    n_train, n_valid, n_test = _split_sizes(speakers, valid_speakers, test_speakers)
    specs = make_speakers(speakers, langs, seed=seed, channel=channel)
    split_of = ["train"] * n_train + ["valid"] * n_valid + ["test"] * n_test

    out_dir = pathlib.Path(out_dir).resolve()
    if wordlist is None:
        wordlists = {lang: load_wordlist(lang) for lang in langs}
    else:
        if not (WORDLIST_DIR / f"{wordlist}.txt").is_file():
            names = sorted(p.stem for p in WORDLIST_DIR.glob("*.txt"))
            raise ValueError(f"no word list named {wordlist!r}; available: {names}")
        wordlists = {lang: load_wordlist(wordlist) for lang in langs}
    rows = {split: [] for split in SPLITS}
    width = max(4, len(str(utts_per_speaker - 1)))
    bar = tqdm(total=speakers * utts_per_speaker, desc="synthesising", unit="utt", disable=not progress)
    try:
        for spk, split in zip(specs, split_of):
            spk_dir = out_dir / "wav" / safe_name(spk.spk_id, "speaker")
            spk_dir.mkdir(parents=True, exist_ok=True)
            for u in range(utts_per_speaker):
                text = _utterance_text(wordlists[spk.lang], spk, u)
                wav = _render(spk, text, u)
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


WORD_COLUMNS = ("ID", "duration", "wav", "start", "stop", "word", "spk_id", "voice")


def _split_three(items, valid_fraction, test_fraction, what):
    n = len(items)
    n_valid, n_test = max(1, round(valid_fraction * n)), max(1, round(test_fraction * n))
    if n - n_valid - n_test < 1:
        raise ValueError(f"{n} {what} leave no training {what[:-1]} after the valid and test shares")
    return {"train": items[: n - n_valid - n_test], "valid": items[n - n_valid - n_test : n - n_test],
            "test": items[n - n_test :]}


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
    banned = {str(w).strip().lower() for w in exclude}
    pool = [w for w in load_wordlist(wordlist or _check_langs([lang])[0]) if w not in banned]
    if len(pool) < words:
        raise ValueError(f"words={words} but the word list has {len(pool)} usable words")
    rng = np.random.default_rng([int(seed), 0x3D1])
    chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=int(words), replace=False))]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    word_split = _split_three(chosen, valid_fraction, test_fraction, "words")
    specs = make_speakers(int(voices), [lang], seed=seed, channel=channel)
    voice_split = _split_three(specs, valid_fraction, test_fraction, "voices")
    out_dir = pathlib.Path(out_dir).resolve()
    total = sum(len(word_split[s]) * len(voice_split[s]) for s in SPLITS)
    bar = tqdm(total=total, desc="synthesising words", unit="rec", disable=not progress)
    summary = {"out_dir": str(out_dir)}
    try:
        for split in SPLITS:
            rows = []
            for spk in voice_split[split]:
                spk_dir = out_dir / "wav" / safe_name(spk.spk_id, "speaker")
                spk_dir.mkdir(parents=True, exist_ok=True)
                for word in word_split[split]:
                    wav = _render(spk, word, chosen.index(word))
                    uid = f"{spk.spk_id}_{re.sub(r'[^a-z0-9]+', '_', word)}"
                    path = spk_dir / safe_name(uid, "utterance ID", suffix=".wav")
                    soundfile.write(str(path), wav, SAMPLE_RATE, subtype="PCM_16")
                    rows.append({"ID": uid, "duration": f"{len(wav) / SAMPLE_RATE:.3f}", "wav": str(path),
                                 "start": 0, "stop": len(wav), "word": word.upper(),
                                 "spk_id": spk.spk_id, "voice": spk.voice})
                    bar.update(1)
            with atomic_open(out_dir / f"{split}.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(WORD_COLUMNS))
                writer.writeheader()
                writer.writerows(rows)
            summary[split] = {"recordings": len(rows), "words": len(word_split[split]),
                              "voices": len(voice_split[split])}
    finally:
        bar.close()
    return summary
