"""Audio and transcripts of support utterances, checked before any adaptation.

Every problem names the utterance (its ID, or its position) and the file.
"""

import logging
import os
import pathlib

import torch

logger = logging.getLogger(__name__)

#: a support waveform whose samples all stay below this (full scale is 1) is silent: warned about
SILENCE_PEAK = 1e-4

__all__ = ["load_audio", "encode_transcript", "prepare_support", "make_batches", "ctc_min_frames",
           "alphabet"]


def load_audio(path, normalizer, what="audio file"):
    """A mono waveform at the model's sample rate, with clear errors naming ``path``.

    Arguments
    ---------
    path : str or pathlib.Path
    normalizer : speechbrain.dataio.preprocess.AudioNormalizer
        The model's (resampling and channel mixing).
    what : str
        How to name the file in errors.
    """
    from speechbrain.dataio import audio_io

    p = pathlib.Path(path)
    if not str(path).strip() or p == pathlib.Path("."):
        raise ValueError(f"{what}: the audio path is empty")
    if p.is_dir():
        raise ValueError(f"{what} {p} is a folder, not an audio file")
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    try:
        signal, sr = audio_io.load(str(p), channels_first=False)
        wav = normalizer(signal, sr)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read {what} {p}: {type(exc).__name__}: {exc}") from exc
    if wav.numel() == 0:
        raise ValueError(f"{what} {p} is empty (0 samples)")
    if not torch.isfinite(wav).all():
        raise ValueError(f"{what} {p} contains non-finite samples")
    return wav


def alphabet(tokenizer):
    """The single-character labels of a ``CTCTextEncoder``, in index order."""
    return "".join(
        lab for _, lab in sorted(tokenizer.ind2lab.items()) if isinstance(lab, str) and len(lab) == 1
    )


def encode_transcript(tokenizer, text, name="transcript", blank_index=0):
    """Token ids of ``text``; ``ValueError`` naming ``name`` for an empty
    transcript, characters the tokenizer does not know, or text that encodes
    to the CTC blank."""
    from speechbrain.dataio.encoder import CTCTextEncoder

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty transcript for {name}")
    if isinstance(tokenizer, CTCTextEncoder):
        unknown = sorted({c for c in text if c not in tokenizer.lab2ind})
        if unknown:
            raise ValueError(
                f"transcript of {name} ({text!r}) has characters the model does not know: "
                f"{unknown}; its alphabet is {alphabet(tokenizer)!r}"
            )
        ids = [tokenizer.lab2ind[c] for c in text]
    elif hasattr(tokenizer, "encode_as_ids"):
        ids = tokenizer.encode_as_ids(text)
        unk = tokenizer.unk_id()
        if unk in ids:
            unknown = sorted({c for c in text if not c.isspace() and unk in tokenizer.encode_as_ids(c)})
            raise ValueError(
                f"transcript of {name} ({text!r}) has characters the model's "
                f"SentencePiece vocabulary does not cover: {unknown}"
            )
    elif hasattr(tokenizer, "convert_tokens_to_ids"):  # a Hugging Face tokenizer (Whisper)
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        raise TypeError(f"unsupported tokenizer {type(tokenizer).__name__}")
    if blank_index is not None and blank_index in ids:
        raise ValueError(f"transcript of {name} ({text!r}) encodes to the CTC blank")
    if not ids:
        raise ValueError(f"transcript of {name} ({text!r}) encodes to no token")
    return ids


def ctc_min_frames(ids):
    """Frames CTC needs for ``ids``: one per token plus a blank between repeats."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)


def prepare_support(items, transcripts, ids, normalizer, tokenizer, blank_index=0):
    """Waveforms, token ids, display names and provenance records of a support set.

    Arguments
    ---------
    items : list
        Audio files or 1-D waveforms (at the model's sample rate).
    transcripts : list of str or None
        None: audio only (unsupervised adaptation); ``tokens`` is then None.
    ids : list of str or None
        Utterance IDs (used in messages and records).
    normalizer, tokenizer
        The model's audio normalizer and tokenizer.

    Returns
    -------
    (wavs, tokens, names, records)
    """
    if isinstance(items, (str, os.PathLike)) or torch.is_tensor(items):
        raise TypeError("pass a list of audio files or 1-D waveforms, not a single one")
    items = list(items)
    audio_only = transcripts is None
    transcripts = [None] * len(items) if audio_only else list(transcripts)
    if not items:
        raise ValueError("no support utterance given")
    if len(items) != len(transcripts):
        raise ValueError(f"{len(items)} support utterances but {len(transcripts)} transcripts")
    if ids is not None:
        if len(ids) != len(items):
            raise ValueError(f"{len(items)} support utterances but {len(ids)} ids")
        seen = set()
        for uid in ids:
            if str(uid) in seen:
                raise ValueError(f"support utterance ID {uid!r} is given twice")
            seen.add(str(uid))
    wavs, names, records = [], [], []
    for i, item in enumerate(items):
        uid = str(ids[i]) if ids is not None else None
        label = f"support utterance {uid if uid is not None else i}"
        if isinstance(item, (str, os.PathLike)):
            name = f"{label} ({item})"
            wav = load_audio(item, normalizer, what=f"audio file of {label}")
            audio = str(item)
        else:
            name = label
            wav = torch.as_tensor(item, dtype=torch.float32)
            if wav.dim() == 2:
                wav = wav.mean(dim=-1)
            if wav.dim() != 1 or wav.numel() == 0:
                raise ValueError(f"{name}: expected a non-empty 1-D waveform, got shape {tuple(wav.shape)}")
            audio = f"<waveform, {wav.numel()} samples>"
        if float(wav.abs().max()) < SILENCE_PEAK:
            logger.warning("%s is silent (no sample above %g): it says nothing about the speaker "
                           "or channel, and adapting on it only teaches the model silence", name, SILENCE_PEAK)
        wavs.append(wav)
        names.append(name)
        records.append({"id": uid, "audio": audio, "transcript": transcripts[i]})
    if audio_only:
        return wavs, None, names, records
    tokens = [encode_transcript(tokenizer, t, n, blank_index) for t, n in zip(transcripts, names)]
    return wavs, tokens, names, records


def make_batches(wavs, tokens, names, view, size):
    """``PaddedBatch`` es of ``size`` utterances (``tokens`` None: audio only)."""
    from speechbrain.dataio.batch import PaddedBatch

    batches = []
    for start in range(0, len(wavs), size):
        items = []
        for i in range(start, min(start + size, len(wavs))):
            item = {"id": names[i], "sig": wavs[i]}
            if tokens is not None:
                item["tokens"] = torch.LongTensor(tokens[i])
                if view.attention:
                    item["tokens_bos"] = torch.LongTensor((view.prefix or [view.bos_index]) + tokens[i])
                    item["tokens_eos"] = torch.LongTensor(tokens[i] + [view.eos_index])
            items.append(item)
        batches.append(PaddedBatch(items))
    return batches
