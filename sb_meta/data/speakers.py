"""The synthetic speakers of :mod:`sb_meta.data.synth`: who speaks, and through what.

A *speaker* (:class:`SpeakerSpec`) is a language, an espeak voice variant, a
base pitch, a speaking rate, a pitch range and, optionally, a recording
*channel* (:class:`ChannelSpec`: spectral tilt, band limitation, room
reverberation and additive white or pink noise at a speaker-specific SNR).
:func:`make_speakers` draws them from a seed, :func:`apply_channel` passes a
waveform through a channel and :func:`render_utterance` speaks one text as a
speaker. The corpora built from them are in :mod:`sb_meta.data.synth`, which
re-exports the public names.
"""

import dataclasses
import functools
import re

import numpy as np

from sb_meta.data.espeak import (
    SAMPLE_RATE,
    WORDLIST_DIR,
    _espeak_languages,
    _resample,
    _trim,
    available_languages,
    list_voices,
    synthesize,
)

__all__ = ["ChannelSpec", "SpeakerSpec", "apply_channel", "check_langs", "make_speakers", "render_utterance"]


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


def check_langs(langs):
    """``langs`` (a sequence, or a string of comma- or space-separated names) as a list of
    distinct lower-case languages that have a word list; an error names the available ones."""
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
    langs = check_langs(langs)
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


def render_utterance(spk, text, utt_index):
    """``text`` spoken by ``spk`` (its ``utt_index``-th recording): 16 kHz float32, trimmed,
    through the speaker's channel, at its peak level."""
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
