"""Realistic channels for real speech: each (speaker, channel) pair becomes a task.

:func:`apply_channel` passes a 16 kHz waveform through one of :data:`CHANNELS`
(plain DSP with torchaudio's functional ops, seeded per utterance);
:func:`prepare_channels` does it for every utterance of SpeechBrain manifests
and writes new manifests whose ``channel`` and ``spk_channel`` columns are task
columns like any other (``task_column: spk_channel``)::

    sb-meta channels --manifests results/AN4/manifests --out data/an4_channels \\
        --channels clean,telephone,noise10,reverb

Channels
--------
``clean``
    the recording as it is.
``telephone``
    G.711-like narrow band: band-pass 300-3400 Hz, 8 kHz sampling, 8-bit
    mu-law companding, back to 16 kHz.
``noise<SNR>`` (e.g. ``noise10``, ``noise5``)
    additive pink noise at that signal-to-noise ratio in dB, computed over the
    utterance's active samples.
``reverb``
    a synthetic room (direct path, early reflections and an exponentially
    decaying tail, RT60 0.6 s), level-matched to the input.

Example
-------
>>> import torch
>>> wav = 0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
>>> noisy = apply_channel(wav, "noise10", seed=1)
>>> round(snr_db(wav, noisy - wav))
10
>>> apply_channel(wav, "telephone", seed=1).shape
torch.Size([16000])
"""

import hashlib
import json
import math
import pathlib
import re

import torch

from sb_meta.data.audio import read_audio_checked
from sb_meta.utils import check_output, safe_name

__all__ = ["CHANNELS", "apply_channel", "snr_db", "prepare_channels", "check_channel"]

SAMPLE_RATE = 16000
CHANNELS = ("clean", "telephone", "noise<SNR>", "reverb")
_NOISE = re.compile(r"^noise(-?\d+(?:\.\d+)?)$")


def check_channel(name):
    """Raise ``ValueError`` naming the valid channels unless ``name`` is one."""
    if name in ("clean", "telephone", "reverb") or _NOISE.match(name):
        return name
    raise ValueError(f"unknown channel {name!r}; channels are {', '.join(CHANNELS)} (e.g. noise10)")


def _generator(seed):
    return torch.Generator().manual_seed(int(seed) % (2 ** 63))


def snr_db(signal, noise):
    """Signal-to-noise ratio in dB (powers over all samples)."""
    return 10.0 * math.log10(float(signal.pow(2).mean()) / max(float(noise.pow(2).mean()), 1e-12))


def _pink(n, gen):
    """Pink (1/f power) noise: white noise shaped in the frequency domain."""
    white = torch.randn(n, generator=gen)
    spec = torch.fft.rfft(white)
    freqs = torch.arange(spec.numel(), dtype=torch.float32)
    spec = spec / torch.sqrt(freqs.clamp(min=1.0))
    pink = torch.fft.irfft(spec, n=n)
    return pink / pink.std().clamp(min=1e-8)


def _telephone(wav):
    import torchaudio.functional as F

    x = F.highpass_biquad(wav, SAMPLE_RATE, 300.0)
    x = F.lowpass_biquad(x, SAMPLE_RATE, 3400.0)
    narrow = F.resample(x, SAMPLE_RATE, 8000)
    peak = narrow.abs().max().clamp(min=1e-8)
    codes = F.mu_law_encoding(narrow / peak, 256)
    narrow = F.mu_law_decoding(codes, 256) * peak
    return F.resample(narrow, 8000, SAMPLE_RATE)[: wav.numel()]


def _room(gen, rt60=0.6):
    n = int(rt60 * SAMPLE_RATE)
    t = torch.arange(n, dtype=torch.float32) / SAMPLE_RATE
    tail = torch.randn(n, generator=gen) * torch.exp(-6.9 * t / rt60)  # -60 dB at rt60
    rir = 0.3 * tail
    rir[0] = 1.0
    for _ in range(6):  # early reflections within 50 ms
        pos = int(torch.randint(int(0.002 * SAMPLE_RATE), int(0.05 * SAMPLE_RATE), (1,), generator=gen))
        rir[pos] += float(torch.empty(1).uniform_(0.2, 0.6, generator=gen))
    return rir / rir.norm()


def apply_channel(wav, channel, seed=0):
    """``wav`` (1-D, 16 kHz) through ``channel`` (see the module documentation)."""
    import torchaudio.functional as F

    check_channel(channel)
    wav = wav.float()
    gen = _generator(seed)
    if channel == "clean":
        return wav.clone()
    if channel == "telephone":
        return _telephone(wav)
    if channel == "reverb":
        wet = F.fftconvolve(wav, _room(gen))[: wav.numel()]
        return wet * (wav.pow(2).mean().sqrt() / wet.pow(2).mean().sqrt().clamp(min=1e-8))
    snr = float(_NOISE.match(channel).group(1))
    noise = _pink(wav.numel(), gen)
    power = wav.pow(2).mean()
    noise = noise * torch.sqrt(power / (10.0 ** (snr / 10.0)) / noise.pow(2).mean().clamp(min=1e-12))
    return wav + noise


def _fingerprint(paths, channels):
    h = hashlib.sha256(json.dumps(sorted(channels)).encode())
    for p in paths:
        h.update(pathlib.Path(p).read_bytes())
    return h.hexdigest()


def _stamp(path):
    """The record of an earlier run in ``path`` (``channels.json``), or None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _check_ours(out, manifests, previous):
    """Refuse to replace files an earlier run of this function did not write."""
    ours = set(previous.get("files", [p.name for p in manifests])) if previous is not None else set()
    foreign = [p for p in manifests if p.exists() and p.name not in ours]
    if previous is None and (out / "wav").exists():
        foreign.append(out / "wav")
    if foreign:
        raise FileExistsError(
            f"{foreign[0]} exists and sb-meta channels did not write it; nothing was written: "
            "give --out a new or empty folder (or one an earlier `sb-meta channels` wrote)"
        )


def prepare_channels(manifests, out, channels, seed=0, progress=True):
    """Write every utterance of ``manifests`` through every channel.

    Arguments
    ---------
    manifests : dict
        ``split -> manifest path`` (``ID``, ``duration``, ``wav``, ``spk_id``, ``wrd``...).
    out : str or pathlib.Path
        Folder for ``wav/<channel>/<ID>.wav`` and the new manifests ``<split>.csv``
        (IDs and channels made file names by :func:`sb_meta.utils.safe_name`). It
        may not be, nor contain, an input manifest, and files there that an earlier
        run did not write are never replaced (``channels.json`` records what it wrote).
    channels : list of str
        Channel names.
    seed : int
        The noise and rooms are functions of ``(seed, ID, channel)``.

    Returns
    -------
    dict
        ``split -> new manifest path``; utterance IDs are ``<ID>@<channel>``
        and the rows gain ``channel`` and ``spk_channel`` (``<spk_id>@<channel>``).
        Reused when the inputs and channels did not change.
    """
    import soundfile
    from tqdm.auto import tqdm

    from sb_meta.data.manifest import read_manifest, write_manifest

    channels = [check_channel(c) for c in channels]
    out = pathlib.Path(out)
    check_output(out, list(manifests.values()))
    stamp = out / "channels.json"
    result = {split: out / safe_name(split, "split", suffix=".csv") for split in manifests}
    key = {"channels": channels, "seed": seed, "inputs": _fingerprint(manifests.values(), channels),
           "files": sorted(p.name for p in result.values())}
    previous = _stamp(stamp)
    if previous == key and all(p.is_file() for p in result.values()):
        return result
    _check_ours(out, result.values(), previous)
    rows_by_split = {s: read_manifest(p, required=("ID", "duration", "wav", "spk_id", "wrd"))
                     for s, p in manifests.items()}
    # every name checked before anything is written
    files = {(c, row["ID"]): out / "wav" / safe_name(c, "channel") / safe_name(row["ID"], "utterance ID", ".wav")
             for rows in rows_by_split.values() for row in rows for c in channels}
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(dict(key, complete=False), indent=2) + "\n")  # ours, even if interrupted
    total = sum(len(r) for r in rows_by_split.values()) * len(channels)
    bar = tqdm(total=total, desc="channels", unit="utt", disable=not progress)
    for split, rows in rows_by_split.items():
        new_rows = []
        for row in rows:
            wav = read_audio_checked(row["wav"], SAMPLE_RATE)
            for channel in channels:
                uid = f"{row['ID']}@{channel}"
                path = files[channel, row["ID"]]
                path.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256(f"{seed}/{row['ID']}/{channel}".encode()).digest()
                y = apply_channel(wav, channel, seed=int.from_bytes(digest[:8], "little"))
                y = y / max(1.0, float(y.abs().max()) / 0.99)  # no clipping
                soundfile.write(str(path), y.numpy(), SAMPLE_RATE, subtype="PCM_16")
                new_rows.append(dict(row, ID=uid, wav=str(path.resolve()), channel=channel,
                                     spk_channel=f"{row['spk_id']}@{channel}"))
                bar.update(1)
        extra = [c for c in new_rows[0] if c not in ("ID", "duration", "wav", "spk_id", "wrd")] if new_rows else []
        write_manifest(result[split], new_rows, extra_columns=extra)
    bar.close()
    stamp.write_text(json.dumps(key, indent=2) + "\n")
    return result
