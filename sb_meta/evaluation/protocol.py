"""The k-shot adaptation protocol: WER/CER as a function of the support size.

:func:`evaluate_kshot` adapts a model to every task of a manifest (a speaker
for ``spk_id``, a (speaker, channel) pair, a language...) from ``k`` of its
utterances with each :class:`~sb_meta.evaluation.methods.Method` and scores the
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

import hashlib
import logging
import math
import os
import pathlib
import random
import time

import torch

from sb_meta.evaluation.methods import methods_from
from sb_meta.evaluation.statistics import mean_std, summarize_paired

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


def _rng(*keys):
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
    support = sorted(_rng(seed, str(task), int(k), int(repeat)).sample(ids, k))
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


def _parse_ks(ks):
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 0:
        raise ValueError(f"ks must be non-negative integers, got {list(ks)}")
    return out


def evaluate_kshot(
    model,
    manifest_csv,
    task_column="spk_id",
    ks=(0, 1, 2, 5),
    repeats=3,
    strategies=("finetune",),
    methods=None,
    steps=3,
    lr=None,
    seed=0,
    progress=True,
    batch_size=8,
    adapt_params=None,
    data_root=None,
    tasks=None,
):
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
        :class:`~sb_meta.evaluation.methods.Method` s (or their names /
        dicts) instead of ``strategies``.
    steps : int
        Adaptation steps.
    lr : float, optional
        Adaptation step size (default: the model's; see ``AdaptableASR.adapt``).
    seed : int
        Draws are seeded by ``(seed, task, k, repeat)``.
    progress : bool
        Show a tqdm progress bar.
    batch_size : int
        Query utterances transcribed per batch (grouped by length).
    adapt_params : list of str, optional
        Parameter name patterns to adapt (default: each strategy's).
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
    from tqdm.auto import tqdm

    from sb_meta.data.manifest import read_manifest

    if lr is not None and not (math.isfinite(float(lr)) and float(lr) > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r} (every draw would fail)")
    if isinstance(model, (str, os.PathLike)):
        from sb_meta.adapt import load_model

        model = load_model(model)
    ks = _parse_ks(ks)
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    methods = methods_from(methods if methods is not None else strategies,
                           adapters=model.registry.addon_names("adapter"))
    if not methods and any(k > 0 for k in ks):
        raise ValueError("no method given")
    for method in methods:  # unknown / unusable: fail before any work
        model.check_strategy(method.strategy or model.default_strategy)
        for addon in method.addons:
            model.registry.get_addon(addon)
    strategies = [m.name for m in methods]

    manifest_csv = pathlib.Path(manifest_csv)
    rows = read_manifest(manifest_csv, required=("ID", "duration", "wav", "wrd", task_column))
    if not rows:
        raise ValueError(f"manifest {manifest_csv} has no utterance")
    data_root = manifest_csv.parent if data_root is None else data_root
    by_id, groups, missing = {}, {}, {}
    for row in rows:
        uid = str(row["ID"])
        if uid in by_id:
            raise ValueError(f"manifest {manifest_csv} has a duplicate ID {uid!r}")
        try:
            wav = resolve_wav(row["wav"], data_root, manifest_csv)
        except FileNotFoundError as exc:
            wav = str(row["wav"])
            missing[uid] = str(exc)
        by_id[uid] = dict(row, wav=wav)
        groups.setdefault(str(row[task_column]), []).append(uid)
    if tasks is not None:
        unknown = sorted(set(map(str, tasks)) - set(groups))
        if unknown:
            raise ValueError(f"tasks {unknown} are not in {manifest_csv}; tasks are {sorted(groups)}")
        groups = {t: ids for t, ids in groups.items() if t in set(map(str, tasks))}

    # fail early on bad data, naming every bad utterance
    problems = []
    for uid in sorted(u for ids in groups.values() for u in ids):
        row = by_id[uid]
        if not pathlib.Path(row["wav"]).is_file():
            problems.append(f"{uid}: " + missing.get(uid, f"audio file {row['wav']} does not exist"))
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

    audio = {}

    def wav_of(uid):
        if uid not in audio:
            audio[uid] = model.load_audio(by_id[uid]["wav"], what=f"audio file of {uid}")
        return audio[uid]

    base_cache = {}

    def score(m, query):
        hyps = m.transcribe_waveforms([wav_of(u) for u in query], batch_size=batch_size)
        wer, cer = error_rates(hyps, [by_id[u]["wrd"] for u in query], ids=query)
        return {"wer": wer, "cer": cer, "hyps": dict(zip(query, hyps))}

    def base_score(query):
        key = tuple(query)
        if key not in base_cache:
            base_cache[key] = score(model, query)
        return base_cache[key]

    skipped, failed, draws = [], [], []
    pos_ks = [k for k in ks if k > 0]
    plan = {}
    for task, ids in sorted(groups.items()):
        feasible = []
        for k in ks:
            if len(ids) < k + 1:
                skipped.append({
                    "task": task,
                    "k": k,
                    "utterances": len(ids),
                    "reason": (
                        f"task {task!r} has {len(ids)} utterance(s); k={k} needs at least "
                        f"{k + 1} ({k} support + 1 query)"
                    ),
                })
            elif k > 0:
                feasible.append(k)
        plan[task] = feasible
    if skipped:
        logger.warning(
            "%d (task, k) combination(s) skipped for too few utterances: %s",
            len(skipped), "; ".join(s["reason"] for s in skipped[:10]),
        )
    total = sum(len(f) * repeats * (1 + len(methods)) for f in plan.values())
    total += sum(repeats for f in plan.values() if not f) if 0 in ks else 0
    bar = tqdm(total=total, desc="k-shot evaluation", unit="run", disable=not progress)
    try:
        for task, feasible in plan.items():
            ids = groups[task]
            for r in range(repeats):
                matched = None
                for k in feasible:
                    support, query = draw_support(ids, k, seed, task, r)
                    bar.set_postfix_str(f"{task} k={k} r={r}", refresh=False)
                    base = base_score(query)
                    bar.update(1)
                    record = {
                        "task": task, "k": k, "repeat": r,
                        "support": support, "query": query,
                        "unadapted": {"wer": base["wer"], "cer": base["cer"]},
                        "adapted": {},
                    }
                    for method in methods:
                        name = method.name
                        t0 = time.time()
                        try:
                            # random parts of an adaptation (augmentation, dropout) draw from a
                            # CPU generator seeded by the draw and the method, so that a method's
                            # result is reproducible and does not depend on which methods ran
                            # before it; the caller's generator state is restored afterwards
                            with torch.random.fork_rng(devices=[]):
                                torch.manual_seed(_rng(seed, str(task), int(k), int(r), name).getrandbits(63))
                                adapted = method.adapt(
                                    model, [wav_of(u) for u in support],
                                    [by_id[u]["wrd"] for u in support], support, task,
                                    steps=steps, lr=lr, adapt_params=adapt_params,
                                )
                        except Exception as exc:  # noqa: BLE001 - bad data is reported
                            from sb_meta.adapt import AdaptationError

                            if not isinstance(exc, (ValueError, AdaptationError)):
                                raise
                            logger.warning("adaptation failed (%s k=%d r=%d %s): %s", task, k, r, name, exc)
                            failed.append({
                                "task": task, "k": k, "repeat": r, "strategy": name,
                                "reason": f"{type(exc).__name__}: {exc}",
                            })
                            bar.update(1)
                            continue
                        seconds = time.time() - t0
                        got = score(adapted, query)
                        record["adapted"][name] = {
                            "wer": got["wer"], "cer": got["cer"],
                            "delta_wer": got["wer"] - base["wer"],
                            "delta_cer": got["cer"] - base["cer"],
                            "adapt_seconds": round(seconds, 3),
                        }
                        guard = (getattr(adapted, "last_adaptation", None) or {}).get("guard")
                        if guard is not None:  # what the held-out support said (sb_meta.adapt.safeguard)
                            record["adapted"][name]["guard"] = guard
                        bar.update(1)
                    draws.append(record)
                    matched = (k, query, base)
                if 0 in ks:
                    if matched is None:
                        query = sorted(ids)
                        base = base_score(query)
                        bar.update(1)
                        matched = (None, query, base)
                    draws.append({
                        "task": task, "k": 0, "repeat": r,
                        "matched_k": matched[0], "support": [], "query": matched[1],
                        "unadapted": {"wer": matched[2]["wer"], "cer": matched[2]["cer"]},
                        "adapted": {},
                    })
    finally:
        bar.close()

    results = {
        "config": {
            "model": str(model.source),
            "trained_strategy": model.trained_strategy,
            "manifest": str(manifest_csv),
            "task_column": task_column,
            "ks": ks,
            "repeats": repeats,
            "strategies": strategies,
            "methods": [m.as_dict() for m in methods],
            "steps": steps,
            "lr": lr,
            "adapt_params": list(adapt_params) if adapt_params else None,
            "seed": seed,
            "batch_size": batch_size,
        },
        "tasks": {t: len(ids) for t, ids in sorted(groups.items())},
        "draws": draws,
        "skipped": skipped,
        "failed": failed,
    }
    _aggregate(results, pos_ks)
    return results


def merge_results(parts):
    """One evaluation from evaluations of disjoint sets of tasks (e.g. run in parallel
    processes with ``evaluate_kshot(..., tasks=shard)``): their draws, skips and failures
    together, summarised again.

    Every part must have the same configuration (model, manifest, methods, ks, repeats,
    seed...), so that each task's draws are those one evaluation of all tasks makes.

    Raises
    ------
    ValueError
        When the configurations differ or two parts evaluated the same task.

    Example
    -------
    >>> d = lambda t, w: {"task": t, "k": 5, "repeat": 0, "query": ["u"], "unadapted": {"wer": 10.0, "cer": 5.0},
    ...                   "adapted": {"m": {"wer": w, "cer": 5.0}}}
    >>> cfg = {"strategies": ["m"], "ks": [5], "seed": 0}
    >>> parts = [{"config": cfg, "tasks": {"a": 6}, "draws": [d("a", 5.0)], "skipped": [], "failed": []},
    ...          {"config": cfg, "tasks": {"b": 6}, "draws": [d("b", 10.0)], "skipped": [], "failed": []}]
    >>> merged = merge_results(parts)
    >>> sorted(merged["tasks"]), merged["summary"]["m"]["5"]["wer_mean"]
    (['a', 'b'], 7.5)
    """
    parts = list(parts)
    if not parts:
        raise ValueError("no evaluation to merge")
    config = parts[0]["config"]
    tasks = {}
    for i, part in enumerate(parts):
        if part["config"] != config:
            differ = sorted(k for k in set(config) | set(part["config"]) if config.get(k) != part["config"].get(k))
            raise ValueError(f"evaluation {i} has another configuration ({', '.join(differ)} differ)")
        both = sorted(set(tasks) & set(part["tasks"]))
        if both:
            raise ValueError(f"evaluation {i} evaluated tasks already merged: {both[:5]}")
        tasks.update(part["tasks"])
    merged = {"config": config, "tasks": dict(sorted(tasks.items())),
              "draws": [d for p in parts for d in p["draws"]],
              "skipped": [s for p in parts for s in p["skipped"]],
              "failed": [f for p in parts for f in p["failed"]]}
    _aggregate(merged, [k for k in config["ks"] if k > 0])
    return merged


def _entry(draws, strategy, k, seed=0):
    """Aggregated metrics of ``draws`` (all of one k) for ``strategy``."""
    if k == 0:
        done = list(draws)
        wers = [d["unadapted"]["wer"] for d in done]
        cers = [d["unadapted"]["cer"] for d in done]
    else:
        done = [d for d in draws if strategy in d["adapted"]]
        wers = [d["adapted"][strategy]["wer"] for d in done]
        cers = [d["adapted"][strategy]["cer"] for d in done]
    if not wers:
        return None
    bases = [d["unadapted"]["wer"] for d in done]
    wer_mean, wer_std = mean_std(wers)
    cer_mean, cer_std = mean_std(cers)
    deltas = [w - b for w, b in zip(wers, bases)]
    delta_mean, delta_std = mean_std(deltas)
    base, other = {}, {}
    for d, b, w in zip(done, bases, wers):
        base.setdefault(d["task"], []).append(b)
        other.setdefault(d["task"], []).append(w)
    paired = summarize_paired(base, other, seed=seed)
    return {
        "wer_mean": wer_mean, "wer_std": wer_std,
        "cer_mean": cer_mean, "cer_std": cer_std,
        "base_wer_mean": mean_std(bases)[0],
        "delta_wer_mean": delta_mean, "delta_wer_std": delta_std,
        "delta_ci": paired["delta_ci"],
        "relative": paired["relative"], "relative_ci": paired["relative_ci"],
        "worse_tasks": paired["worse_tasks"], "worse_fraction": paired["worse_fraction"],
        "worse_draws": paired["worse_draws"],
        "n": len(wers),
        "tasks": len({d["task"] for d in done}),
    }


def _aggregate(results, pos_ks):
    strategies = results["config"]["strategies"] or ["unadapted"]
    ks = results["config"]["ks"]
    seed = results["config"].get("seed", 0)
    per_task, summary = {}, {}
    for name in strategies:
        summary[name] = {}
        for k in ks:
            of_k = [d for d in results["draws"] if d["k"] == k]
            entry = _entry(of_k, name, k, seed)
            if entry is not None:
                summary[name][str(k)] = entry
            for task in results["tasks"]:
                sub = [d for d in of_k if d["task"] == task]
                entry = _entry(sub, name, k, seed)
                if entry is not None:
                    entry["wer"] = (
                        [d["unadapted"]["wer"] for d in sub] if k == 0
                        else [d["adapted"][name]["wer"] for d in sub if name in d["adapted"]]
                    )
                    per_task.setdefault(task, {}).setdefault(name, {})[str(k)] = entry
    results["per_task"] = per_task
    results["summary"] = summary


#: the "method" of :func:`compare_models` that stands for the unadapted model on each draw's
#: query (no method name can hold ":", which separates the fields of a method on the command line)
UNADAPTED = ":unadapted"


def _per_draw(results, method, k):
    """``{(task, repeat): adapted WER}`` of ``method`` at ``k`` (k = 0 or :data:`UNADAPTED`: unadapted)."""
    out = {}
    for d in results["draws"]:
        if d["k"] != int(k):
            continue
        if int(k) == 0 or method == UNADAPTED:
            out[(d["task"], d["repeat"])] = (d["query"], d["unadapted"]["wer"])
        elif method in d["adapted"]:
            out[(d["task"], d["repeat"])] = (d["query"], d["adapted"][method]["wer"])
    return out


def compare_models(results_a, results_b, method_a, k, method_b=None, seed=0):
    """Paired difference between two models' WER on the same draws (b minus a).

    Both results must come from the same manifest, seed and tasks (so the
    support and query utterances of each draw are the same; checked).
    ``method_a`` or ``method_b`` may be :data:`UNADAPTED`: that model before
    adaptation, on the same queries (e.g. a meta-trained model adapted against
    the base model not adapted at all).

    Returns
    -------
    dict
        As :func:`~sb_meta.evaluation.statistics.summarize_paired`, with
        ``base_mean`` the WER of ``a`` and ``mean`` that of ``b``.

    Example
    -------
    >>> d = lambda wer: {"task": "t", "repeat": 0, "k": 5, "query": ["u"], "adapted": {"m": {"wer": wer}}}
    >>> compare_models({"draws": [d(20.0)]}, {"draws": [d(15.0)]}, "m", 5)["delta"]
    -5.0
    """
    a, b = _per_draw(results_a, method_a, k), _per_draw(results_b, method_b or method_a, k)
    common = sorted(set(a) & set(b))
    for key in common:
        if a[key][0] != b[key][0]:
            raise ValueError(f"draw {key} has other query utterances in the two results "
                             "(another manifest or seed?)")
    base, other = {}, {}
    for task, rep in common:
        base.setdefault(task, []).append(a[(task, rep)][1])
        other.setdefault(task, []).append(b[(task, rep)][1])
    return summarize_paired(base, other, seed=seed)


def oracle_gate(results, method, k):
    """The ceiling of every rule that keeps or drops an adaptation draw by draw.

    A safeguard (the leave-one-out guard, a confidence gate, a support-WER
    threshold) decides for each draw whether to use the adapted or the unadapted
    model. No such rule can do better than an oracle that sees the query
    transcripts and keeps the adaptation exactly on the draws where it lowered
    the query WER. If even this oracle's relative reduction is small, no gate
    placed on top of the adaptation can make it pay: it would take a better
    adaptation. (The oracle also profits from noise, so its figure is a bound,
    never an estimate of what a real rule achieves.)

    Returns
    -------
    dict
        ``unadapted``, ``adapted``, ``oracle`` (mean query WERs over the draws of
        ``method`` at ``k``), ``relative`` and ``oracle_relative`` (reductions
        relative to ``unadapted``; positive is better), ``helped`` (draws where
        the adaptation lowered the WER) and ``n`` (draws).

    Example
    -------
    >>> d = lambda t, base, wer: {"task": t, "k": 5, "unadapted": {"wer": base}, "adapted": {"m": {"wer": wer}}}
    >>> r = oracle_gate({"draws": [d("a", 10.0, 6.0), d("b", 10.0, 16.0)]}, "m", 5)
    >>> r["adapted"], r["oracle"], r["oracle_relative"], r["helped"]
    (11.0, 8.0, 0.2, 1)
    """
    done = [d for d in results["draws"] if d["k"] == int(k) and method in d.get("adapted", {})]
    if not done:
        raise ValueError(f"no draw of method {method!r} at k={k}")
    base = sum(d["unadapted"]["wer"] for d in done) / len(done)
    adapted = sum(d["adapted"][method]["wer"] for d in done) / len(done)
    oracle = sum(min(d["unadapted"]["wer"], d["adapted"][method]["wer"]) for d in done) / len(done)

    def rel(x):
        return (base - x) / base if base else 0.0

    return {"unadapted": base, "adapted": adapted, "oracle": oracle, "relative": rel(adapted),
            "oracle_relative": rel(oracle), "n": len(done),
            "helped": sum(d["adapted"][method]["wer"] < d["unadapted"]["wer"] for d in done)}


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


