"""The k-shot adaptation protocol: WER/CER as a function of the support size.

:func:`evaluate_kshot` adapts a model to every task of a manifest (a speaker
for ``spk_id``, a (speaker, channel) pair, a language...) from ``k`` of its
utterances with each :class:`~sb_meta.adapt.Method` and scores the
adapted model on the task's other utterances;
:func:`sb_meta.evaluation.report.write_report` writes ``results.json``,
``report.md`` and ``wer_vs_k.png``. :func:`compare_models` pairs two models'
results draw by draw; :func:`select_on_dev` chooses steps, step size and
adapted parameters on development tasks.

Draws and pairing
-----------------
For task ``t``, support size ``k > 0`` and repeat ``r`` the support set is
``k`` utterances drawn with a generator seeded by ``(seed, t, k, r)``; the
*query* set is every other utterance of ``t``. All methods adapt on the
same draws, and every draw also scores the unadapted model on its query set,
so ``delta_wer`` (adapted - unadapted on the same utterances) is a paired
difference. The ``k = 0`` entry is the unadapted model on the query set of the
matched draw: repeat ``r`` of the largest evaluated ``k`` for that task (all
of the task's utterances when no ``k > 0`` is evaluated). A task with fewer
than ``k + 1`` utterances cannot be evaluated at that ``k`` and is listed in
``results["skipped"]`` with the reason; a draw whose adaptation fails on bad
data is listed in ``results["failed"]``. Nothing is dropped silently.

WER and CER are SpeechBrain's ``ErrorRateStats`` over the query set (words,
and characters spaces included), in percent. Means and standard deviations
(``ddof=1``) are over repeats in ``per_task`` and over all draws (tasks x
repeats) in ``summary``; intervals are 95% two-level bootstrap intervals over
tasks and draws (:mod:`sb_meta.evaluation.statistics`).
"""

import logging
import math
import os
import pathlib
import time

import torch

from sb_meta.adapt.method import Support, methods_from
from sb_meta.adapt.plan import plan
from sb_meta.evaluation.aggregate import UNADAPTED, aggregate, compare_models, merge_results, oracle_gate
from sb_meta.evaluation.draws import draw_support, error_rates, parse_ks, resolve_wav, seeded

logger = logging.getLogger(__name__)

__all__ = [
    "UNADAPTED",
    "evaluate_kshot",
    "merge_results",
    "compare_models",
    "oracle_gate",
    "select_on_dev",
    "draw_support",
    "error_rates",
    "resolve_wav",
]


def evaluate_kshot(model, manifest_csv, task_column="spk_id", ks=(0, 1, 2, 5), repeats=3, strategies=("finetune",),
                   methods=None, steps=3, lr=None, seed=0, progress=True, batch_size=8, adapt_params=None,
                   data_root=None, tasks=None):
    """Adapt to every task from ``k`` utterances and score the rest.

    Arguments
    ---------
    model : sb_meta.adapt.AdaptableASR or str
        The model, or a folder for :func:`sb_meta.adapt.load_model`.
    manifest_csv : str or pathlib.Path
        SpeechBrain CSV manifest (``ID``, ``wav``, ``wrd`` and ``task_column``).
    task_column : str
        Column whose values are the tasks.
    ks : sequence of int
        Support sizes; 0 is the unadapted model.
    repeats : int
        Support draws per task and ``k``.
    strategies : sequence of str
        Strategies to compare, each a method of that name (same draws for all).
    methods : sequence, optional
        :class:`~sb_meta.adapt.Method` s (or their string forms /
        dicts) instead of ``strategies``.
    steps, lr, adapt_params
        What a method leaves unset: adaptation steps, step size (default the
        model's; see ``AdaptableASR.adapt``), parameter name patterns.
    seed : int
        Draws are seeded by ``(seed, task, k, repeat)``.
    progress : bool
        Show a tqdm progress bar.
    batch_size : int
        Query utterances transcribed per batch (grouped by length).
    data_root : str, optional
        Replaces ``$data_root`` in ``wav`` (default: the manifest's folder).
    tasks : sequence of str, optional
        Only these tasks.

    Returns
    -------
    dict
        ``config``, ``tasks`` (utterances per task), ``draws`` (one record per
        task, k and repeat), ``per_task[task][method][str(k)]`` and
        ``summary[method][str(k)]`` (``wer_mean``, ``wer_std``, ``cer_mean``,
        ``cer_std``, ``n``, ``base_wer_mean``, ``delta_wer_mean`` with its
        ``delta_ci``, ``relative`` reduction with ``relative_ci``,
        ``worse_tasks`` / ``worse_fraction``...), ``skipped`` and ``failed``.

    Example
    -------
    >>> results = evaluate_kshot("pretrained", "test.csv", ks=(0, 5))  # doctest: +SKIP
    """
    from sb_meta.adapt import load_model

    if lr is not None and not (math.isfinite(float(lr)) and float(lr) > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r} (every draw would fail)")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    model = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    ks = parse_ks(ks)
    methods = check_methods(model, methods if methods is not None else strategies, ks)
    manifest_csv = pathlib.Path(manifest_csv)
    by_id, groups = read_tasks(manifest_csv, task_column, data_root, tasks)
    check_utterances(model, manifest_csv, by_id, groups)
    plan, skipped = plan_draws(groups, ks)
    defaults = dict(steps=steps, lr=lr, adapt_params=list(adapt_params) if adapt_params else None)
    scorer = Scorer(model, by_id, batch_size)
    draws, failed = run_draws(scorer, groups, plan, ks, repeats, seed, methods, defaults, progress)
    config = {"model": str(model.source), "trained_strategy": model.trained_strategy, "manifest": str(manifest_csv),
              "task_column": task_column, "ks": ks, "repeats": repeats, "strategies": [m.name for m in methods],
              "methods": [m.as_dict() for m in methods], **defaults, "seed": seed, "batch_size": batch_size}
    results = {"config": config, "tasks": {t: len(ids) for t, ids in sorted(groups.items())}, "draws": draws,
               "skipped": skipped, "failed": failed}
    aggregate(results)
    return results


def check_methods(model, items, ks):
    """The :class:`~sb_meta.adapt.Method` s of ``items``, each checked against ``model`` before any work."""
    methods = methods_from(items, registry=model.registry)
    if not methods and any(k > 0 for k in ks):
        raise ValueError("no method given")
    for method in methods:  # unknown / unusable: fail before any work
        plan(model, method)
    return methods


def read_tasks(manifest_csv, task_column, data_root=None, tasks=None):
    """``(rows by ID with resolved wav paths, {task: [IDs]})`` of a manifest.

    A wav path that cannot be resolved is kept as written (:func:`check_utterances` names it).
    """
    from sb_meta.data.manifest import read_manifest

    rows = read_manifest(manifest_csv, required=("ID", "duration", "wav", "wrd", task_column))
    if not rows:
        raise ValueError(f"manifest {manifest_csv} has no utterance")
    data_root = manifest_csv.parent if data_root is None else data_root
    by_id, groups = {}, {}
    for row in rows:
        uid = str(row["ID"])
        if uid in by_id:
            raise ValueError(f"manifest {manifest_csv} has a duplicate ID {uid!r}")
        try:
            wav, missing = resolve_wav(row["wav"], data_root, manifest_csv), None
        except FileNotFoundError as exc:
            wav, missing = str(row["wav"]), str(exc)
        by_id[uid] = dict(row, wav=wav, _missing=missing)
        groups.setdefault(str(row[task_column]), []).append(uid)
    if tasks is not None:
        unknown = sorted(set(map(str, tasks)) - set(groups))
        if unknown:
            raise ValueError(f"tasks {unknown} are not in {manifest_csv}; tasks are {sorted(groups)}")
        groups = {t: ids for t, ids in groups.items() if t in set(map(str, tasks))}
    return by_id, groups


def check_utterances(model, manifest_csv, by_id, groups):
    """Fail early on bad data, naming every bad utterance (missing audio, untokenizable transcript)."""
    problems = []
    for uid in sorted(u for ids in groups.values() for u in ids):
        row = by_id[uid]
        if not pathlib.Path(row["wav"]).is_file():
            problems.append(f"{uid}: " + (row["_missing"] or f"audio file {row['wav']} does not exist"))
            continue
        try:
            model.encode_transcript(row["wrd"], name=uid)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        shown = "\n  ".join(problems[:20])
        if len(problems) > 20:
            shown += f"\n  ... ({len(problems)} in all)"
        raise ValueError(f"{len(problems)} bad utterance(s) in {manifest_csv}:\n  {shown}")


def plan_draws(groups, ks):
    """``({task: feasible k > 0}, skipped)``: a task needs ``k + 1`` utterances at ``k``."""
    skipped, plan_ = [], {}
    for task, ids in sorted(groups.items()):
        feasible = []
        for k in ks:
            if len(ids) < k + 1:
                skipped.append({"task": task, "k": k, "utterances": len(ids), "reason": (
                    f"task {task!r} has {len(ids)} utterance(s); k={k} needs at least {k + 1} "
                    f"({k} support + 1 query)")})
            elif k > 0:
                feasible.append(k)
        plan_[task] = feasible
    if skipped:
        logger.warning("%d (task, k) combination(s) skipped for too few utterances: %s",
                       len(skipped), "; ".join(s["reason"] for s in skipped[:10]))
    return plan_, skipped


class Scorer:
    """Audio (read once) and WER/CER of a model on query utterances; the unadapted model's
    scores are cached per query set."""

    def __init__(self, model, by_id, batch_size):
        self.model, self.by_id, self.batch_size = model, by_id, batch_size
        self._audio, self._base = {}, {}

    def wav(self, uid):
        if uid not in self._audio:
            self._audio[uid] = self.model.load_audio(self.by_id[uid]["wav"], what=f"audio file of {uid}")
        return self._audio[uid]

    def support(self, ids, task):
        """The :class:`~sb_meta.adapt.Support` of ``ids``."""
        return Support([self.wav(u) for u in ids], [self.by_id[u]["wrd"] for u in ids], list(ids), task)

    def score(self, model, query):
        hyps = model.transcribe_waveforms([self.wav(u) for u in query], batch_size=self.batch_size)
        wer, cer = error_rates(hyps, [self.by_id[u]["wrd"] for u in query], ids=query)
        return {"wer": wer, "cer": cer, "hyps": dict(zip(query, hyps))}

    def base(self, query):
        key = tuple(query)
        if key not in self._base:
            self._base[key] = self.score(self.model, query)
        return self._base[key]


def run_draws(scorer, groups, plan_, ks, repeats, seed, methods, defaults, progress):
    """``(draws, failed)``: every task, repeat and feasible k, each method adapted on the same draw;
    the k = 0 entries on the query of the matched draw (see the module documentation)."""
    from tqdm.auto import tqdm

    draws, failed = [], []
    total = sum(len(f) * repeats * (1 + len(methods)) for f in plan_.values())
    total += sum(repeats for f in plan_.values() if not f) if 0 in ks else 0
    bar = tqdm(total=total, desc="k-shot evaluation", unit="run", disable=not progress)
    try:
        for task, feasible in plan_.items():
            ids = groups[task]
            for r in range(repeats):
                matched = None
                for k in feasible:
                    support, query = draw_support(ids, k, seed, task, r)
                    bar.set_postfix_str(f"{task} k={k} r={r}", refresh=False)
                    base = scorer.base(query)
                    bar.update(1)
                    record = {"task": task, "k": k, "repeat": r, "support": support, "query": query,
                              "unadapted": {"wer": base["wer"], "cer": base["cer"]}, "adapted": {}}
                    for method in methods:
                        adapt_and_score(scorer, record, method.with_defaults(**defaults), seed, failed)
                        bar.update(1)
                    draws.append(record)
                    matched = (k, query, base)
                if 0 in ks:
                    if matched is None:
                        matched = (None, sorted(ids), scorer.base(sorted(ids)))
                        bar.update(1)
                    draws.append({"task": task, "k": 0, "repeat": r, "matched_k": matched[0], "support": [],
                                  "query": matched[1], "adapted": {},
                                  "unadapted": {"wer": matched[2]["wer"], "cer": matched[2]["cer"]}})
    finally:
        bar.close()
    return draws, failed


def adapt_and_score(scorer, record, method, seed, failed):
    """Adapt to ``record``'s support with ``method`` and add its query scores to ``record``;
    a failure on bad data (``ValueError``, ``AdaptationError``) goes to ``failed``."""
    from sb_meta.adapt import AdaptationError

    task, k, r, name = record["task"], record["k"], record["repeat"], method.name
    t0 = time.time()
    try:
        # random parts of an adaptation (augmentation, dropout) draw from a CPU generator seeded
        # by the draw and the method, so that a method's result is reproducible and does not
        # depend on which methods ran before it; the caller's generator state is restored afterwards
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeded(seed, str(task), int(k), int(r), name).getrandbits(63))
            adapted = scorer.model.adapt(scorer.support(record["support"], task), method)
    except (ValueError, AdaptationError) as exc:  # bad data is reported
        logger.warning("adaptation failed (%s k=%d r=%d %s): %s", task, k, r, name, exc)
        failed.append({"task": task, "k": k, "repeat": r, "strategy": name,
                       "reason": f"{type(exc).__name__}: {exc}"})
        return
    seconds = time.time() - t0
    got, base = scorer.score(adapted, record["query"]), record["unadapted"]
    record["adapted"][name] = {"wer": got["wer"], "cer": got["cer"], "delta_wer": got["wer"] - base["wer"],
                               "delta_cer": got["cer"] - base["cer"], "adapt_seconds": round(seconds, 3)}
    guard = (getattr(adapted, "last_adaptation", None) or {}).get("guard")
    if guard is not None:  # what the held-out support said (sb_meta.adapt.safeguard)
        record["adapted"][name]["guard"] = guard


def select_on_dev(model, dev_csv, grid, k=5, repeats=2, seed=0, task_column="spk_id", **kwargs):
    """Choose a method's steps, step size and adapted parameters on development tasks.

    Arguments
    ---------
    model : sb_meta.adapt.AdaptableASR
    dev_csv : str or pathlib.Path
        Manifest of the development tasks (never the test tasks).
    grid : list of Method or dict
        The candidates (each with a distinct ``name``).
    k, repeats, seed, task_column
        The protocol's settings on the dev tasks.
    **kwargs
        More :func:`evaluate_kshot` arguments.

    Returns
    -------
    (Method, dict)
        The candidate with the lowest mean adapted WER among those that adapted on
        every dev draw, and the record of the selection (every candidate's mean WER
        and failed draws, the dev manifest and settings).

    A candidate whose adaptation failed on a dev draw (e.g. diverged at its step
    size) cannot be chosen: its mean WER covers only the draws that survived, so
    it would look better than a setting that works everywhere, and would fail the
    same way on new tasks.
    """
    grid = methods_from(grid)
    results = evaluate_kshot(model, dev_csv, task_column=task_column, ks=(k,), repeats=repeats,
                             methods=grid, seed=seed, **kwargs)
    scores = {m.name: results["summary"][m.name].get(str(k), {}).get("wer_mean") for m in grid}
    failed = {m.name: sum(f["strategy"] == m.name for f in results["failed"]) for m in grid}
    valid = {n: v for n, v in scores.items() if v is not None and not failed[n]}
    if not valid:
        reasons = "; ".join(f"{f['strategy']}: {f['reason']}" for f in results["failed"][:3])
        raise ValueError(f"no candidate adapted on every dev draw of {dev_csv}" + (f" ({reasons})" if reasons else ""))
    best = min(valid, key=valid.get)
    unadapted = results["summary"][best].get(str(k), {}).get("base_wer_mean")  # same draws for all
    record = {"dev_manifest": str(dev_csv), "k": k, "repeats": repeats, "seed": seed,
              "candidates": {m.name: dict(m.as_dict(), dev_wer=scores[m.name], failed=failed[m.name]) for m in grid},
              "chosen": best, "unadapted_dev_wer": unadapted}
    return next(m for m in grid if m.name == best), record
