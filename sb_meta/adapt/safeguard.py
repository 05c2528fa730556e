"""A guard for supervised adaptation: keep it only when held-out support utterances say it helps.

A step size and step count chosen on other speakers can still overfit one
speaker's few utterances (the AN4 study shows such a case). :func:`guarded_adapt`
first adapts once per held-out support utterance (leave-one-out: on the other k - 1), with the same
settings, and counts the word errors on the held-out utterances before and
after; the adaptation on all k utterances is kept only when it removed more
errors than it added, otherwise the model is returned unchanged. It costs
``folds + 1`` adaptations instead of one and needs at least 2 utterances.

Example
-------
>>> import torch
>>> holdout_errors(None, [torch.zeros(1600)], ["HELLO"])
Traceback (most recent call last):
    ...
ValueError: the adaptation guard holds one of the support utterances out: it needs at least 2 utterances with one transcript each, got 1 utterance(s) and 1 transcript(s)
"""

import copy
import os

from speechbrain.utils.metric_stats import ErrorRateStats

__all__ = ["holdout_errors", "guarded_adapt"]


def _errors(model, wavs, refs, ids):
    """Word errors and reference words of ``model`` on ``wavs`` (SpeechBrain's WER counts)."""
    stats = ErrorRateStats()
    stats.append(ids, [h.split() for h in model.transcribe_waveforms(wavs)], [r.split() for r in refs])
    summary = stats.summarize()
    return summary["num_edits"], summary["num_scored_tokens"]


def holdout_errors(model, wavs, transcripts, folds=None, **adapt_kwargs):
    """Leave-one-out over the support: word errors on the held-out utterances, unadapted and adapted.

    Arguments
    ---------
    model : sb_meta.adapt.AdaptableASR
    wavs : list
        Support audio files, or 1-D waveforms at the model's sample rate.
    transcripts : list of str
        Their transcripts.
    folds : int, optional
        How many utterances are held out in turn (the first ``folds``); default all.
    **adapt_kwargs
        :meth:`~sb_meta.adapt.AdaptableASR.adapt` settings (steps, lr, adapt_params...).

    Returns
    -------
    dict
        ``errors_before``, ``errors_after``, ``words`` (summed over the folds), ``folds``.
    """
    n = len(wavs)
    if transcripts is None:
        raise ValueError("the adaptation guard decodes held-out support utterances against their "
                         "transcripts: give them (it cannot guard unsupervised adaptation)")
    if n < 2 or len(transcripts) != n:
        raise ValueError(f"the adaptation guard holds one of the support utterances out: it needs at least 2 "
                         f"utterances with one transcript each, got {n} utterance(s) and {len(transcripts)} transcript(s)")
    folds = n if folds is None else max(1, min(int(folds), n))
    wavs = [model.load_audio(w) if isinstance(w, (str, os.PathLike)) else w for w in wavs]
    ids = list(adapt_kwargs.pop("ids", None) or [f"utt{i}" for i in range(n)])
    before = after = words = 0
    for i in range(folds):
        keep = [j for j in range(n) if j != i]
        adapted = model.adapt([wavs[j] for j in keep], [transcripts[j] for j in keep],
                              ids=[ids[j] for j in keep], **adapt_kwargs)
        e0, w = _errors(model, [wavs[i]], [transcripts[i]], [ids[i]])
        e1, _ = _errors(adapted, [wavs[i]], [transcripts[i]], [ids[i]])
        before, after, words = before + e0, after + e1, words + w
    return {"errors_before": before, "errors_after": after, "words": words, "folds": folds}


def guarded_adapt(model, wavs, transcripts, folds=None, **adapt_kwargs):
    """``model`` adapted to the support when leave-one-out says it helps, else an unchanged copy.

    Either way the returned model's ``last_adaptation["guard"]`` records the
    held-out word errors before and after and whether the adaptation was kept
    (an unchanged copy records 0 steps); ``model`` itself is never modified.
    """
    check = holdout_errors(model, wavs, transcripts, folds=folds, **copy.deepcopy(adapt_kwargs))
    check["kept"] = bool(check["errors_after"] < check["errors_before"])
    if not check["kept"]:
        strategy = adapt_kwargs.get("strategy") or model.default_strategy  # what adapt() would have used
        return model._unchanged(strategy, list(adapt_kwargs.get("ids") or []), guard=check)
    adapted = model.adapt(wavs, transcripts, **adapt_kwargs)
    adapted.last_adaptation["guard"] = check
    return adapted
