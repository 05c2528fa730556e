"""Reading a waveform of a manifest, naming the file on failure.

Example
-------
>>> import tempfile, numpy, soundfile
>>> path = tempfile.mkdtemp() + "/a.wav"
>>> soundfile.write(path, numpy.zeros(800), 8000)
>>> read_audio_checked(path, 16000).shape
torch.Size([1600])
>>> read_audio_checked("", 16000)
Traceback (most recent call last):
...
sb_meta.utils.RecipeError: empty audio path ''
"""

from sb_meta.utils import RecipeError

__all__ = ["read_audio_checked"]


def read_audio_checked(path, sample_rate):
    """Read a waveform with SpeechBrain, naming the file on failure and
    resampling when its rate differs from ``sample_rate``."""
    import soundfile
    from speechbrain.dataio.dataio import read_audio

    if not str(path).strip() or str(path).strip() in (".", "./"):
        raise RecipeError(f"empty audio path {path!r}")
    try:
        info = soundfile.info(path)
        sig = read_audio(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise RecipeError(f"cannot read audio file {path}: {exc}") from exc
    if sig.dim() > 1:
        sig = sig.mean(dim=-1)
    if info.samplerate != sample_rate:
        import torchaudio

        sig = torchaudio.functional.resample(sig, info.samplerate, sample_rate)
    return sig
