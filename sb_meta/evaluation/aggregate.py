"""Summaries of k-shot results: per task and method, merged shards, paired comparisons, the oracle gate."""

from sb_meta.evaluation.statistics import mean_std, summarize_paired

__all__ = ["UNADAPTED", "aggregate", "merge_results", "compare_models", "oracle_gate"]


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
    aggregate(merged)
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


def aggregate(results):
    """Set ``results["per_task"]`` and ``results["summary"]`` from its draws."""
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
