"""Statistics of the k-shot protocol: paired differences with bootstrap intervals.

Every quantity the protocol reports is a mean over *draws* (one support draw
of one task) of a per-draw value, e.g. the paired difference "adapted minus
unadapted WER on the same query utterances". Draws of the same task are not
independent (same speaker), so intervals come from a **two-level bootstrap**:
resample tasks with replacement, then, within each resampled task, its draws
with replacement; the statistic is recomputed on every resample and the 95%
interval is the 2.5th-97.5th percentile of those values.
"""

import math
import random

__all__ = ["mean_std", "bootstrap_ci", "summarize_paired", "ratio_ci", "CI_LEVEL", "N_BOOT"]

#: confidence level of every interval
CI_LEVEL = 0.95
#: bootstrap resamples
N_BOOT = 2000


def mean_std(values):
    """``(mean, standard deviation (ddof=1))`` of ``values``; ``(None, None)`` when empty.

    Example
    -------
    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    values = [float(v) for v in values]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _resample(groups, rnd):
    """One two-level resample: tasks with replacement, then draws within each."""
    keys = list(groups)
    out = []
    for _ in keys:
        values = groups[keys[rnd.randrange(len(keys))]]
        out.append([values[rnd.randrange(len(values))] for _ in values])
    return out


def bootstrap_ci(groups, statistic=None, n_boot=N_BOOT, level=CI_LEVEL, seed=0):
    """Mean (or ``statistic``) of per-draw values and its two-level bootstrap interval.

    Arguments
    ---------
    groups : dict
        ``task -> list of per-draw values`` (empty tasks are ignored).
    statistic : callable, optional
        ``f(list of per-task lists) -> float``; default the mean over all draws.
    n_boot : int
        Resamples.
    level : float
        Confidence level.
    seed : int
        The resamples are a function of it.

    Returns
    -------
    (float, float, float)
        The statistic on the data, the lower and the upper bound.

    Example
    -------
    >>> est, lo, hi = bootstrap_ci({"a": [-2.0, -2.0], "b": [-2.0]})
    >>> est, lo, hi
    (-2.0, -2.0, -2.0)
    >>> est, lo, hi = bootstrap_ci({t: [float(t % 2)] for t in range(40)})
    >>> est, lo < 0.5 < hi
    (0.5, True)
    """
    groups = {k: list(map(float, v)) for k, v in groups.items() if len(v)}
    if not groups:
        return None, None, None
    if statistic is None:
        def statistic(lists):
            flat = [x for values in lists for x in values]
            return sum(flat) / len(flat)
    estimate = statistic(list(groups.values()))
    rnd = random.Random(seed)
    boots = sorted(statistic(_resample(groups, rnd)) for _ in range(n_boot))
    alpha = (1.0 - level) / 2.0
    lo = boots[int(math.floor(alpha * (n_boot - 1)))]
    hi = boots[int(math.ceil((1.0 - alpha) * (n_boot - 1)))]
    return estimate, lo, hi


def ratio_ci(num_groups, den_groups, n_boot=N_BOOT, level=CI_LEVEL, seed=0):
    """``mean(num) / mean(den)`` over paired per-draw values, with the same two-level
    bootstrap (the pairs are resampled together).

    Example
    -------
    >>> ratio_ci({"a": [1.0, 1.0], "b": [2.0]}, {"a": [10.0, 10.0], "b": [20.0]})[0]
    0.1
    """
    groups = {t: list(zip(num_groups[t], den_groups[t])) for t in num_groups if num_groups[t]}

    def statistic(lists):
        pairs = [p for values in lists for p in values]
        den = sum(p[1] for p in pairs)
        return sum(p[0] for p in pairs) / den if den else float("nan")

    if not groups:
        return None, None, None
    estimate = statistic(list(groups.values()))
    rnd = random.Random(seed)
    boots = sorted(statistic(_resample(groups, rnd)) for _ in range(n_boot))
    alpha = (1.0 - level) / 2.0
    return (estimate, boots[int(math.floor(alpha * (n_boot - 1)))],
            boots[int(math.ceil((1.0 - alpha) * (n_boot - 1)))])


def summarize_paired(base, other, seed=0):
    """Paired comparison of two per-draw metrics (e.g. unadapted and adapted WER).

    Arguments
    ---------
    base, other : dict
        ``task -> list of per-draw values``, the same draws in the same order.

    Returns
    -------
    dict
        ``base_mean``, ``mean``, ``delta`` (other - base) with ``delta_ci``,
        ``relative`` reduction ``(base - other) / base`` with ``relative_ci``,
        ``tasks``, ``draws``, ``worse_tasks`` (tasks whose mean delta is > 0) and
        ``worse_fraction``, ``worse_draws``.

    Example
    -------
    >>> s = summarize_paired({"a": [10.0, 20.0], "b": [10.0]}, {"a": [9.0, 18.0], "b": [11.0]})
    >>> s["delta"], s["worse_tasks"], s["tasks"], round(s["relative"], 3)
    (-0.666..., ['b'], 2, 0.05)
    """
    tasks = [t for t in base if base[t]]
    deltas = {t: [o - b for b, o in zip(base[t], other[t])] for t in tasks}
    delta, lo, hi = bootstrap_ci(deltas, seed=seed)
    gains = {t: [b - o for b, o in zip(base[t], other[t])] for t in tasks}
    rel, rlo, rhi = ratio_ci(gains, {t: base[t] for t in tasks}, seed=seed)
    worse = sorted(t for t in tasks if sum(deltas[t]) / len(deltas[t]) > 0)
    n = sum(len(v) for v in deltas.values())
    return {
        "base_mean": mean_std([x for t in tasks for x in base[t]])[0],
        "mean": mean_std([x for t in tasks for x in other[t]])[0],
        "delta": delta,
        "delta_ci": [lo, hi],
        "relative": rel,
        "relative_ci": [rlo, rhi],
        "tasks": len(tasks),
        "draws": n,
        "worse_tasks": worse,
        "worse_fraction": len(worse) / len(tasks) if tasks else None,
        "worse_draws": sum(1 for t in tasks for d in deltas[t] if d > 0),
    }
