#!/usr/bin/env python
"""AN4 speaker adaptation: meta-learned vs joint initialisations at equal compute.

    python benchmarks/an4_adaptation.py               # 35 min warm start + 8 min per model
    python benchmarks/an4_adaptation.py --pretrain-minutes 0 --budget-minutes 60  # from scratch
    python benchmarks/an4_adaptation.py --strategies maml,fomaml,joint \\
        --out results/an4_adaptation --json results/an4_adaptation/results.json --reuse
    python benchmarks/an4_adaptation.py --quick        # minutes: fills the structure only

What it does
------------
1. **Meta-training at equal compute.** Every strategy (``maml``, ``fomaml``,
   ``reptile``, ``metasgd`` and the ``joint`` baseline by default) is trained
   by the AN4 recipe itself (``recipes/AN4/train.py``'s ``prepare`` and
   ``main``: same YAML, same manifests, same initial
   weights since the YAML seeds torch, same episodes) in its own experiment
   folder ``<out>/<strategy>/`` (SpeechBrain's ``log.txt``, ``train_log.txt``,
   checkpoints, ``wer_test.txt`` and the exported model ``pretrained/``).
   The YAML is used as is, through command-line overrides only
   (:data:`COMMON_OVERRIDES`, :data:`STRATEGY_OVERRIDES`, recorded in the JSON).

   *Shared warm start* (``--pretrain-minutes P``, default 35): one ``joint``
   model is trained for P minutes first (``<out>/_pretrain/``) and every
   strategy starts from its export (the recipe's ``init_from``), so every
   model has had P + budget minutes of training, with the first P shared.
   Models trained from the warm start use Adam at :data:`WARM_START_LR`.
   This is how meta-learning is used in practice (from a pretrained model),
   and it fits five models into an afternoon on 2 CPU cores;
   ``--pretrain-minutes 0 --budget-minutes 60`` trains each from scratch.

   *The budget* is wall-clock time in SpeechBrain's training stage (episode
   loading and outer steps): the recipe's own ``train_budget_minutes`` key
   (``number_of_epochs`` is set very large; :class:`sb_meta.MetaBrain` sets
   SpeechBrain's own ``optimizer_step_limit`` to the current step once the
   budget is used up, checked after every outer step), so the epoch stops, is
   validated on ``dev`` and training ends. Per-epoch validation on the dev
   speakers (``episodes_per_epoch`` episodes per epoch), checkpointing, the
   recipe's test pass and the export are outside the budget and recorded
   separately (``total_seconds``). The last outer step may overrun the budget
   (``overrun_s``). The machine may be shared: CPU seconds and the load
   average are recorded beside the wall-clock seconds.

2. **Speaker-independent test WER**: the recipe's own test pass (the
   best-dev-WER checkpoint, unadapted) on all 130 utterances of the 10 AN4
   test speakers.

3. **Adaptation step size, chosen on dev only.** Test-time adaptation is
   ``steps`` (3) plain gradient steps (``finetune``) on the support set with
   one step size for every model, chosen from ``lr_grid`` by 5-shot
   adaptation of each model on the *dev speakers* (``dev.csv``: whole
   training speakers held out by the recipe), minimising the mean adapted
   query WER over the models that adapt with it. The test speakers are never
   used for any choice. A model meta-trained with ``metasgd`` adapts with its
   learned step sizes instead (same number of steps); it is also reported
   with ``finetune`` at the chosen step size (``secondary``).

4. **5-shot adaptation on the 10 test speakers** (:func:`sb_meta.evaluation.
   evaluate_kshot`): per speaker and repeat, 5 support utterances drawn with a
   fixed seed (the same draws for every model), the remaining 8 utterances as
   query; unadapted and adapted query WER (means over speakers x repeats),
   the relative reduction, and the paired difference with the joint
   initialisation on the same draws.

5. **Targets**: speaker-independent test WER <= 12 %; adaptation lowers the
   query WER by >= 10 % relative; meta-trained initialisation + adaptation
   beats the joint initialisation + the same adaptation.

6. **Adaptation latency** (top-level ``adaptation_latency_s``): adapting one
   test speaker from 5 utterances (audio files read from disk) x 3 steps with
   ``load_model(<export>).adapt(...)``, one model loaded once, one untimed
   warm-up; median over the 10 speakers; target <= 2 s.

``<out>`` (default ``results/an4_adaptation/`` in the repository) belongs to
the benchmark: a model folder there is deleted and trained again unless
``--reuse`` is given and its export and training record match the requested
budget and hyperparameters. Per-model k-shot reports (``results.json``,
``report.md``, ``wer_vs_k.png`` of :func:`sb_meta.evaluation.write_report`)
go to ``<out>/<strategy>/kshot_test/`` and ``<out>/<strategy>/kshot_dev_lr*/``.

``run(quick)`` is what ``benchmarks/run.py`` calls: quick = 0.5 min per model
from scratch, ``fomaml`` and ``joint``, 1 repeat, 2 dev and 3 test speakers;
full = ``$SBMETA_AN4_PRETRAIN_MIN`` (default 35) minutes of shared warm start
and ``$SBMETA_AN4_BUDGET_MIN`` minutes (default 8) per model, all strategies. ``$SBMETA_AN4_REUSE=1`` lets it reuse
matching trained models (e.g. from a CLI run into the same folder).
The corpus is read from ``$SBMETA_AN4_ROOT`` (``--an4-root``).
"""

import argparse
import datetime
import importlib.util
import json
import logging
import math
import os
import pathlib
import shlex
import shutil
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import common  # noqa: E402

logger = logging.getLogger("sbmeta.bench.an4_adaptation")

RECIPE = REPO / "recipes" / "AN4" / "train.py"
YAML = REPO / "recipes" / "AN4" / "hparams" / "crdnn_ctc_meta.yaml"
DEFAULT_OUT = REPO / "results" / "an4_adaptation"
QUICK_OUT = REPO / "results" / "an4_adaptation_quick"
RECORD_FILE = "an4_adaptation_training.json"
SCRIPT = "benchmarks/an4_adaptation.py"

ALL_STRATEGIES = ("maml", "fomaml", "reptile", "metasgd", "joint")
BASELINE = "joint"
#: The shared warm start (``--pretrain-minutes``): trained once with this
#: strategy in ``<out>/_pretrain/``, then every model starts from its export.
PRETRAIN_STRATEGY = "joint"
PRETRAIN_NAME = "_pretrain"
#: Adam step size of every model trained from the warm start (the YAML's 0.002
#: is for training from scratch): with a fresh Adam state, 0.002 undid the warm
#: start within 34 outer steps of maml (test WER 28% -> 100%) and raised the
#: fomaml query loss too; 0.0005 kept it (12 outer steps from the warm start:
#: query loss 0.33 -> 0.68 at 0.002, 0.33 -> 0.48 at 0.0005).
WARM_START_LR = 0.0005

#: YAML overrides shared by every model (the rest of the YAML is used as is:
#: Adam lr 0.002, inner_lr 0.05, CRDNN, 15 epochs replaced by the budget).
COMMON_OVERRIDES = {
    "meta_batch_tasks": 4,
    "k_support": 4,
    "k_query": 4,
    "episodes_per_epoch": 50,  # validation on dev (and a checkpoint) every 50 outer steps
    "number_of_epochs": 100000,  # never reached: the time budget stops training
}
#: Per-strategy overrides. One inner step for the MAML family (second order
#: for maml / metasgd stays affordable); Reptile takes two, one on the support
#: and one on the query batch (it cycles over them), so that it learns from
#: the same utterances of each episode as the others. Joint training pools the
#: support and query utterances of each episode into one batch.
STRATEGY_OVERRIDES = {
    "maml": {"inner_steps": 1},
    "fomaml": {"inner_steps": 1},
    "metasgd": {"inner_steps": 1},
    "reptile": {"inner_steps": 2},
    "joint": {},
}

#: The defaults of `make bench` (and of the CLI without --quick): a shared
#: 35-minute joint warm start, then 8 minutes of each strategy, i.e. 43
#: minutes of training per model (the issue allows up to an hour per model).
#: SBMETA_AN4_PRETRAIN_MIN=0 SBMETA_AN4_BUDGET_MIN=60 trains each from scratch.
DEFAULT_BUDGET_MIN = "8"
DEFAULT_PRETRAIN_MIN = "35"



def full_minutes():
    """(budget, pretrain) minutes of a full run: the environment, else the defaults."""
    return (float(os.environ.get("SBMETA_AN4_BUDGET_MIN", DEFAULT_BUDGET_MIN)),
            float(os.environ.get("SBMETA_AN4_PRETRAIN_MIN", DEFAULT_PRETRAIN_MIN)))


TARGET_SI_WER = 12.0  # %
TARGET_REL_REDUCTION = 10.0  # % relative
TARGET_LATENCY_S = 2.0

FULL = {
    "repeats": 5,
    "dev_repeats": 2,
    "lr_grid": (0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
}
QUICK = {
    "budget_minutes": 0.5,
    "strategies": ("fomaml", "joint"),
    "repeats": 1,
    "dev_repeats": 1,
    "lr_grid": (0.02, 0.05),
    # only fills the structure: a few speakers keep it to minutes
    "speakers": {"dev_speakers": 2, "test_speakers": 3, "latency_speakers": 3},
}


class CorpusMissing(common.SkipSection):
    """The AN4 corpus is not configured or not where it is said to be."""


# --------------------------------------------------------------------- helpers
def an4_root(root=None):
    """The AN4 root from ``root`` or ``$SBMETA_AN4_ROOT``, checked."""
    root = root or os.environ.get("SBMETA_AN4_ROOT")
    if not root:
        raise CorpusMissing(
            "SBMETA_AN4_ROOT is not set: point it at the CMU AN4 corpus (the folder holding "
            "etc/an4_train.transcription and wav/), or pass --an4-root"
        )
    path = pathlib.Path(root)
    needed = ["etc/an4_train.transcription", "etc/an4_test.transcription", "wav"]
    missing = [p for p in needed if not (path / p).exists()]
    if missing:
        raise CorpusMissing(f"AN4 corpus not found in {path}: missing {', '.join(missing)}")
    return path.resolve()


def _say(msg):
    """Progress on stdout (also shown under run.py, which silences INFO logs)."""
    print(f"[an4 {time.strftime('%H:%M:%S')}] {msg}", flush=True)
    logger.debug(msg)


def _load_recipe():
    spec = importlib.util.spec_from_file_location("sbmeta_an4_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finite_or_none(x):
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _rel_reduction(before, after):
    if before is None or after is None or before <= 0:
        return None
    return 100.0 * (before - after) / before


def _loadavg():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_json(path, data):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def _fmt_lr(lr):
    return f"{lr:g}"


# --------------------------------------------------------------------- budget
# --------------------------------------------------------------------- training
def model_overrides(strategy):
    out = dict(COMMON_OVERRIDES)
    out.update(STRATEGY_OVERRIDES.get(strategy, {}))
    out["meta_strategy"] = strategy
    return out


def _record_key(strategy, budget_minutes, data_root, device, init=None):
    key = {
        "strategy": strategy,
        "budget_minutes": float(budget_minutes),
        "overrides": model_overrides(strategy),
        "yaml": str(YAML.relative_to(REPO)),
        "data_root": str(data_root),
        "device": device,
    }
    if init is not None:
        key["init_from"] = init
    return key


def _reusable(folder, key):
    """(True, record) when ``folder`` holds a complete export trained with ``key``;
    else (False, why)."""
    export = folder / "pretrained"
    if not (export / "hyperparams.yaml").is_file() or not (export / "sbmeta.json").is_file():
        return False, f"no complete export in {export}"
    path = folder / RECORD_FILE
    if not path.is_file():
        return False, f"no training record {path} (not trained by this benchmark)"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return False, f"unreadable training record {path}: {exc}"
    if record.get("key") != key:
        diff = sorted(k for k in set(key) | set(record.get("key") or {})
                      if (record.get("key") or {}).get(k) != key.get(k))
        return False, f"trained with other settings ({', '.join(diff)} differ)"
    return True, record


def train_model(strategy, budget_minutes, out, data_root, recipe, device=None, reuse=False,
                init=None, name=None):
    """Train ``strategy`` for ``budget_minutes`` with the AN4 recipe (or reuse it).

    ``init`` (the training record of the shared warm start) makes the model
    start from that record's export (the recipe's ``init_from`` key); ``name``
    is the folder under ``out`` (default: the strategy). Returns the training
    record (also written to ``<out>/<name>/``).
    """
    name = name or strategy
    folder = pathlib.Path(out) / name
    init_key = None
    if init is not None:
        init_key = {"export_folder": init["export_folder"], "trained_at": init["finished_at"],
                    "budget_minutes": init["key"]["budget_minutes"], "lr": WARM_START_LR}
    key = _record_key(strategy, budget_minutes, data_root, device, init_key)
    if reuse:
        ok, got = _reusable(folder, key)
        if ok:
            _say(f"{name}: reusing the model trained in {folder}")
            return dict(got, reused=True)
        _say(f"{name}: not reusing {folder}: {got}; training again")
    if folder.exists():
        shutil.rmtree(folder)  # stale checkpoints would be resumed, outside the budget
    overrides = model_overrides(strategy)
    if init is not None:
        overrides["init_from"] = init["export_folder"]
        overrides["lr"] = WARM_START_LR
    argv = [
        str(YAML),
        f"--data_folder={data_root}",
        f"--output_folder={folder}",
        f"--prepare_folder={pathlib.Path(out) / 'manifests'}",
        "--noprogressbar",
    ] + [f"--{k}={v}" for k, v in overrides.items()]
    if device:
        argv.append(f"--device={device}")
    budget_s = 60.0 * float(budget_minutes)
    argv.append(f"--train_budget_minutes={float(budget_minutes)}")
    _say(f"{name}: training {strategy} for {budget_minutes:g} min in {folder}"
         + (f", starting from {init['export_folder']}" if init is not None else "") + " ...")
    load0 = _loadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    brain = recipe.main(argv)
    total = time.perf_counter() - t0
    b = {
        "train_s": brain.train_clock.seconds,
        "train_cpu_s": time.process_time() - c0,  # the whole run: training, validation, test, export
        "epochs": int(brain.hparams.epoch_counter.current),
        "stopped_by_budget": brain.optimizer_step_limit is not None,
    }
    steps = int(brain.optimizer_step)
    record = {
        "key": key,
        "status": "ok",
        "finished_at": _now(),
        "command": "python recipes/AN4/train.py " + " ".join(shlex.quote(a) for a in argv),
        "experiment_folder": str(folder),
        "export_folder": str(folder / "pretrained"),
        "budget_s": budget_s,
        "train_seconds": round(b["train_s"], 2),
        "overrun_s": round(b["train_s"] - budget_s, 2),
        "train_cpu_seconds": round(b["train_cpu_s"], 2),
        "outer_steps": steps,
        "seconds_per_outer_step": round(b["train_s"] / steps, 3) if steps else None,
        "epochs": b["epochs"],
        "stopped_by_budget": b["stopped_by_budget"],
        "total_seconds": round(total, 2),
        "loadavg_before": load0,
        "loadavg_after": _loadavg(),
        "si_test": {
            "wer": _finite_or_none(brain.test_stats["WER"]),
            "cer": _finite_or_none(brain.test_stats["CER"]),
            "utterances": len(brain.wer_metric.scores),
            "checkpoint": "best dev WER (the recipe's evaluate(min_key='WER'))",
        },
    }
    _write_json(folder / RECORD_FILE, record)
    _say(
        f"{name}: {steps} outer steps in {b['train_s']:.0f} s of training "
        f"({b['epochs']} epochs), test WER "
        + ("-" if record["si_test"]["wer"] is None else f"{record['si_test']['wer']:.2f}%")
    )
    return dict(record, reused=False)


# --------------------------------------------------------------------- evaluation
def adaptation_strategy_of(model):
    """The adaptation a model gets at test time: its learned Meta-SGD step
    sizes when it has them, else plain gradient steps."""
    return "metasgd" if model.has_step_sizes else "finetune"


def _kshot(model, csv, strategy, lr, k, repeats, steps, seed, progress, tasks=None):
    from sb_meta.evaluation import evaluate_kshot

    return evaluate_kshot(
        model, csv, task_column="spk_id", ks=(k,), repeats=repeats, strategies=[strategy],
        steps=steps, lr=lr, seed=seed, progress=progress, tasks=tasks,
    )


def _speakers(csv, limit=None):
    """The speakers of a manifest, sorted; the first ``limit`` of them (None: all)."""
    from sb_meta.data.manifest import read_manifest

    if not pathlib.Path(csv).is_file():
        return []
    names = sorted({r["spk_id"] for r in read_manifest(csv)})
    return names if limit is None else names[: int(limit)]


def _summary(res, strategy, k):
    entry = (res["summary"].get(strategy) or {}).get(str(k))
    draws = [d for d in res["draws"] if d["k"] == k]
    by_task = {}
    for d in draws:
        by_task.setdefault(d["task"], set()).add(len(d["query"]))
    out = {
        "query_wer_unadapted": None,
        "query_wer_adapted": None,
        "query_wer_adapted_std": None,
        "relative_reduction_pct": None,
        "draws": 0,
        "failed_adaptations": len(res["failed"]),
        "skipped": len(res["skipped"]),
        "speakers": len(res["tasks"]),
        "query_utterances_per_speaker": [
            max(by_task[t]) if t in by_task else 0 for t in sorted(res["tasks"])
        ],
        "support_utterances": k,
        "median_adapt_seconds": None,
    }
    if entry is not None:
        out.update(
            query_wer_unadapted=entry["base_wer_mean"],
            query_wer_adapted=entry["wer_mean"],
            query_wer_adapted_std=entry["wer_std"],
            relative_reduction_pct=_rel_reduction(entry["base_wer_mean"], entry["wer_mean"]),
            draws=entry["n"],
        )
        secs = [d["adapted"][strategy]["adapt_seconds"] for d in draws if strategy in d["adapted"]]
        out["median_adapt_seconds"] = statistics.median(secs) if secs else None
    return out


def _draw_wers(res, strategy, k):
    """{(task, repeat): adapted WER}."""
    return {
        (d["task"], d["repeat"]): d["adapted"][strategy]["wer"]
        for d in res["draws"] if d["k"] == k and strategy in d["adapted"]
    }


def choose_lr(models, dev_csv, lr_grid, k, repeats, steps, seed, out, progress, speakers=None):
    """The test-time step size for ``finetune``: 5-shot on the dev speakers,
    minimising the mean adapted query WER over ``models`` ({name: model}).

    A step size for which any adaptation diverged is ruled out (unless all
    are). Ties go to the smaller step size.
    """
    from sb_meta.evaluation import write_report

    table = {}
    for lr in lr_grid:
        row = {"per_model": {}, "failed_adaptations": 0}
        for name, model in models.items():
            res = _kshot(model, dev_csv, "finetune", lr, k, repeats, steps, seed, progress,
                         tasks=speakers)
            # one report per model and step size, for inspection
            write_report(res, pathlib.Path(out) / name / f"kshot_dev_lr{_fmt_lr(lr)}")
            s = _summary(res, "finetune", k)
            row["per_model"][name] = {
                "query_wer_unadapted": s["query_wer_unadapted"],
                "query_wer_adapted": s["query_wer_adapted"],
                "relative_reduction_pct": s["relative_reduction_pct"],
                "draws": s["draws"],
            }
            row["failed_adaptations"] += s["failed_adaptations"]
        wers = [m["query_wer_adapted"] for m in row["per_model"].values()]
        row["mean_adapted_wer"] = (
            sum(wers) / len(wers) if wers and all(w is not None for w in wers) else None
        )
        table[_fmt_lr(lr)] = row
        _say(f"dev lr={lr:g}: mean adapted query WER {row['mean_adapted_wer']}")

    def score(item):
        lr, row = item
        bad = row["failed_adaptations"] > 0 or row["mean_adapted_wer"] is None
        return (bad, row["mean_adapted_wer"] if row["mean_adapted_wer"] is not None else math.inf,
                float(lr))

    best_lr, _ = min(table.items(), key=score)
    return float(best_lr), table


def si_test_wer_from_export(model, test_csv):
    """Speaker-independent WER of an exported model on the whole test set
    (used when a reused model has no recipe test result)."""
    from sb_meta.data.manifest import read_manifest
    from sb_meta.evaluation import error_rates

    rows = read_manifest(test_csv)
    hyps = model.transcribe_waveforms([model.load_audio(r["wav"]) for r in rows])
    wer, cer = error_rates(hyps, [r["wrd"] for r in rows], ids=[r["ID"] for r in rows])
    return {"wer": wer, "cer": cer, "utterances": len(rows),
            "checkpoint": "exported model, transcribed by the benchmark"}


def measure_latency(folder, test_csv, strategy, lr, k, steps, seed, command, speakers=None):
    """Adapting one test speaker (``k`` audio files x ``steps`` steps) from the
    exported folder: median over speakers, after one untimed warm-up."""
    import torch

    from sb_meta.data.manifest import read_manifest
    from sb_meta.evaluation import draw_support
    from sb_meta.adapt import load_model

    t0 = time.perf_counter()
    model = load_model(str(folder))
    load_s = time.perf_counter() - t0
    rows = read_manifest(test_csv)
    by_id = {r["ID"]: r for r in rows}
    utts = {}
    for r in rows:
        utts.setdefault(r["spk_id"], []).append(r["ID"])
    names = sorted(speakers) if speakers else sorted(utts)
    per_speaker, audio = [], []
    warmup_s = None
    for i, spk in enumerate([names[0]] + names):
        support, _ = draw_support(utts[spk], k, seed, spk, 0)
        wavs = [by_id[u]["wav"] for u in support]
        texts = [by_id[u]["wrd"] for u in support]
        t = time.perf_counter()
        model.adapt(wavs, texts, strategy=strategy, steps=steps, lr=lr)
        dt = time.perf_counter() - t
        if i == 0:
            warmup_s = dt
            continue
        per_speaker.append(round(dt, 4))
        audio.append(round(sum(float(by_id[u]["duration"]) for u in support), 3))
    median = statistics.median(per_speaker)
    return {
        "status": "ok",
        "median_s": median,
        "per_speaker_s": per_speaker,
        "target_s": TARGET_LATENCY_S,
        "met": median <= TARGET_LATENCY_S,
        "command": command,
        "min_s": min(per_speaker),
        "max_s": max(per_speaker),
        "n": len(per_speaker),
        "speakers": names,
        "utterances": k,
        "steps": steps,
        "strategy": strategy,
        "lr": lr if lr is not None else "meta-learned (Meta-SGD)",
        "audio_seconds": statistics.median(audio),
        "audio_seconds_per_speaker": audio,
        "warmup_s": round(warmup_s, 4),
        "load_model_s": round(load_s, 3),
        "model": str(folder),
        "path": "sb_meta.adapt.load_model(folder).adapt",
        "what": (f"load_model(exported folder) once, then per test speaker "
                 f".adapt({k} audio file paths, transcripts, strategy={strategy!r}, "
                 f"steps={steps}): reading the audio included; one untimed warm-up"),
        "torch_threads": torch.get_num_threads(),
        "loadavg": _loadavg(),
    }


# --------------------------------------------------------------------- driver
def cli_command(budget_minutes, strategies, out, quick=False, reuse=False, json_path=None,
                repeats=None, dev_repeats=None, lr_grid=None, pretrain_minutes=0):
    parts = ["python", SCRIPT, "--budget-minutes", f"{budget_minutes:g}",
             "--strategies", ",".join(strategies), "--out", str(out)]
    if pretrain_minutes:
        parts += ["--pretrain-minutes", f"{pretrain_minutes:g}"]
    if quick:
        parts.append("--quick")
    if reuse:
        parts.append("--reuse")
    if json_path:
        parts += ["--json", str(json_path)]
    if repeats is not None:
        parts += ["--repeats", str(repeats)]
    if dev_repeats is not None:
        parts += ["--dev-repeats", str(dev_repeats)]
    if lr_grid is not None:
        parts += ["--lr-grid", ",".join(_fmt_lr(x) for x in lr_grid)]
    return " ".join(shlex.quote(p) for p in parts)


def run_benchmark(budget_minutes, strategies=ALL_STRATEGIES, out=DEFAULT_OUT, data_root=None,
                  repeats=FULL["repeats"], dev_repeats=FULL["dev_repeats"],
                  lr_grid=FULL["lr_grid"], steps=3, k=5, seed=0, reuse=False, device=None,
                  mode="full", command=None, progress=False, json_path=None,
                  dev_speakers=None, test_speakers=None, latency_speakers=None,
                  pretrain_minutes=0):
    """Train, evaluate and time; returns the result dict (see the module doc).

    Without ``joint`` in ``strategies`` the "beats joint" comparisons are None.
    ``dev_speakers`` / ``test_speakers`` / ``latency_speakers`` (None: all)
    restrict the lr search, the test evaluation and the latency measurement
    to the first speakers in sorted order: for tests only, since the
    benchmark's numbers are over all of them.

    ``pretrain_minutes`` > 0 adds a shared warm start: one ``joint`` model is
    trained for that long (``<out>/_pretrain/``) and every strategy then
    trains for ``budget_minutes`` from its weights (the recipe's
    ``init_from``), so each model has had ``pretrain_minutes +
    budget_minutes`` of training, the same for all.
    """
    from sb_meta.evaluation import write_report
    from sb_meta.adapt import load_model
    from sb_meta.plugins import PluginRegistry

    t_all = time.perf_counter()
    root = an4_root(data_root)
    strategies = list(dict.fromkeys(strategies))
    if not strategies:
        raise ValueError("no strategy given")
    known = PluginRegistry(strict=False).strategies
    unknown = [s for s in strategies if s not in known]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; registered: {', '.join(sorted(known))}")
    out = pathlib.Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lr_grid = sorted({float(x) for x in lr_grid})
    if not lr_grid:
        raise ValueError("lr_grid is empty")
    command = command or cli_command(budget_minutes, strategies, out, reuse=reuse,
                                     json_path=json_path, repeats=repeats,
                                     dev_repeats=dev_repeats, lr_grid=lr_grid,
                                     pretrain_minutes=pretrain_minutes)
    recipe = _load_recipe()
    started = _now()
    phases = {}
    t_phase = time.perf_counter()

    # 1. training (the recipe prepares the shared manifests in <out>/manifests)
    training = {}
    pretrain = None
    if pretrain_minutes and pretrain_minutes > 0:
        try:
            pretrain = train_model(PRETRAIN_STRATEGY, pretrain_minutes, out, root, recipe,
                                   device, reuse, name=PRETRAIN_NAME)
        except Exception as exc:  # noqa: BLE001 - recorded below
            logger.exception("the shared warm start failed")
            pretrain = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    for name in strategies:
        if pretrain is not None and pretrain.get("status") != "ok":
            training[name] = {"status": "error",
                              "error": f"the shared warm start failed: {pretrain.get('error')}"}
            continue
        try:
            training[name] = train_model(name, budget_minutes, out, root, recipe, device, reuse,
                                         init=pretrain)
        except Exception as exc:  # noqa: BLE001 - recorded; the others still run
            logger.exception("training %s failed", name)
            _say(f"{name}: training FAILED: {type(exc).__name__}: {exc}")
            training[name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    manifests = out / "manifests"
    dev_csv, test_csv = manifests / "dev.csv", manifests / "test.csv"
    phases["training"] = round(time.perf_counter() - t_phase, 1)
    t_phase = time.perf_counter()
    dev_tasks = _speakers(dev_csv, dev_speakers) if dev_speakers is not None else None
    test_tasks = _speakers(test_csv, test_speakers) if test_speakers is not None else None
    lat_tasks = _speakers(test_csv, latency_speakers) if latency_speakers is not None else None

    # 2. load the exports
    models = {}
    for name in strategies:
        if training[name].get("status") == "ok":
            models[name] = load_model(training[name]["export_folder"])

    # 3. step size on dev, for the models that adapt with plain gradient steps
    ft_models = {n: m for n, m in models.items() if adaptation_strategy_of(m) == "finetune"}
    if not ft_models:  # only metasgd: its finetune secondary still needs a step size
        ft_models = dict(models)
    lr, lr_table = None, {}
    if ft_models:
        _say(f"choosing the adaptation step size on the dev speakers among {lr_grid} ...")
        lr, lr_table = choose_lr(ft_models, dev_csv, lr_grid, k, dev_repeats, steps, seed, out,
                                 progress, speakers=dev_tasks)
        _say(f"chosen step size: {lr:g}")
    phases["lr_selection"] = round(time.perf_counter() - t_phase, 1)
    t_phase = time.perf_counter()

    # 4. 5-shot adaptation on the test speakers
    per = {}
    evals = {}
    for name, model in models.items():
        strategy = adaptation_strategy_of(model)
        use_lr = None if strategy == "metasgd" else lr
        _say(f"{name}: 5-shot adaptation on the test speakers ({strategy}) ...")
        res = _kshot(model, test_csv, strategy, use_lr, k, repeats, steps, seed, progress,
                     tasks=test_tasks)
        paths = write_report(res, out / name / "kshot_test")
        evals[name] = (strategy, res)
        entry = _summary(res, strategy, k)
        entry["adaptation"] = {"strategy": strategy, "steps": steps,
                               "lr": use_lr if use_lr is not None else "meta-learned"}
        entry["report"] = str(paths["json"])
        if strategy == "metasgd":
            res2 = _kshot(model, test_csv, "finetune", lr, k, repeats, steps, seed, progress,
                          tasks=test_tasks)
            write_report(res2, out / name / "kshot_test_finetune")
            evals[name + ":finetune"] = ("finetune", res2)
            s2 = _summary(res2, "finetune", k)
            entry["secondary"] = {
                "adaptation": f"finetune lr={lr:g} steps={steps}",
                "query_wer_adapted": s2["query_wer_adapted"],
                "relative_reduction_pct": s2["relative_reduction_pct"],
            }
        per[name] = entry

    # 5. targets and the paired comparison with the joint initialisation
    joint_wers = None
    if BASELINE in evals:
        joint_wers = _draw_wers(evals[BASELINE][1], evals[BASELINE][0], k)
    def vs_joint(strategy, res):
        mine = _draw_wers(res, strategy, k)
        diffs = [mine[key] - joint_wers[key] for key in sorted(set(mine) & set(joint_wers))]
        return {
            "adapted_wer_minus_joint": sum(diffs) / len(diffs) if diffs else None,
            "draws": len(diffs),
            "better": sum(d < 0 for d in diffs),
            "worse": sum(d > 0 for d in diffs),
            "ties": sum(d == 0 for d in diffs),
            "paired_on": "the same (speaker, repeat) support draws",
        }

    results, met, details = {}, {}, {}
    for name in strategies:
        tr = training[name]
        if tr.get("status") != "ok":
            results[name] = {"status": tr.get("status"), "error": tr.get("error"),
                             "reason": f"training failed: {tr.get('error')}"}
            continue
        si = tr.get("si_test")
        if not si or si.get("wer") is None:
            si = si_test_wer_from_export(models[name], test_csv)
        e = per[name]
        row = {
            "status": "ok",
            "si_test_wer": si["wer"],
            "query_wer_unadapted": e["query_wer_unadapted"],
            "query_wer_adapted": e["query_wer_adapted"],
            "relative_reduction_pct": e["relative_reduction_pct"],
        }
        comparison = None
        if joint_wers is not None and name != BASELINE:
            comparison = vs_joint(*evals[name])
            row["adapted_wer_minus_joint"] = comparison["adapted_wer_minus_joint"]
        row.update(
            adaptation=f"{e['adaptation']['strategy']} lr={e['adaptation']['lr']} steps={steps}",
            train_seconds=tr.get("train_seconds"),
            outer_steps=tr.get("outer_steps"),
        )
        diff = None if comparison is None else comparison["adapted_wer_minus_joint"]
        met[name] = {
            "si_test_wer": si["wer"] is not None and si["wer"] <= TARGET_SI_WER,
            "adaptation_gain": (e["relative_reduction_pct"] is not None
                                and e["relative_reduction_pct"] >= TARGET_REL_REDUCTION),
            "beats_joint": None if diff is None else diff < 0,
        }
        results[name] = row
        details[name] = {"si_test": si, "kshot_test": e}
        if comparison is not None:
            details[name]["vs_joint"] = comparison
            if name + ":finetune" in evals:  # Meta-SGD init with joint's very adaptation
                details[name]["vs_joint_with_finetune"] = vs_joint(*evals[name + ":finetune"])

    meta_ok = [n for n, t in met.items() if n != BASELINE and all(v is True for v in t.values())]

    phases["test_adaptation"] = round(time.perf_counter() - t_phase, 1)
    t_phase = time.perf_counter()

    # 6. latency (the first meta-trained model, else the first one)
    latency = common.not_run("no trained model")
    candidates = [n for n in strategies if n in models and n != BASELINE] or list(models)
    if candidates:
        name = candidates[0]
        strategy = adaptation_strategy_of(models[name])
        _say(f"adaptation latency with the {name} export ...")
        latency = measure_latency(
            training[name]["export_folder"], test_csv, strategy,
            None if strategy == "metasgd" else lr, k, steps, seed, command, speakers=lat_tasks,
        )
        latency["model"] = f"{name} ({latency['model']})"
        _say(f"adaptation latency: median {latency['median_s']:.2f} s "
             f"(target <= {TARGET_LATENCY_S:g} s)")

    phases["latency"] = round(time.perf_counter() - t_phase, 1)

    n_ok = sum(1 for t in training.values() if t.get("status") == "ok")
    out_dict = {
        "status": "ok" if n_ok == len(strategies) else ("partial" if n_ok else "error"),
        "mode": mode,
        "command": command,
        "budget_minutes_per_model": float(budget_minutes),
        "pretrain_minutes": float(pretrain_minutes or 0),
        "training_minutes_per_model": float(budget_minutes) + float(pretrain_minutes or 0),
        "strategies": strategies,
        "adaptation_lr": lr,
        "targets": {
            "si_test_wer_max_pct": TARGET_SI_WER,
            "relative_reduction_min_pct": TARGET_REL_REDUCTION,
            "beats_joint": "mean adapted query WER below the joint initialisation's, "
                           "paired on the same draws",
            "met": met,
            "meta_strategies_meeting_all": meta_ok,
            "any_meta_strategy_meets_all": bool(meta_ok) if BASELINE in evals else None,
        },
        "results": results,
        "evaluation": {
            "test_manifest": str(test_csv),
            "test_speakers": None,
            "support_utterances": k,
            "repeats": repeats,
            "steps": steps,
            "seed": seed,
            "query_utterances_per_speaker": None,
            "wer": "percent; query WERs are means over speakers x repeats of the WER on each "
                   "draw's query utterances (SpeechBrain ErrorRateStats); the same draws "
                   "for every model",
        },
        "lr_selection": {
            "on": f"dev speakers ({dev_csv}), never the test speakers",
            "speakers": dev_tasks or _speakers(dev_csv),
            "grid": lr_grid,
            "repeats": dev_repeats,
            "criterion": "mean adapted 5-shot dev query WER over the models adapting with "
                         "finetune; diverging step sizes excluded; ties to the smaller",
            "models": sorted(ft_models),
            "chosen": lr,
            "table": lr_table,
        },
        "training": {
            "budget": "wall-clock seconds in SpeechBrain's TRAIN stage (episode loading + outer "
                      "steps); optimizer_step_limit is set once it is used up; per-epoch dev "
                      "validation, checkpoints, test and export are outside it",
            "note": "wall-clock budgets are only equal compute on an otherwise idle machine: "
                    "compare train_cpu_seconds and the load averages of each model",
            "yaml": str(YAML.relative_to(REPO)),
            "common_overrides": COMMON_OVERRIDES,
            "strategy_overrides": {s: STRATEGY_OVERRIDES.get(s, {}) for s in strategies},
            "per_model": training,
            "shared_warm_start": None if pretrain is None else dict(
                pretrain,
                what=f"one {PRETRAIN_STRATEGY} model trained for {pretrain_minutes:g} min; every "
                     f"model above starts from its export (init_from) and trains "
                     f"{budget_minutes:g} min more with its own strategy",
            ),
        },
        "details": details,
        "adaptation_latency_s": latency,
        "out": str(out),
        "started_at": started,
        "phase_seconds": phases,
        "elapsed_s": round(time.perf_counter() - t_all, 1),
        "machine": common.machine_info(),
    }
    if evals:
        strategy, res = next(iter(evals.values()))
        s = _summary(res, strategy, k)
        out_dict["evaluation"]["test_speakers"] = s["speakers"]
        out_dict["evaluation"]["query_utterances_per_speaker"] = s["query_utterances_per_speaker"]
        out_dict["evaluation"]["test_utterances"] = sum(res["tasks"].values())
    return out_dict


def summary_lines(result):
    """The results as a small text table."""
    head = (f"{'model':<9} {'steps':>6} {'train s':>8} {'SI WER':>7} {'query WER':>10} "
            f"{'adapted':>8} {'rel. red.':>9} {'vs joint':>9}  targets (SI, gain, joint)")
    lines = [head]

    def f(x, spec):
        return "-" if x is None else format(x, spec)

    for name, r in result["results"].items():
        if r.get("status") != "ok":
            lines.append(f"{name:<9} {r.get('status')}: {r.get('error')}")
            continue
        t = result["targets"]["met"][name]
        lines.append(
            f"{name:<9} {f(r['outer_steps'], 'd'):>6} {f(r['train_seconds'], '.0f'):>8} "
            f"{f(r['si_test_wer'], '.2f'):>7} {f(r['query_wer_unadapted'], '.2f'):>10} "
            f"{f(r['query_wer_adapted'], '.2f'):>8} {f(r['relative_reduction_pct'], '+.1f'):>9} "
            f"{f(r.get('adapted_wer_minus_joint'), '+.2f'):>9}  "
            + ", ".join({True: "yes", False: "no", None: "-"}[t[x]]
                        for x in ("si_test_wer", "adaptation_gain", "beats_joint"))
        )
    lat = result["adaptation_latency_s"]
    if lat.get("status") == "ok":
        lines.append(f"adaptation latency: median {lat['median_s']:.2f} s over {lat['n']} "
                     f"speakers (target <= {lat['target_s']:g} s: {'met' if lat['met'] else 'NOT met'})")
    lines.append(f"adaptation step size (chosen on dev): {result['adaptation_lr']}")
    if result.get("pretrain_minutes"):
        lines.append(f"every model: {result['pretrain_minutes']:g} min of shared joint warm start "
                     f"+ {result['budget_minutes_per_model']:g} min of its own strategy")
    lines.append(f"meta strategies meeting all targets: "
                 f"{', '.join(result['targets']['meta_strategies_meeting_all']) or 'none'}")
    return lines


def run(quick):
    """For ``benchmarks/run.py``: the quick or the full benchmark as a dict."""
    reuse = os.environ.get("SBMETA_AN4_REUSE", "") not in ("", "0")
    if quick:
        cfg = dict(QUICK)
        out = QUICK_OUT
    else:
        budget, pretrain = full_minutes()
        cfg = dict(FULL, strategies=ALL_STRATEGIES, budget_minutes=budget,
                   pretrain_minutes=pretrain)
        out = DEFAULT_OUT
    pre = cfg.get("pretrain_minutes", 0)
    few = cfg.get("speakers", {})
    command = cli_command(cfg["budget_minutes"], cfg["strategies"], out, quick=quick, reuse=reuse,
                          pretrain_minutes=pre)
    command += "".join(f" --{k.replace('_', '-')} {v}" for k, v in few.items())
    return run_benchmark(
        cfg["budget_minutes"], cfg["strategies"], out, repeats=cfg["repeats"],
        dev_repeats=cfg["dev_repeats"], lr_grid=cfg["lr_grid"], reuse=reuse,
        mode="quick" if quick else "full", command=command, pretrain_minutes=pre, **few,
    )


def _floats(text):
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="AN4 5-shot speaker adaptation of meta-learned vs joint initialisations "
                    "trained with equal wall-clock budgets.",
    )
    p.add_argument("--budget-minutes", type=float,
                   help="training wall-clock minutes per model after the warm start (default "
                        "$SBMETA_AN4_BUDGET_MIN or 8; 0.5 with --quick)")
    p.add_argument("--pretrain-minutes", type=float,
                   help="shared warm start: train one joint model this long first and start "
                        "every model from it (default $SBMETA_AN4_PRETRAIN_MIN or 35; 0 with --quick; "
                        "0: from scratch); each model has pretrain + budget minutes of training")
    p.add_argument("--strategies", help=f"comma-separated (default {','.join(ALL_STRATEGIES)}; "
                                        f"{','.join(QUICK['strategies'])} with --quick)")
    p.add_argument("--out", help=f"output folder (default {DEFAULT_OUT.relative_to(REPO)}/ in the "
                                 f"repository; {QUICK_OUT.relative_to(REPO)}/ with --quick)")
    p.add_argument("--json", help="where to write the result JSON (default <out>/results.json)")
    p.add_argument("--quick", action="store_true",
                   help="tiny budget, 2 strategies, 1 repeat: fills the structure only")
    p.add_argument("--reuse", action="store_true",
                   help="reuse a model folder whose export and training record match")
    p.add_argument("--repeats", type=int, help="support draws per test speaker (default 5; 1 quick)")
    p.add_argument("--dev-repeats", type=int, help="support draws per dev speaker (default 2; 1 quick)")
    p.add_argument("--lr-grid", type=_floats,
                   help="comma-separated adaptation step sizes tried on dev "
                        f"(default {','.join(map(_fmt_lr, FULL['lr_grid']))})")
    p.add_argument("--steps", type=int, default=3, help="adaptation steps (default 3)")
    p.add_argument("--k", type=int, default=5, help="support utterances (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the support draws")
    p.add_argument("--an4-root", help="AN4 corpus root (default $SBMETA_AN4_ROOT)")
    p.add_argument("--device", help="training device (default SpeechBrain's)")
    smoke = p.add_argument_group(
        "smoke runs", "restrict the evaluation to the first N speakers (sorted) to save time; "
                      "for tests only: the benchmark's numbers use all of them")
    smoke.add_argument("--dev-speakers", type=int, help="dev speakers in the step-size search")
    smoke.add_argument("--test-speakers", type=int, help="test speakers adapted to")
    smoke.add_argument("--latency-speakers", type=int, help="test speakers timed")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    base = QUICK if args.quick else FULL
    env_budget, env_pretrain = full_minutes()
    budget = args.budget_minutes
    if budget is None:
        budget = QUICK["budget_minutes"] if args.quick else env_budget
    if budget <= 0:
        raise SystemExit("--budget-minutes must be > 0")
    strategies = ([s.strip() for s in args.strategies.split(",") if s.strip()]
                  if args.strategies else list(base.get("strategies", ALL_STRATEGIES)))
    out = pathlib.Path(args.out) if args.out else (QUICK_OUT if args.quick else DEFAULT_OUT)
    json_path = pathlib.Path(args.json) if args.json else out / "results.json"
    command = "python " + SCRIPT + (" " + " ".join(shlex.quote(a) for a in argv) if argv else "")
    try:
        result = run_benchmark(
            budget, strategies, out, data_root=args.an4_root,
            repeats=args.repeats or base["repeats"],
            dev_repeats=args.dev_repeats or base["dev_repeats"],
            lr_grid=args.lr_grid or base["lr_grid"], steps=args.steps, k=args.k, seed=args.seed,
            reuse=args.reuse, device=args.device, mode="quick" if args.quick else "full",
            command=command, progress=sys.stderr.isatty(), dev_speakers=args.dev_speakers,
            test_speakers=args.test_speakers, latency_speakers=args.latency_speakers,
            pretrain_minutes=(args.pretrain_minutes if args.pretrain_minutes is not None
                              else 0.0 if args.quick else env_pretrain),
        )
    except CorpusMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _write_json(json_path, result)
    print("\n".join(summary_lines(result)))
    print(f"wrote {json_path} ({result['elapsed_s']:.0f} s)")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
