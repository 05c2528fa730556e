"""The k-shot adaptation protocol, its statistics and its reports.

* :mod:`sb_meta.evaluation.protocol`: :func:`evaluate_kshot` (per task, k
  support utterances and the rest as query, repeated draws, every method on the
  same draws), :func:`compare_models` (two models on the same draws), :func:`oracle_gate`
  (the ceiling of any keep-or-drop rule on top of an adaptation),
  :func:`select_on_dev` (steps, step size, adapted parameters chosen on dev tasks);
* :mod:`sb_meta.evaluation.draws`: support draws, paths, error rates;
* :mod:`sb_meta.evaluation.aggregate`: summaries, merged shards, paired comparisons;
* the adaptation methods compared are :class:`sb_meta.adapt.Method` s (also here);
* :mod:`sb_meta.evaluation.statistics`: paired differences with two-level
  bootstrap intervals over tasks and draws;
* :mod:`sb_meta.evaluation.report`: ``report.md``, ``results.json``, ``wer_vs_k.png``,
  ``per_task.png`` (:func:`task_changes`: who adaptation helped).
"""

from sb_meta.adapt.method import Method, Support, methods_from
from sb_meta.evaluation.aggregate import UNADAPTED, compare_models, merge_results, oracle_gate
from sb_meta.evaluation.draws import draw_support, error_rates, resolve_wav, seeded
from sb_meta.evaluation.protocol import evaluate_kshot, select_on_dev
from sb_meta.evaluation.report import check_report_folder, summary_table, task_changes, write_report
from sb_meta.evaluation.statistics import bootstrap_ci, mean_std, summarize_paired

__all__ = [
    "UNADAPTED", "evaluate_kshot", "merge_results", "compare_models", "oracle_gate", "select_on_dev", "draw_support", "error_rates",
    "resolve_wav", "Method", "Support", "methods_from", "write_report", "summary_table", "task_changes",
    "check_report_folder", "bootstrap_ci", "mean_std", "summarize_paired", "seeded",
]
