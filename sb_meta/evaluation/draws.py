"""Support draws, file paths and error rates of the k-shot protocol (:mod:`sb_meta.evaluation.protocol`)."""

import hashlib
import os
import pathlib
import random

__all__ = ["draw_support", "error_rates", "resolve_wav", "parse_ks", "seeded"]


def seeded(*keys):
    """A ``random.Random`` seeded by ``keys`` (the same keys, the same draws, in every process)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def draw_support(ids, k, seed, task, repeat):
    """Split ``ids`` into ``k`` support ids and the remaining query ids.

    The draw is a pure function of ``(seed, task, k, repeat)`` and of the set
    of ids (their order does not matter). Both lists come back sorted.

    Example
    -------
    >>> ids = [f"u{i}" for i in range(6)]
    >>> support, query = draw_support(ids, 2, seed=0, task="s1", repeat=0)
    >>> len(support), len(query), set(support) & set(query)
    (2, 4, set())
    >>> draw_support(list(reversed(ids)), 2, 0, "s1", 0) == (support, query)
    True
    """
    ids = sorted(ids)
    if k > len(ids):
        raise ValueError(f"cannot draw {k} support utterances from {len(ids)}")
    support = sorted(seeded(seed, str(task), int(k), int(repeat)).sample(ids, k))
    chosen = set(support)
    return support, [i for i in ids if i not in chosen]


def error_rates(hyps, refs, ids=None):
    """(WER, CER) in percent of hypotheses against references (SpeechBrain's
    ``ErrorRateStats``; characters include spaces).

    Example
    -------
    >>> error_rates(["HELLO WORLD", "HI"], ["HELLO WORD", "HI"])
    (33.33..., 8.33...)
    """
    from speechbrain.utils.metric_stats import ErrorRateStats

    ids = list(ids) if ids is not None else [str(i) for i in range(len(refs))]
    wer = ErrorRateStats()
    cer = ErrorRateStats(split_tokens=False)
    wer.append(ids, [h.split() for h in hyps], [r.split() for r in refs])
    cer.append(ids, [list(h) for h in hyps], [list(r) for r in refs])
    return float(wer.summarize("error_rate")), float(cer.summarize("error_rate"))


def resolve_wav(path, data_root, manifest=None):
    """A manifest's ``wav`` entry with SpeechBrain's ``$data_root`` replaced.

    A relative path is read from the working directory, as SpeechBrain reads
    it; when no such file is there but one is beside ``manifest`` (the
    manifest's folder), that one. When neither exists the
    ``FileNotFoundError`` names both places.

    Example
    -------
    >>> resolve_wav("$data_root/a.wav", "/corpus")
    '/corpus/a.wav'
    >>> resolve_wav("no/such.wav", None, manifest="/m/test.csv")
    Traceback (most recent call last):
    ...
    FileNotFoundError: audio file no/such.wav does not exist: relative paths are read from the working directory (.../no/such.wav) and then from the manifest's folder (/m/no/such.wav)
    """
    text = str(path).replace("$data_root", str(data_root)) if data_root is not None else str(path)
    if manifest is None or os.path.isabs(text) or not text.strip() or os.path.exists(text):
        return text
    beside = pathlib.Path(manifest).parent / text
    if beside.exists():
        return str(beside)
    raise FileNotFoundError(
        f"audio file {text} does not exist: relative paths are read from the working directory "
        f"({pathlib.Path(text).absolute()}) and then from the manifest's folder ({beside})"
    )


def parse_ks(ks):
    """The sorted support sizes of ``ks`` (non-negative integers).

    Example
    -------
    >>> parse_ks([5, 0, 1, 5])
    [0, 1, 5]
    """
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 0:
        raise ValueError(f"ks must be non-negative integers, got {list(ks)}")
    return out
