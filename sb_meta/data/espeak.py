"""The espeak-ng speech engine: synthesis, voices, languages and word lists.

Speech is synthesised with espeak-ng (shipped as a shared library by the PyPI
package ``espeakng-loader``) through :mod:`ctypes`, so no network access, no
external binary and no downloaded data are needed. :mod:`sb_meta.data.synth`
builds corpora (speakers, recording channels, manifests) on top of it.

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
import functools
import math
import os
import pathlib
import re
import shutil
import tempfile
import threading

import numpy as np

__all__ = ["synthesize", "list_voices", "available_languages", "load_wordlist", "SAMPLE_RATE"]

SAMPLE_RATE = 16000
WORDLIST_DIR = pathlib.Path(__file__).resolve().parent / "wordlists"

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
        dst = pathlib.Path(folder) / f"sbmeta-{src.name}"  # safe-path: a file of the espeak package
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


# --------------------------------------------------------------------------- 16 kHz


@functools.lru_cache(maxsize=8)
def _resample_filter(up, down):
    from scipy.signal import firwin

    # the filter scipy.signal.resample_poly would design, computed once
    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


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
