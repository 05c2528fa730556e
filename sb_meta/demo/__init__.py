"""``sb-meta demo``: the main job end to end on the embedded synthetic corpus.

1. generate a multi-speaker corpus offline with espeak-ng (``sb-meta synth``);
2. meta-train the demo's CRDNN-CTC recipe (:mod:`sb_meta.demo.recipe`, installed
   with the package) over its training speakers;
3. adapt the exported model to each held-out test speaker from ``k`` support
   utterances and print a per-speaker WER table before/after adaptation,
   plus ``report.md``, ``wer_vs_k.png`` and ``per_task.png``.
"""

import pathlib
import time

__all__ = ["run_demo", "DEMO_DEFAULTS"]

DEMO_DEFAULTS = dict(
    speakers=30,
    utts_per_speaker=30,
    wordlist="digits",
    strategy="fomaml",
    inner_steps=1,
    meta_batch_tasks=2,
    lr=0.003,
    epochs=22,
    episodes_per_epoch=50,
    k=5,
    adapt_steps=3,
    seed=0,
)


def run_demo(out, progress=True, **overrides):
    """Run the demo into folder ``out``; returns the evaluation results.

    Arguments
    ---------
    out : str or pathlib.Path
        Working folder (corpus, experiment, report).
    progress : bool
        Show progress bars.
    **overrides
        Any key of :data:`DEMO_DEFAULTS`.
    """
    from sb_meta.data.manifest import format_summary_table
    from sb_meta.data.synth import generate_corpus
    from sb_meta.evaluation import evaluate_kshot, write_report
    from sb_meta.adapt import load_model
    from sb_meta.demo import recipe

    cfg = dict(DEMO_DEFAULTS, **overrides)
    out = pathlib.Path(out)
    t0 = time.time()

    corpus = out / "corpus"
    print(f"[1/3] Generating the synthetic corpus in {corpus} ...", flush=True)
    generate_corpus(
        corpus,
        speakers=cfg["speakers"],
        utts_per_speaker=cfg["utts_per_speaker"],
        wordlist=cfg["wordlist"],
        seed=cfg["seed"],
        progress=progress,
    )
    print(format_summary_table(corpus), flush=True)

    print(f"[2/3] Meta-training ({cfg['strategy']}, inner_steps={cfg['inner_steps']}) ...", flush=True)
    exp = out / "experiment"
    argv = [
        str(recipe.HPARAMS),
        f"--data_folder={corpus}",
        f"--output_folder={exp}",
        f"--meta_strategy={cfg['strategy']}",
        f"--inner_steps={cfg['inner_steps']}",
        f"--number_of_epochs={cfg['epochs']}",
        f"--episodes_per_epoch={cfg['episodes_per_epoch']}",
        f"--meta_batch_tasks={cfg['meta_batch_tasks']}",
        f"--lr={cfg['lr']}",
        f"--seed={cfg['seed']}",
    ]
    if not progress:
        argv.append("--noprogressbar")
    brain = recipe.main(argv)
    print(
        f"    speaker-independent test WER {brain.test_stats['WER']:.1f}% "
        f"(CER {brain.test_stats['CER']:.1f}%)",
        flush=True,
    )

    print(f"[3/3] Adapting to each held-out test speaker from k={cfg['k']} utterances ...", flush=True)
    model = load_model(exp / "pretrained")
    results = evaluate_kshot(
        model,
        corpus / "test.csv",
        task_column="spk_id",
        ks=(0, cfg["k"]),
        repeats=1,
        strategies=(cfg["strategy"],),
        steps=cfg["adapt_steps"],
        seed=cfg["seed"],
        progress=progress,
    )
    report_dir = out / "report"
    write_report(results, report_dir)
    print(per_task_table(results, cfg["strategy"], cfg["k"]))
    print(f"Report: {report_dir / 'report.md'}   Plot: {report_dir / 'wer_vs_k.png'}")
    print(f"Demo finished in {(time.time() - t0) / 60:.1f} min.")
    return results


def per_task_table(results, strategy, k):
    """Plain-text per-task WER table before (k=0) and after k-shot adaptation."""
    rows = results["per_task"]
    lines = [f"{'speaker':<10}{'WER before':>12}{'WER after':>12}{'change':>10}"]
    befores, afters = [], []
    for task in sorted(rows):
        entry = rows[task]
        before = entry.get(strategy, {}).get("0", {}).get("wer_mean")
        after = entry.get(strategy, {}).get(str(k), {}).get("wer_mean")
        if before is None or after is None:
            lines.append(f"{task:<10}{'skipped':>12}")
            continue
        befores.append(before)
        afters.append(after)
        lines.append(f"{task:<10}{before:>11.1f}%{after:>11.1f}%{after - before:>+9.1f}")
    if befores:
        b, a = sum(befores) / len(befores), sum(afters) / len(afters)
        lines.append(f"{'mean':<10}{b:>11.1f}%{a:>11.1f}%{a - b:>+9.1f}")
    entry = results.get("summary", {}).get(strategy, {}).get(str(k)) or {}
    ci = entry.get("delta_ci")
    if ci and ci[0] is not None:
        lines.append(
            f"paired change {entry['delta_wer_mean']:+.1f} WER points, 95% CI [{ci[0]:+.1f}, {ci[1]:+.1f}] "
            f"(bootstrap over speakers and draws); {len(entry['worse_tasks'])} of {entry['tasks']} "
            "speakers got worse"
        )
    return "\n".join(lines)
