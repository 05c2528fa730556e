"""An embedded, offline, multi-speaker synthetic speech corpus.

Speech is synthesised with espeak-ng (shipped as a shared library by the PyPI
package ``espeakng-loader``) through :mod:`ctypes`, so no network access, no
external binary and no downloaded data are needed. A *speaker* is a language, an
espeak voice variant (``voices/!v``), a base pitch, a speaking rate, a pitch
range and, optionally, a recording *channel* (spectral tilt, band limitation,
room reverberation and additive white or pink noise at a speaker-specific SNR).
Everything is drawn from a seed, so the same seed gives byte-identical manifests
and audio.

Notes on espeak-ng
------------------
espeak-ng keeps process-global state, some of it in function-level ``static``
variables that no API call resets (e.g. the pitch-flutter phase of the wave
generator): synthesising the same text twice in one session gives two slightly
different waveforms. To make every utterance depend only on its own settings,
this module loads a *private copy* of the library for each utterance, synthesises,
terminates and ``dlclose``-s it (about 3 ms). The private copy also keeps us clear
of any other user of espeak in the process (e.g. a phonemizer). All access is
serialised by a module-level lock.
"""

import atexit
import ctypes
import dataclasses
import functools
import math
import os
import pathlib
import re
import shutil
import tempfile
import threading

import numpy as np
import soundfile

from sb_meta.data.manifest import write_manifest

__all__ = ["generate_corpus", "list_voices", "available_languages", "make_speakers", "synthesize"]

SAMPLE_RATE = 16000
WORDLIST_DIR = pathlib.Path(__file__).resolve().parent / "wordlists"
SPLITS = ("train", "valid", "test")

# Constants of espeak-ng's speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_EE_OK = 0

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_LOCK = threading.RLock()
_STATE = {"lib_copy": None, "chunks": [], "voices": None, "espeak_langs": None}


# --------------------------------------------------------------------------- espeak


def _data_path():
    import espeakng_loader

    return pathlib.Path(espeakng_loader.get_data_path())


def _on_samples(wav, numsamples, events):
    if numsamples > 0 and wav:
        _STATE["chunks"].append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
    return 0  # 0 = continue synthesis


_CALLBACK = _SYNTH_CALLBACK(_on_samples)  # kept alive for the life of the module


def _private_library_path():
    """Copy libespeak-ng once per process so that we can load it fresh each time."""
    if _STATE["lib_copy"] is None or not os.path.exists(_STATE["lib_copy"]):
        import espeakng_loader

        src = pathlib.Path(espeakng_loader.get_library_path())
        folder = tempfile.mkdtemp(prefix="sbmeta-espeak-")
        atexit.register(shutil.rmtree, folder, True)
        dst = pathlib.Path(folder) / f"sbmeta-{src.name}"
        shutil.copyfile(src, dst)
        _STATE["lib_copy"] = str(dst)
    return _STATE["lib_copy"]


def _load_fresh_library():
    mode = os.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0)
    lib = ctypes.CDLL(_private_library_path(), mode=mode)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    # ``path`` is the folder *containing* espeak-ng-data (the library also
    # accepts the data folder itself, but this is the documented meaning).
    parent = str(_data_path().parent).encode()
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, parent, _INITIALIZE_DONT_EXIT)
    if rate <= 0:
        _unload(lib, terminate=False)
        raise RuntimeError(f"espeak_Initialize failed ({rate}) with data in {_data_path()}")
    lib.espeak_SetSynthCallback(_CALLBACK)
    return lib, rate


def _unload(lib, terminate=True):
    import _ctypes

    if terminate:
        lib.espeak_Terminate()
    _ctypes.dlclose(lib._handle)


def synthesize(text, voice="en", rate=175, pitch=50, pitch_range=50, seed=0):
    """Synthesise ``text`` with espeak-ng; the result depends only on the arguments.

    Arguments
    ---------
    text : str
        Text to speak (UTF-8; lowercase avoids all-caps words being spelled out).
    voice : str
        espeak voice, ``lang`` or ``lang+variant`` (e.g. ``"de+f2"``).
    rate : int
        Speaking rate in words per minute (espeak accepts 80 to 450).
    pitch : int
        Base pitch, 0 to 100 (50 is the voice's own).
    pitch_range : int
        Pitch range, 0 (monotone) to 100 (50 is the voice's own).
    seed : int
        Seed of espeak's internal random generator (breath and frication noise).

    Returns
    -------
    tuple of (numpy.ndarray, int)
        The int16 waveform and its sample rate (22050 Hz).

    Example
    -------
    >>> wav, sr = synthesize("hello world", "en+m3")
    >>> sr, wav.dtype.name, len(wav) > sr // 2
    (22050, 'int16', True)
    """
    data = text.encode("utf-8")
    with _LOCK:
        lib, sample_rate = _load_fresh_library()
        try:
            if lib.espeak_SetVoiceByName(voice.encode("utf-8")) != _EE_OK:
                raise ValueError(f"espeak-ng cannot load voice {voice!r}")
            for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
                lib.espeak_SetParameter(param, int(value), 0)
            lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
            _STATE["chunks"] = []
            err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
            if err != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed ({err}) on {text!r}")
            chunks, _STATE["chunks"] = _STATE["chunks"], []
        finally:
            _unload(lib)
    wav = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return wav, sample_rate


def list_voices():
    """Return the espeak-ng voice variants usable as ``lang+variant`` (sorted).

    Returns
    -------
    list of str
        Variant names found in ``espeak-ng-data/voices/!v`` (names with spaces
        or other odd characters are left out).

    Example
    -------
    >>> voices = list_voices()
    >>> "m3" in voices and "f2" in voices and len(voices) > 60
    True
    """
    if _STATE["voices"] is None:
        folder = _data_path() / "voices" / "!v"
        names = [p.name for p in folder.iterdir() if p.is_file()]
        _STATE["voices"] = sorted(n for n in names if re.fullmatch(r"[A-Za-z0-9_]+", n))
    return list(_STATE["voices"])


def _espeak_languages():
    if _STATE["espeak_langs"] is None:
        folder = _data_path() / "lang"
        _STATE["espeak_langs"] = sorted({p.name for p in folder.rglob("*") if p.is_file()})
    return _STATE["espeak_langs"]


def available_languages():
    """Return the languages that have both a word list and an espeak-ng voice.

    Returns
    -------
    list of str
        Language codes, sorted.

    Example
    -------
    >>> available_languages()
    ['de', 'en', 'es', 'fr', 'it']
    """
    espeak = set(_espeak_languages())
    return sorted(p.stem for p in WORDLIST_DIR.glob("*.txt") if p.stem in espeak)


def load_wordlist(lang):
    """Return the word list of ``lang`` (lowercase, unique, in file order).

    Example
    -------
    >>> len(load_wordlist("en")) >= 400
    True
    """
    path = WORDLIST_DIR / f"{lang}.txt"
    if not path.is_file():
        raise ValueError(f"no word list for language {lang!r}; available: {available_languages()}")
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        word = line.strip().lower()
        if word and not word.startswith("#") and word not in words:
            words.append(word)
    return words


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


@functools.lru_cache(maxsize=8)
def _resample_filter(up, down):
    from scipy.signal import firwin

    # the filter scipy.signal.resample_poly would design, computed once
    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


@functools.lru_cache(maxsize=256)
def _lowpass_filter(cutoff_hz, sample_rate):
    from scipy.signal import firwin

    return firwin(31, cutoff_hz, fs=sample_rate)


def _resample(wav, orig_sr, new_sr=SAMPLE_RATE):
    if orig_sr == new_sr:
        return wav
    from scipy.signal import resample_poly

    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    return resample_poly(wav, up, down, window=_resample_filter(up, down))


def _trim(wav, sample_rate, pad_s=0.1, threshold=0.01):
    loud = np.flatnonzero(np.abs(wav) > threshold * max(np.abs(wav).max(), 1e-9))
    if loud.size == 0:
        return wav
    pad = int(pad_s * sample_rate)
    core = wav[loud[0] : loud[-1] + 1]
    out = np.zeros(pad + len(core) + pad)
    out[pad : pad + len(core)] = core
    return out


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
            spk_dir = out_dir / "wav" / spk.spk_id
            spk_dir.mkdir(parents=True, exist_ok=True)
            for u in range(utts_per_speaker):
                text = _utterance_text(wordlists[spk.lang], spk, u)
                wav = _render(spk, text, u)
                uid = f"{spk.spk_id}_{u:0{width}d}"
                path = spk_dir / f"{uid}.wav"
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
        write_manifest(out_dir / f"{split}.csv", rows[split], extra_columns=["lang", "voice"])
        seconds = sum(round(r["duration"], 3) for r in rows[split])
        summary[split] = {
            "speakers": len({r["spk_id"] for r in rows[split]}),
            "utterances": len(rows[split]),
            "hours": round(seconds / 3600.0, 4),
        }
    summary["out_dir"] = str(out_dir)
    return summary
