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
>>> holdout_errors(None, Support([torch.zeros(1600)], ["HELLO"]), Method())
Traceback (most recent call last):
    ...
ValueError: the adaptation guard holds one of the support utterances out: it needs at least 2 utterances with one transcript each, got 1 utterance(s) and 1 transcript(s)
"""

import copy
import dataclasses
import os

from speechbrain.utils.metric_stats import ErrorRateStats

from sb_meta.adapt.method import Method, Support

__all__ = ["holdout_errors", "guarded_adapt"]


def _errors(model, wavs, refs, ids):
    """Word errors and reference words of ``model`` on ``wavs`` (SpeechBrain's WER counts)."""
    stats = ErrorRateStats()
    stats.append(ids, [h.split() for h in model.transcribe_waveforms(wavs)], [r.split() for r in refs])
    summary = stats.summarize()
    return summary["num_edits"], summary["num_scored_tokens"]


def _unguarded(model, method):
    """``method`` as a :class:`Method` without its guard (the guard adapts with it)."""
    method = method if isinstance(method, Method) else Method.coerce(method, model.registry)
    return dataclasses.replace(method, guard=False)


def holdout_errors(model, support, method=None, folds=None):
    """Leave-one-out over the support: word errors on the held-out utterances, unadapted and adapted.

    Arguments
    ---------
    model : sb_meta.adapt.AdaptableASR
    support : sb_meta.adapt.Support or (list, list)
        Support audio (files, or 1-D waveforms at the model's sample rate) and transcripts.
    method : sb_meta.adapt.Method or str, optional
        How each fold adapts (its ``guard`` is ignored).
    folds : int, optional
        How many utterances are held out in turn (the first ``folds``); default all.

    Returns
    -------
    dict
        ``errors_before``, ``errors_after``, ``words`` (summed over the folds), ``folds``.
    """
    support = Support.coerce(support)
    method = _unguarded(model, method)
    wavs, transcripts = list(support.audio), support.transcripts
    n = len(wavs)
    if transcripts is None:
        raise ValueError("the adaptation guard decodes held-out support utterances against their "
                         "transcripts: give them (it cannot guard unsupervised adaptation)")
    if n < 2 or len(transcripts) != n:
        raise ValueError(f"the adaptation guard holds one of the support utterances out: it needs at least 2 "
                         f"utterances with one transcript each, got {n} utterance(s) and {len(transcripts)} transcript(s)")
    folds = n if folds is None else max(1, min(int(folds), n))
    wavs = [model.load_audio(w) if isinstance(w, (str, os.PathLike)) else w for w in wavs]
    ids = list(support.ids or [f"utt{i}" for i in range(n)])
    before = after = words = 0
    for i in range(folds):
        keep = [j for j in range(n) if j != i]
        adapted = model.adapt(Support([wavs[j] for j in keep], [transcripts[j] for j in keep],
                                      [ids[j] for j in keep], support.task), copy.deepcopy(method))
        e0, w = _errors(model, [wavs[i]], [transcripts[i]], [ids[i]])
        e1, _ = _errors(adapted, [wavs[i]], [transcripts[i]], [ids[i]])
        before, after, words = before + e0, after + e1, words + w
    return {"errors_before": before, "errors_after": after, "words": words, "folds": folds}


def guarded_adapt(model, support, method=None, folds=None):
    """``model`` adapted to the support when leave-one-out says it helps, else an unchanged copy.

    Either way the returned model's ``last_adaptation["guard"]`` records the
    held-out word errors before and after and whether the adaptation was kept
    (an unchanged copy records 0 steps); ``model`` itself is never modified.
    """
    support = Support.coerce(support)
    method = _unguarded(model, method)
    check = holdout_errors(model, support, method, folds=folds)
    check["kept"] = bool(check["errors_after"] < check["errors_before"])
    if not check["kept"]:
        strategy = method.strategy or model.default_strategy  # what adapt() would have used
        return model.unchanged(strategy, list(support.ids or []), guard=check)
    adapted = model.adapt(support, method)
    adapted.last_adaptation["guard"] = check
    return adapted
