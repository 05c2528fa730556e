"""k-shot adaptation benchmark: WER/CER as a function of the support size.

:func:`evaluate_kshot` adapts a model to every task of a manifest (a speaker
for ``spk_id``, a language for ``lang``...) from ``k`` of its utterances and
scores the adapted model on the task's other utterances; :func:`write_report`
writes ``results.json``, ``report.md`` and ``wer_vs_k.png``.

Draws and pairing
-----------------
For task ``t``, support size ``k > 0`` and repeat ``r`` the support set is
``k`` utterances drawn with a generator seeded by ``(seed, t, k, r)``; the
*query* set is every other utterance of ``t``. All strategies adapt on the
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
repeats) in ``summary``.
"""

import hashlib
import json
import logging
import math
import os
import pathlib
import random
import time

from sb_meta.utils import atomic_open

logger = logging.getLogger(__name__)

__all__ = [
    "evaluate_kshot",
    "write_report",
    "summary_table",
    "draw_support",
    "error_rates",
    "resolve_wav",
    "check_report_folder",
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


def resolve_wav(path, data_root):
    """A manifest's ``wav`` entry with SpeechBrain's ``$data_root`` replaced."""
    return str(path).replace("$data_root", str(data_root)) if data_root is not None else str(path)


def _stats(values):
    values = [float(v) for v in values]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


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
    model : sb_meta.inference.AdaptableASR or str
        The model, or a folder for :func:`sb_meta.inference.load_model`.
    manifest_csv : str or pathlib.Path
        SpeechBrain CSV manifest (``ID``, ``wav``, ``wrd`` and ``task_column``).
    task_column : str
        Column whose values are the tasks.
    ks : sequence of int
        Support sizes; 0 is the unadapted model.
    repeats : int
        Support draws per task and ``k``.
    strategies : sequence of str
        Registered gradient strategies to compare (same draws for all).
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
        task, k and repeat), ``per_task[task][strategy][str(k)]`` and
        ``summary[strategy][str(k)]`` (``wer_mean``, ``wer_std``,
        ``cer_mean``, ``cer_std``, ``n``, ``base_wer_mean``,
        ``delta_wer_mean``...), ``skipped`` and ``failed``.

    Example
    -------
    >>> results = evaluate_kshot("pretrained", "test.csv", ks=(0, 5))  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from sb_meta.data.manifest import read_manifest

    if isinstance(model, (str, os.PathLike)):
        from sb_meta.adapt import load_model

        model = load_model(model)
    ks = _parse_ks(ks)
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    strategies = [s.strip() for s in strategies if s and s.strip()]
    if not strategies and any(k > 0 for k in ks):
        raise ValueError("no strategy given")
    if len(set(strategies)) != len(strategies):
        raise ValueError(f"strategies are repeated: {strategies}")
    for name in strategies:
        model.check_strategy(name)  # unknown / unusable: fail before any work

    manifest_csv = pathlib.Path(manifest_csv)
    rows = read_manifest(manifest_csv, required=("ID", "duration", "wav", "wrd", task_column))
    if not rows:
        raise ValueError(f"manifest {manifest_csv} has no utterance")
    data_root = manifest_csv.parent if data_root is None else data_root
    by_id, groups = {}, {}
    for row in rows:
        uid = str(row["ID"])
        if uid in by_id:
            raise ValueError(f"manifest {manifest_csv} has a duplicate ID {uid!r}")
        by_id[uid] = dict(row, wav=resolve_wav(row["wav"], data_root))
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
            problems.append(f"{uid}: audio file {row['wav']} does not exist")
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
    total = sum(len(f) * repeats * (1 + len(strategies)) for f in plan.values())
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
                    for name in strategies:
                        t0 = time.time()
                        try:
                            adapted = model.adapt(
                                [wav_of(u) for u in support],
                                [by_id[u]["wrd"] for u in support],
                                strategy=name, steps=steps, lr=lr,
                                adapt_params=adapt_params, ids=support,
                            )
                        except Exception as exc:  # noqa: BLE001 - bad data is reported
                            from sb_meta.inference import AdaptationError

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


def _entry(draws, strategy, k):
    """Aggregated metrics of ``draws`` (all of one k) for ``strategy``."""
    if k == 0:
        wers = [d["unadapted"]["wer"] for d in draws]
        cers = [d["unadapted"]["cer"] for d in draws]
        bases, deltas = wers, [0.0] * len(wers)
    else:
        done = [d for d in draws if strategy in d["adapted"]]
        wers = [d["adapted"][strategy]["wer"] for d in done]
        cers = [d["adapted"][strategy]["cer"] for d in done]
        bases = [d["unadapted"]["wer"] for d in done]
        deltas = [d["adapted"][strategy]["delta_wer"] for d in done]
    if not wers:
        return None
    wer_mean, wer_std = _stats(wers)
    cer_mean, cer_std = _stats(cers)
    delta_mean, delta_std = _stats(deltas)
    return {
        "wer_mean": wer_mean, "wer_std": wer_std,
        "cer_mean": cer_mean, "cer_std": cer_std,
        "base_wer_mean": _stats(bases)[0],
        "delta_wer_mean": delta_mean, "delta_wer_std": delta_std,
        "n": len(wers),
        "tasks": len({d["task"] for d in draws if k == 0 or strategy in d["adapted"]}),
    }


def _aggregate(results, pos_ks):
    strategies = results["config"]["strategies"] or ["unadapted"]
    ks = results["config"]["ks"]
    per_task, summary = {}, {}
    for name in strategies:
        summary[name] = {}
        for k in ks:
            of_k = [d for d in results["draws"] if d["k"] == k]
            entry = _entry(of_k, name, k)
            if entry is not None:
                summary[name][str(k)] = entry
            for task in results["tasks"]:
                sub = [d for d in of_k if d["task"] == task]
                entry = _entry(sub, name, k)
                if entry is not None:
                    entry["wer"] = (
                        [d["unadapted"]["wer"] for d in sub] if k == 0
                        else [d["adapted"][name]["wer"] for d in sub if name in d["adapted"]]
                    )
                    per_task.setdefault(task, {}).setdefault(name, {})[str(k)] = entry
    results["per_task"] = per_task
    results["summary"] = summary


def _fmt(mean, std, digits=1):
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_table(results, markdown=False):
    """The summary (per strategy and k: WER, CER, paired change of WER) as text.

    Example
    -------
    >>> res = {"summary": {"finetune": {"0": dict(wer_mean=50.0, wer_std=5.0, cer_mean=20.0,
    ...        cer_std=2.0, delta_wer_mean=0.0, delta_wer_std=0.0, n=4, tasks=2)}}}
    >>> print(summary_table(res))
    strategy   k  WER (%)        CER (%)        dWER (paired)  tasks  draws
    finetune   0  50.0 ± 5.0     20.0 ± 2.0     +0.0 ± 0.0         2      4
    """
    header = ["strategy", "k", "WER (%)", "CER (%)", "dWER (paired)", "tasks", "draws"]
    rows = []
    for name, by_k in results["summary"].items():
        for k in sorted(by_k, key=int):
            e = by_k[k]
            delta = "-" if e["delta_wer_mean"] is None else (
                f"{e['delta_wer_mean']:+.1f} ± {e['delta_wer_std']:.1f}"
            )
            rows.append([
                name, k, _fmt(e["wer_mean"], e["wer_std"]), _fmt(e["cer_mean"], e["cer_std"]),
                delta, str(e["tasks"]), str(e["n"]),
            ])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [9, 2, 13, 13, 13, 5, 5]
    right = {1, 5, 6}

    def fmt_row(cells):
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            out.append(c.rjust(w) if i in right else c.ljust(w))
        return "  ".join(out).rstrip()

    return "\n".join([fmt_row(header)] + [fmt_row(r) for r in rows])


def _write_atomic(path, data, binary=False):
    with atomic_open(path, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
        f.write(data)


def _report_markdown(results):
    cfg = results["config"]
    lines = [
        "# k-shot adaptation report",
        "",
        f"- model: `{cfg['model']}` (meta-trained with `{cfg['trained_strategy']}`)",
        f"- data: `{cfg['manifest']}`, tasks by `{cfg['task_column']}`: "
        f"{len(results['tasks'])} tasks, {sum(results['tasks'].values())} utterances",
        f"- k: {', '.join(map(str, cfg['ks']))}; repeats: {cfg['repeats']}; "
        f"strategies: {', '.join(cfg['strategies']) or '-'}; steps: {cfg['steps']}; "
        f"lr: {cfg['lr'] if cfg['lr'] is not None else 'model default'}; seed: {cfg['seed']}",
        "",
        "WER/CER in %, mean ± std over draws (tasks x repeats). dWER: adapted minus "
        "unadapted WER on the same query utterances (negative is better). k = 0 is "
        "the unadapted model on the query set of the matched draw (largest k).",
        "",
        "## Summary",
        "",
        summary_table(results, markdown=True),
        "",
        "## Per task",
        "",
        "| task | utterances | strategy | k | WER (%) | CER (%) | dWER | repeats |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, by_strategy in sorted(results["per_task"].items()):
        for name, by_k in by_strategy.items():
            for k in sorted(by_k, key=int):
                e = by_k[k]
                lines.append(
                    f"| {task} | {results['tasks'][task]} | {name} | {k} | "
                    f"{_fmt(e['wer_mean'], e['wer_std'])} | {_fmt(e['cer_mean'], e['cer_std'])} | "
                    f"{e['delta_wer_mean']:+.1f} | {e['n']} |"
                )
    lines += ["", "## Skipped", ""]
    if results["skipped"]:
        lines += [f"- {s['reason']}" for s in results["skipped"]]
    else:
        lines.append("None.")
    lines += ["", "## Failed adaptations", ""]
    if results["failed"]:
        lines += [
            f"- {f['task']} k={f['k']} repeat {f['repeat']} ({f['strategy']}): {f['reason']}"
            for f in results["failed"]
        ]
    else:
        lines.append("None.")
    lines += ["", "![WER vs k](wer_vs_k.png)", ""]
    return "\n".join(lines)


def _plot(results, path):
    """Two panels: WER vs k, and the paired change of WER vs k.

    The query utterances differ between k (they are what is left after the
    support draw), so the right panel, adapted minus unadapted WER on the
    same query utterances, is the one to compare k by.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    ax, ax_d = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = list(results["summary"])
    all_ks = sorted({int(k) for by_k in results["summary"].values() for k in by_k})
    span = (all_ks[-1] - all_ks[0]) if len(all_ks) > 1 else 1
    for i, name in enumerate(names):
        by_k = results["summary"][name]
        ks = sorted(by_k, key=int)
        if not ks:
            continue
        dodge = (i - (len(names) - 1) / 2) * 0.012 * span  # keep error bars apart
        ax.errorbar(
            [int(k) + dodge for k in ks],
            [by_k[k]["wer_mean"] for k in ks],
            yerr=[by_k[k]["wer_std"] for k in ks],
            marker="o", capsize=3, label=name,
        )
        paired = [k for k in ks if by_k[k].get("delta_wer_mean") is not None]
        if paired:
            ax_d.errorbar(
                [int(k) + dodge for k in paired],
                [by_k[k]["delta_wer_mean"] for k in paired],
                yerr=[by_k[k]["delta_wer_std"] or 0.0 for k in paired],
                marker="o", capsize=3, label=name,
            )
    for a in (ax, ax_d):
        if all_ks:
            a.set_xticks(all_ks)
        a.set_xlabel("k (support utterances)")
        a.grid(True, alpha=0.3)
        if results["summary"]:
            a.legend()
    ax.set_ylabel("WER (%)")
    ax.set_title("WER on the query utterances (mean ± std)")
    ax_d.axhline(0.0, color="grey", linewidth=0.8)
    ax_d.set_ylabel("adapted − unadapted WER (points)")
    ax_d.set_title("Paired change on the same utterances")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    _write_atomic(path, buf.getvalue(), binary=True)


def check_report_folder(out_dir):
    """Raise before any work when ``out_dir`` cannot hold a report.

    It must be a folder, or not exist yet with a writable parent.

    Example
    -------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "file"
    >>> _ = f.write_text("x")
    >>> check_report_folder(f)
    Traceback (most recent call last):
    ...
    FileExistsError: report folder .../file exists and is a file; give a folder for --out
    """
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"report folder {out_dir} exists and is a file; give a folder for --out")
    parent = out_dir if out_dir.exists() else next(p for p in out_dir.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write the report folder {out_dir}: {parent} is not writable")


def write_report(results, out_dir):
    """Write ``results.json``, ``report.md`` and ``wer_vs_k.png`` into ``out_dir``.

    Returns
    -------
    dict
        ``{"json": path, "markdown": path, "plot": path}``.
    """
    check_report_folder(out_dir)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "markdown": out_dir / "report.md",
        "plot": out_dir / "wer_vs_k.png",
    }
    _write_atomic(paths["json"], json.dumps(results, indent=2) + "\n")
    _write_atomic(paths["markdown"], _report_markdown(results))
    _plot(results, paths["plot"])
    return paths
