"""Reports of the k-shot protocol: tables, ``report.md``, ``results.json`` and plots."""

import io
import json
import os
import pathlib

from sb_meta.utils import atomic_open

__all__ = ["summary_table", "task_changes", "plot_task_changes", "write_report", "check_report_folder"]


def _fmt(mean, std, digits=1):
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _ci(values, digits=1, sign=True):
    if not values or values[0] is None:
        return "-"
    f = "+" if sign else ""
    return f"[{values[0]:{f}.{digits}f}, {values[1]:{f}.{digits}f}]"


def summary_table(results, markdown=False):
    """The summary (per method and k: WER, CER, paired change of WER with its 95%
    interval, relative reduction, tasks made worse) as text.

    Example
    -------
    >>> res = {"summary": {"finetune": {"5": dict(wer_mean=40.0, wer_std=5.0, cer_mean=20.0,
    ...        cer_std=2.0, delta_wer_mean=-4.0, delta_wer_std=1.0, delta_ci=[-5.0, -3.0],
    ...        relative=0.1, worse_tasks=["b"], n=4, tasks=2)}}}
    >>> print(summary_table(res))
    method     k  WER (%)        CER (%)        dWER (paired)  95% CI           rel.    worse  tasks  draws
    finetune   5  40.0 ± 5.0     20.0 ± 2.0     -4.0 ± 1.0     [-5.0, -3.0]     10.0%     1/2      2      4
    """
    header = ["method", "k", "WER (%)", "CER (%)", "dWER (paired)", "95% CI", "rel.", "worse",
              "tasks", "draws"]
    rows = []
    for name, by_k in results["summary"].items():
        for k in sorted(by_k, key=int):
            e = by_k[k]
            adapted = int(k) > 0
            delta = "-" if not adapted or e["delta_wer_mean"] is None else (
                f"{e['delta_wer_mean']:+.1f} ± {e['delta_wer_std']:.1f}"
            )
            rel = "-" if not adapted or e.get("relative") is None else f"{100 * e['relative']:.1f}%"
            worse = "-" if not adapted or e.get("worse_tasks") is None else f"{len(e['worse_tasks'])}/{e['tasks']}"
            rows.append([
                name, k, _fmt(e["wer_mean"], e["wer_std"]), _fmt(e["cer_mean"], e["cer_std"]),
                delta, _ci(e.get("delta_ci")) if adapted else "-", rel, worse, str(e["tasks"]), str(e["n"]),
            ])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [9, 2, 13, 13, 13, 15, 6, 6, 5, 5]
    right = {1, 6, 7, 8, 9}

    def fmt_row(cells):
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            out.append(c.rjust(w) if i in right else c.ljust(w))
        return "  ".join(out).rstrip()

    return "\n".join([fmt_row(header)] + [fmt_row(r) for r in rows])


def _write_atomic(path, data, binary=False):
    with atomic_open(path, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
        f.write(data)


def _save_png(fig, path):
    """``fig`` laid out and written to ``path`` as a PNG, atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    _write_atomic(path, buf.getvalue(), binary=True)


def _report_markdown(results):
    cfg = results["config"]
    lines = [
        "# k-shot adaptation report",
        "",
        f"- model: `{cfg['model']}` (meta-trained with `{cfg['trained_strategy']}`)",
        f"- data: `{cfg['manifest']}`, tasks by `{cfg['task_column']}`: "
        f"{len(results['tasks'])} tasks, {sum(results['tasks'].values())} utterances",
        f"- k: {', '.join(map(str, cfg['ks']))}; repeats: {cfg['repeats']}; "
        f"methods: {', '.join(cfg['strategies']) or '-'}; steps: {cfg['steps']}; "
        f"lr: {cfg['lr'] if cfg['lr'] is not None else 'model default'}; seed: {cfg['seed']}",
    ]
    for m in cfg.get("methods") or []:
        lines.append(f"  - `{m['name']}`: " + ", ".join(
            f"{k}={v}" for k, v in m.items() if k != "name" and v not in (None, [], {})))
    if cfg.get("selection"):
        lines.append(f"- chosen on the dev tasks: `{json.dumps(cfg['selection'])}`")
    lines += [
        "",
        "WER/CER in %, mean ± std over draws (tasks x repeats). dWER: adapted minus "
        "unadapted WER on the same query utterances (negative is better), with its 95% "
        "two-level bootstrap interval over tasks and draws; rel.: relative WER reduction; "
        "worse: tasks whose mean dWER is positive. k = 0 is the unadapted model on the "
        "query set of the matched draw (largest k).",
        "",
        "## Summary",
        "",
        summary_table(results, markdown=True),
        "",
        "## Per task",
        "",
        "| task | utterances | method | k | WER (%) | CER (%) | dWER | repeats |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, by_strategy in sorted(results["per_task"].items()):  # noqa: B007
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
    lines += ["", "![WER vs k](wer_vs_k.png)", "", "![per task](per_task.png)", ""]
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
        paired = [k for k in ks if int(k) > 0 and by_k[k].get("delta_ci") and by_k[k]["delta_ci"][0] is not None]
        if paired:
            means = [by_k[k]["delta_wer_mean"] for k in paired]
            ax_d.errorbar(
                [int(k) + dodge for k in paired], means,
                yerr=[[m - by_k[k]["delta_ci"][0] for m, k in zip(means, paired)],
                      [by_k[k]["delta_ci"][1] - m for m, k in zip(means, paired)]],
                marker="o", capsize=3, label=name,
            )
    for a in (ax, ax_d):
        if all_ks:
            a.set_xticks(all_ks)
        a.set_xlabel("k (support utterances)")
        a.grid(True, alpha=0.3)
        if a.get_legend_handles_labels()[0]:  # k = 0 alone plots no adapted curve
            a.legend()
    ax.set_ylabel("WER (%)")
    ax.set_title("WER on the query utterances (mean ± std)")
    ax_d.axhline(0.0, color="grey", linewidth=0.8)
    ax_d.set_ylabel("adapted − unadapted WER (points)")
    ax_d.set_title("Paired change on the same utterances (95% CI)")
    _save_png(fig, path)


def task_changes(results, k=None):
    """Per method, each task's unadapted WER and its paired change at one k.

    Parameters
    ----------
    results : dict
        What :func:`sb_meta.evaluation.evaluate_kshot` returns.
    k : int, optional
        The number of support utterances; by default 5 when it was evaluated, else the
        largest k > 0.

    Returns
    -------
    (int or None, dict)
        ``k`` and ``{method: [(task, unadapted WER, adapted minus unadapted WER), ...]}``,
        both WERs the means over the task's draws at ``k`` (tasks sorted by name;
        ``(None, {})`` when no k > 0 was evaluated).

    Example
    -------
    >>> entry = lambda base, delta: {"base_wer_mean": base, "delta_wer_mean": delta}
    >>> results = {"per_task": {"s2": {"ft": {"0": entry(9.0, 0.0), "5": entry(9.0, 2.0)}},
    ...                         "s1": {"ft": {"5": entry(20.0, -4.0)}}}}
    >>> task_changes(results)
    (5, {'ft': [('s1', 20.0, -4.0), ('s2', 9.0, 2.0)]})
    """
    ks = sorted({int(kk) for by_m in results["per_task"].values() for by_k in by_m.values()
                 for kk in by_k if int(kk) > 0})
    if not ks:
        return None, {}
    if k is None:
        k = 5 if 5 in ks else ks[-1]
    out = {}
    for task, by_method in sorted(results["per_task"].items()):
        for name, by_k in by_method.items():
            e = by_k.get(str(k))
            if e is not None:
                out.setdefault(name, []).append((task, e["base_wer_mean"], e["delta_wer_mean"]))
    return k, out


def plot_task_changes(results, path):
    """One point per task and method: its unadapted WER (x) and the paired change
    adaptation made (y) at :func:`task_changes`'s k, written as a PNG to ``path``.
    Points above the zero line are tasks adaptation made worse; tasks are named when
    one method is drawn and there are few enough tasks to read. ``results`` needs only
    ``per_task`` (several models' results can be drawn together by putting each
    model's entries under its own name there)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k, changes = task_changes(results)
    fig = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, rows in changes.items():
        worse = sum(1 for _, _, d in rows if d > 0)
        ax.scatter([b for _, b, _ in rows], [d for _, _, d in rows], alpha=0.7,
                   label=f"{name} ({worse}/{len(rows)} worse)")
        if len(changes) == 1 and len(rows) <= 40:
            for task, b, d in rows:
                ax.annotate(task, (b, d), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("unadapted WER of the task (%)")
    ax.set_ylabel("adapted − unadapted WER (points)")
    ax.set_title(f"Per task, k = {k}: below the line adaptation helped" if k else "No adapted draws")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    _save_png(fig, path)


def check_report_folder(out_dir):
    """Raise before any work when ``out_dir`` cannot hold a report.

    It must be a folder, or not exist yet with a writable parent; report files
    already there are replaced only when they are an earlier report's (its
    ``results.json`` is an evaluation's).

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
    present = [out_dir / n for n in REPORT_FILES if (out_dir / n).exists()]
    if present and not _is_report(out_dir / "results.json"):
        raise FileExistsError(
            f"{present[0]} exists and is not part of an earlier sb-meta report; nothing was written: "
            "give --out a new or empty folder (or an earlier report's)"
        )


#: the files :func:`write_report` writes
REPORT_FILES = ("results.json", "report.md", "wer_vs_k.png", "per_task.png")


def _is_report(path):
    try:
        data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"config", "summary"} <= set(data)


def write_report(results, out_dir):
    """Write ``results.json``, ``report.md``, ``wer_vs_k.png`` and ``per_task.png``
    (each task's change against its unadapted WER) into ``out_dir``.

    Returns
    -------
    dict
        ``{"json": path, "markdown": path, "plot": path, "tasks_plot": path}``.
    """
    check_report_folder(out_dir)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "markdown": out_dir / "report.md",
        "plot": out_dir / "wer_vs_k.png",
        "tasks_plot": out_dir / "per_task.png",
    }
    _write_atomic(paths["json"], json.dumps(results, indent=2) + "\n")
    _write_atomic(paths["markdown"], _report_markdown(results))
    _plot(results, paths["plot"])
    plot_task_changes(results, paths["tasks_plot"])
    return paths
