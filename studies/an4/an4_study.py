#!/usr/bin/env python
"""The AN4 study: strong bases, meta-training from them, and adaptation on unseen speakers.

One pipeline of steps; each writes ``results/an4_study/<step>/.../record.json``, reuses
what an earlier run of the same command finished, and ``report`` gathers the records
into ``docs/studies/an4/results.json`` and ``report.md``. Budgets are epochs (``--epochs``;
an epoch of meta-training is ``episodes_per_epoch`` = 50 outer steps), and each record
gives the minutes they took on the one clock of ``studies/common.py``. Pin jobs that
share the machine: ``OMP_NUM_THREADS=1 taskset -c N python studies/an4/an4_study.py ...``.

    # strong speaker-independent bases (plain batches, the joint strategy)
    python studies/an4/an4_study.py base --family crdnn_ctc --epochs 72
    python studies/an4/an4_study.py base --family transformer --epochs 68
    python studies/an4/an4_study.py base --family crdnn_attention --epochs 21
    # does every strategy train on AN4 (from scratch, a few epochs each)?
    python studies/an4/an4_study.py strategies --epochs 2
    # MAML / FOMAML cost on a model
    python studies/an4/an4_study.py cost --family transformer
    # meta-training from the base, equal budgets in outer steps
    python studies/an4/an4_study.py meta --family crdnn_ctc --strategies joint,fomaml,reptile,metasgd --epochs 4
    # the k-shot protocol on the test speakers, choices made on the dev speakers
    python studies/an4/an4_study.py evaluate --family crdnn_ctc
    # the same on other draws of the test speakers (the dev choices reused): a replication
    python studies/an4/an4_study.py evaluate --family crdnn_ctc --seed 1
    # a second study with 20 more unseen speakers: its base trains without them and every
    # evaluation runs on them and the 10 test speakers (results/an4_study_heldout20/)
    python studies/an4/an4_study.py --heldout 20 base --family crdnn_ctc --epochs 72
    python studies/an4/an4_study.py report

The AN4 corpus is read from ``$SBMETA_AN4_ROOT`` (``--an4-root``). Nothing is
chosen on the test speakers: settings come from the recipe, the dev speakers
(``dev.csv``, whole training speakers held out by the recipe) or this file.
"""

import argparse
import json
import pathlib
import shlex
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from studies import common  # noqa: E402

OUT = REPO / "results" / "an4_study"
SCRIPT = "studies/an4/an4_study.py"
#: ``--heldout N``: a second study with N more training speakers left out of the base's
#: training (``heldout.csv``) and evaluated beside the 10 test speakers; set by ``main``
HELDOUT = 0
RECIPE = REPO / "recipes" / "AN4" / "train.py"

#: model families: YAML, the overrides that make the strong base (plain shuffled batches of
#: the joint baseline, SpeechBrain augmentation) and the base's default budget in epochs
FAMILIES = {
    # 3.6M parameters, the CNN pooling time by 4 (fewer frames: more steps per minute),
    # batches of ~24 s of audio of similar durations, Adam 2e-3 with 200 warm-up steps then a
    # cosine over the planned steps: the configuration that did best on the dev speakers
    "crdnn_ctc": {"yaml": "crdnn_ctc_meta.yaml", "epochs": 72,
                  "base": {"rnn_neurons": 256, "dnn_neurons": 256, "using_2d_pooling": True,
                           "time_pooling": False, "lr": 0.002}},
    # the CTC base's encoder and schedule, with the attention decoder and a joint CTC/attention loss
    "crdnn_attention": {"yaml": "crdnn_attention_meta.yaml", "epochs": 21,
                        "base": {"rnn_neurons": 256, "dnn_neurons": 256, "using_2d_pooling": True,
                                 "time_pooling": False, "lr": 0.002}},
    # the recipe's TransformerASR (d_model 144, 6 + 2 layers, Noam 1e-3 over 1,000 warm-up steps)
    # on 40 mel bands: Noam beat a cosine schedule on the dev speakers
    "transformer": {"yaml": "transformer_meta.yaml", "epochs": 68, "base": {"n_mels": 40}},
}
BASE_COMMON = {
    "meta_strategy": "joint",
    "plain_batches": True,
    "train_augmentation": True,
    "curve_every_minutes": 10,
}
#: meta-training from the base: episodic (4 speakers x (4 support + 4 query) per outer step),
#: a gentler Adam without warm-up (0.002 undoes a warm start), an epoch (and a validation)
#: every 50 outer steps; one inner step for the MAML family, two for Reptile (one on the
#: support and one on the query batch, so it learns from the same utterances)
EPISODES_PER_EPOCH = 50
META_COMMON = {"lr": 0.0005, "warmup_steps": 0, "train_augmentation": False,
               "curve_every_minutes": None, "meta_batch_tasks": 4, "k_support": 4, "k_query": 4,
               "episodes_per_epoch": EPISODES_PER_EPOCH}
META_STRATEGY = {"reptile": {"inner_steps": 2}}
#: the strategies the ``strategies`` step trains from scratch
STRATEGIES = ("fomaml", "maml", "reptile", "metasgd", "anil", "joint", "finetune")
say = common.say("an4_study")


def _cmd():
    """The start of a step's command line (with ``--heldout N`` in a held-out study)."""
    return f"python {SCRIPT} " + (f"--heldout {HELDOUT} " if HELDOUT else "")


def eval_manifest(manifests):
    """The evaluation speakers' manifest: ``test.csv``, or in a held-out study
    ``test_heldout.csv``, the test and held-out speakers together (rewritten whenever
    either is newer, e.g. after the corpus was prepared again)."""
    test = pathlib.Path(manifests) / "test.csv"
    if not HELDOUT:
        return test
    from sb_meta.data.manifest import read_manifest, write_manifest

    both, heldout = test.with_name("test_heldout.csv"), test.with_name("heldout.csv")
    newest = max(test.stat().st_mtime_ns, heldout.stat().st_mtime_ns)
    if not both.is_file() or both.stat().st_mtime_ns < newest:
        write_manifest(both, read_manifest(test) + read_manifest(heldout))
    return both


def an4_root(root=None):
    return common.corpus_root("SBMETA_AN4_ROOT", root)


def train(family, folder, overrides, root, epochs, init_from=None, manifests=None):
    """Train the AN4 recipe (its own ``main``) for ``epochs`` into ``folder``; returns the
    training record (a folder holding a record of the same command is reused)."""
    yaml = REPO / "recipes" / "AN4" / "hparams" / FAMILIES[family]["yaml"]
    ov = {"data_folder": root, "output_folder": folder, "prepare_folder": manifests,
          "number_of_epochs": epochs}
    ov.update(overrides)
    if HELDOUT:
        ov["heldout_speakers"] = HELDOUT
    if init_from:
        ov["init_from"] = init_from
    argv = common.recipe_argv(yaml, ov) + ["--noprogressbar"]
    steps = "epochs" if not ov.get("episodes_per_epoch") else "epochs of episodes_per_epoch outer steps"
    record = common.run_recipe(RECIPE, argv, folder, {"epochs": epochs, "unit": steps}, log=say)
    record["family"] = family
    say(f"{pathlib.Path(folder).name}: test WER {record['test']['wer']:.2f} CER {record['test']['cer']:.2f} "
        f"after {record['epochs']} epochs, {record['outer_steps']} steps, {record['train_minutes']} min")
    return record


def cmd_base(args):
    root = an4_root(args.an4_root)
    ov = dict(BASE_COMMON, **FAMILIES[args.family]["base"])
    ov.update(_pairs(args.set))
    name = args.family + (f"_{args.tag}" if args.tag else "")
    epochs = args.epochs or FAMILIES[args.family]["epochs"]
    return train(args.family, OUT / "base" / name, ov, root, epochs, manifests=OUT / "manifests")


def cmd_meta(args):
    root = an4_root(args.an4_root)
    base = OUT / "base" / args.family / "pretrained" if not args.base else pathlib.Path(args.base)
    records = {}
    for strategy in args.strategies.split(","):
        ov = meta_overrides(args.family, strategy, args.set)
        name = strategy + (f"_{args.tag}" if args.tag else "")
        records[strategy] = train(args.family, OUT / "meta" / args.family / name, ov, root, args.epochs,
                                  init_from=base, manifests=OUT / "manifests")
    return records


def meta_overrides(family, strategy, extra=None):
    """Recipe overrides of meta-training ``strategy`` from the family's base."""
    ov = dict(META_COMMON, meta_strategy=strategy, **META_STRATEGY.get(strategy, {}))
    ov.update({k: v for k, v in FAMILIES[family]["base"].items() if k != "lr"})  # the base's architecture
    ov.update(_pairs(extra))
    return ov


def _pairs(items):
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def cmd_strategies(args):
    """Every strategy trains the AN4 recipe from scratch for ``--epochs`` epochs (one epoch:
    one pass over the training speakers in episodes): does its training loss fall?"""
    import re

    root = an4_root(args.an4_root)
    runs = {}
    for strategy in args.strategies.split(","):
        folder = OUT / "strategies" / strategy
        record = train("crdnn_ctc", folder, {"meta_strategy": strategy}, root, args.epochs,
                       manifests=OUT / "manifests")
        log = (folder / "train_log.txt").read_text()
        losses = [float(x) for x in re.findall(r"train loss: ([0-9.e+-]+)", log)]
        runs[strategy] = dict(record, train_loss_per_epoch=losses,
                              loss_falls=len(losses) >= 2 and losses[-1] < losses[0])
        say(f"{strategy}: train loss {losses}")
    out = {"epochs": args.epochs, "runs": runs, "machine": common.machine(),
           "command": f"{_cmd()}strategies --epochs {args.epochs} --strategies {args.strategies}"}
    common.write_json(OUT / "strategies" / "record.json", out)
    return 0 if all(r["loss_falls"] for r in runs.values()) else 1


def cmd_cost(args):
    """Seconds per outer step of MAML and FOMAML on one AN4 task (interleaved)."""
    import statistics

    import torch
    from hyperpyyaml import load_hyperpyyaml

    from sb_meta.recipe import prepare_tokenizer

    root = an4_root(args.an4_root)
    torch.set_num_threads(1)
    from sb_meta.utils import load_script

    recipe = load_script(RECIPE, "sbmeta_an4_study_recipe")
    manifests = OUT / "manifests"
    recipe.prepare({"prepare_folder": str(manifests), "data_folder": root, "dev_speakers": 6,
                    "seed": 1234, "channels": None})
    yaml = REPO / "recipes" / "AN4" / "hparams" / FAMILIES[args.family]["yaml"]

    def make(strategy):
        with open(yaml) as f:
            hp = load_hyperpyyaml(f, {"data_folder": root, "output_folder": str(OUT / "cost" / "tmp"),
                                      "meta_strategy": strategy, "inner_steps": args.k,
                                      "meta_batch_tasks": 1})
        prepare_tokenizer(hp, manifests / "train.csv", OUT / "cost" / args.family)
        data = recipe.dataio_prepare(hp, {"train": manifests / "train.csv"})
        brain = recipe.ASR(hp["modules"], hp["opt_class"], hp, run_opts={"device": "cpu"})
        brain.init_optimizers()
        brain.modules.train()
        return brain, next(iter(brain.make_episode_loader(data["train"], seed=7)))

    brains = {s: make(s) for s in ("fomaml", "maml")}
    times = {s: [] for s in brains}
    for r in range(args.rounds + 1):
        for s, (brain, episode) in brains.items():
            t0 = time.perf_counter()
            brain.fit_batch(episode)
            if r:  # the first round warms up
                times[s].append(time.perf_counter() - t0)
    med = {s: statistics.median(v) for s, v in times.items()}
    record = {"family": args.family, "k": args.k, "rounds": args.rounds, "median_s": med,
              "samples": times, "ratio_maml_over_fomaml": med["maml"] / med["fomaml"],
              "machine": common.machine(),
              "command": f"{_cmd()}cost --family {args.family} --k {args.k} "
                         f"--rounds {args.rounds}"}
    common.write_json(OUT / "cost" / f"{args.family}_k{args.k}.json", record)
    say(f"{args.family}: MAML {med['maml']:.2f} s, FOMAML {med['fomaml']:.2f} s per task step "
         f"({record['ratio_maml_over_fomaml']:.2f}x)")
    return record


# --------------------------------------------------------------------- evaluation
#: candidates of the test-time adaptation, chosen per model on the dev speakers
DEV_GRID = [
    {"name": f"{scope}_lr{lr:g}_s{steps}", "strategy": "finetune", "lr": lr, "steps": steps,
     "adapt_params": None if scope == "all" else ["ctc_lin.*"]}
    for scope in ("all", "head") for lr in (0.005, 0.02, 0.05) for steps in (3,)
]
#: longer adaptation (``evaluate --grid long``): every parameter, 25 or 50 plain gradient steps;
#: the short grid's 3 steps left most of what 5 utterances can teach unused (on the dev
#: speakers the base's WER kept falling with more steps and larger step sizes)
DEV_GRID_LONG = [
    {"name": f"all_lr{lr:g}_s{steps}", "strategy": "finetune", "lr": lr, "steps": steps, "adapt_params": None}
    for lr, steps in ((0.05, 25), (0.1, 25), (0.2, 25), (0.1, 50))
]
#: feature-space then model-space adaptation (``evaluate --grid cmvn``): the support's input
#: statistics blended into the training ones (weight 0.25 or 0.5), alone (no transcripts read)
#: or followed by the short grid's 3 steps on every parameter; the plain 3 steps stay candidates
DEV_GRID_CMVN = [
    {"name": f"cmvn_w{w:g}", "strategy": "finetune", "steps": 1, "unsupervised": "cmvn",
     "unsupervised_config": {"cmvn_weight": w}} for w in (0.25, 0.5)
] + [
    dict({"name": f"{'cmvn_w%g_' % w if w else ''}all_lr{lr:g}_s3", "strategy": "finetune", "lr": lr, "steps": 3,
          "adapt_params": None}, **({"cmvn": w} if w else {}))
    for w in (None, 0.25, 0.5) for lr in (0.005, 0.02, 0.05)
]
#: step sizes tried on dev for the adapter methods: a fresh LHUC scale or LoRA factor needs
#: larger steps than the weights the base was trained with
ADAPTER_LRS = (0.05, 0.5, 2.0)


#: keys of the grids' ``unsupervised_config`` (written before entropy, pseudo and cmvn were test-time
#: add-ons) and the add-on options they are now
_UNSUP_KEYS = {"confidence": "pseudo_confidence", "min_improvement": "entropy_min_improvement",
               "blank_guard": "entropy_blank_guard", "agreement_guard": "entropy_agreement_guard"}


def method_of(candidate):
    """The :class:`sb_meta.adapt.Method` of a grid candidate or a stored method record: the grids
    (and the selection records cached under their keys) say ``unsupervised: MODE``,
    ``unsupervised_config`` and ``cmvn: W``, which are the test-time add-ons ``MODE`` and ``cmvn``."""
    from sb_meta.adapt import Method

    d = {k: v for k, v in candidate.items() if k not in ("dev_wer", "failed")}
    addons, config = list(d.pop("addons", None) or []), dict(d.pop("addon_config", None) or {})
    mode, mode_config, cmvn = d.pop("unsupervised", None), d.pop("unsupervised_config", None), d.pop("cmvn", None)
    if cmvn:
        addons, config = ["cmvn"] + addons, dict(config, cmvn_weight=cmvn, cmvn_update=True)
    if mode:
        addons.append(mode)
        config.update({_UNSUP_KEYS.get(k, k): v for k, v in (mode_config or {}).items()})
    return Method(**d, addons=addons, addon_config=config)


def step_size_grid(prefix, steps=3, **restriction):
    """Candidates ``<prefix>_lr<lr>_s<steps>``, one per step size of :data:`ADAPTER_LRS`: a
    ``steps``-step fine-tuning restricted by ``restriction`` (``addons=[...]``, which adapts
    only their adapters, or ``adapt_params=[...]``)."""
    return [dict({"name": f"{prefix}_lr{lr:g}_s{steps}", "strategy": "finetune", "lr": lr, "steps": steps},
                 **restriction) for lr in ADAPTER_LRS]


def adapter_grid(addon, steps=3, config=None):
    """Candidates that adapt only ``addon``'s adapters (``config``: its settings)."""
    return step_size_grid(addon, steps, addons=[addon], **({} if config is None else {"addon_config": config}))


#: speaker-adaptive adaptation (``evaluate --grid lhuc``): only LHUC scales on the DNN and output
#: layers adapt (3 steps, step sizes of the methods comparison), for a model meta-trained to be
#: adapted that way (``meta --strategies fomaml --tag lhuc --set meta_addons=[lhuc]``) and the
#: models it is compared with
DEV_GRID_LHUC = adapter_grid("lhuc")
#: feature-space adaptation (``evaluate --grid norm``): only the affine parameters of the CNN's
#: layer normalisations adapt, per frequency band and channel (about 10k numbers, the first
#: block's act on the filterbank itself, like a diagonal fMLLR); 3 steps, the adapters' step sizes
NORM_PARAMS = ["enc.CNN.*norm*"]
DEV_GRID_NORM = step_size_grid("norm", adapt_params=NORM_PARAMS)
GRIDS = {"short": DEV_GRID, "long": DEV_GRID_LONG, "cmvn": DEV_GRID_CMVN, "lhuc": DEV_GRID_LHUC,
         "norm": DEV_GRID_NORM}
KS = (0, 1, 2, 5, 10)
K_MAIN = 5


#: how the study decodes: ``greedy`` (SpeechBrain's CTC decoding) or ``lexicon`` (a beam search
#: restricted to the training transcripts' words, :mod:`sb_meta.adapt.lexicon`)
DECODERS = ("greedy", "lexicon")


def _models(family, names, decoder="greedy"):
    from sb_meta.adapt import load_model

    out = {}
    for name in names:
        folder = _model_folder(family, name)
        if not folder.is_dir():
            raise SystemExit(f"an4_study: no model {folder}; train it first")
        out[name] = load_model(folder)
        if decoder == "lexicon":  # the training speakers' words: nothing from dev or test
            out[name].set_lexicon(OUT / "manifests" / "train.csv")
    return out


def _model_folder(family, name):
    """base: the family's base; base_<tag>: a tagged base variant; else a meta-trained model."""
    if name == "base" or name.startswith("base_"):
        return OUT / "base" / (family + name[4:]) / "pretrained"
    return OUT / "meta" / family / name / "pretrained"


def _model_stamp(family, name):
    """What identifies a trained model: its export's metadata (written once per export)."""
    return (_model_folder(family, name) / "sbmeta.json").read_text()


def _cached(path, key):
    """The evaluation results at ``path`` when they were computed with ``key``, else None
    (a finished model's evaluation is reused when ``evaluate`` runs again with more models)."""
    if path.is_file():
        res = json.loads(path.read_text())
        stored = res.get("config", {}).get("cache_key")
        if stored == key:
            say(f"reusing {path}")
            return res
    return None


def choose(model, name, dev_csv, repeats, grid=None, task_column="spk_id", k=None, stepsizes=True):
    """(Method, selection record) chosen on the dev tasks (``task_column``) for ``model``."""
    from sb_meta.evaluation import select_on_dev

    grid = list(grid or DEV_GRID)
    if stepsizes and model.has_step_sizes:  # the learned step sizes are a candidate too
        grid.append({"name": f"{model.state_strategy}_s3", "strategy": model.state_strategy, "steps": 3})
    path = OUT / "eval" / "selection" / f"{name}.json"
    stamp = json.dumps(model.info, sort_keys=True)  # a retrained model is chosen for again
    if path.is_file():
        rec = json.loads(path.read_text())
        if (rec.get("grid") == grid and rec.get("model") == stamp and rec.get("dev_manifest") == str(dev_csv)
                and rec.get("task_column", "spk_id") == task_column and rec.get("k") == (k or K_MAIN)):
            chosen = rec["candidates"][rec["chosen"]]
            return method_of(chosen), rec
    method, rec = select_on_dev(model, dev_csv, [method_of(c) for c in grid], k=k or K_MAIN, repeats=repeats,
                                progress=False, task_column=task_column)
    rec["grid"], rec["model"], rec["task_column"] = grid, stamp, task_column
    common.write_json(path, rec)
    say(f"{name}: chose {method.name} on dev ({rec['candidates'][method.name]['dev_wer']:.2f}% WER)")
    return method, rec


def grid_suffix(grid, decoder="greedy"):
    """Each grid of :data:`GRIDS` but the short one, and each decoder but greedy, keeps its
    own selections and results, under names ending in this. "@" cannot end a model's name
    (``joint`` on the long grid must not be ``joint_long``, the 24-minute model)."""
    return ("" if grid == "short" else f"@{grid}") + ("" if decoder == "greedy" else f"@{decoder}")


def _seed_suffix(seed):
    """Test draws of another seed keep their own results, under names ending in this."""
    return f"@seed{seed}" if seed else ""


def _flags(args):
    """The ``--grid`` / ``--decoder`` / ``--seed`` flags of a command line, where the step
    has them and they are not the defaults."""
    return (f" --grid {args.grid}" if getattr(args, "grid", "short") != "short" else "") + (
        f" --decoder {args.decoder}" if getattr(args, "decoder", "greedy") != "greedy" else "") + (
        f" --seed {args.seed}" if getattr(args, "seed", 0) else "")


def choose_on_grid(model, name, grid, dev_repeats, decoder="greedy"):
    """(Method, selection record): ``model``'s adaptation chosen on the dev speakers from the
    named grid of :data:`GRIDS` (decoded with ``decoder``, as ``model`` is)."""
    return choose(model, name + grid_suffix(grid, decoder), OUT / "manifests" / "dev.csv", dev_repeats,
                  grid=GRIDS[grid])


def cmd_evaluate(args):
    from sb_meta.evaluation import Method, compare_models, evaluate_kshot, write_report

    an4_root(args.an4_root)
    manifests = OUT / "manifests"
    models = _models(args.family, args.models.split(","), args.decoder)
    results, chosen = {}, {}
    suffix = grid_suffix(args.grid, args.decoder)
    seed = args.seed
    # other draws of the same test speakers keep their own results (the dev choice is reused:
    # it never saw the test draws)
    out = OUT / "eval" / (args.family + suffix + _seed_suffix(seed))
    for name, model in models.items():
        method, rec = choose_on_grid(model, name, args.grid, args.dev_repeats, args.decoder)
        chosen[name] = {"method": method.as_dict(), "selection": rec}
        folder = out / name
        key = {"method": method.as_dict(), "ks": list(KS), "repeats": args.repeats,
               "model": _model_stamp(args.family, name), **({"seed": seed} if seed else {})}
        res = _cached(folder / "results.json", key)
        if res is None:
            res = evaluate_kshot(model, eval_manifest(manifests), ks=KS, repeats=args.repeats,
                                 methods=[Method(**dict(method.as_dict(), name="adapted"))],
                                 progress=False, seed=seed)
            res["config"]["selection"] = {"method": method.as_dict(), "dev_manifest": str(manifests / "dev.csv")}
            res["config"]["cache_key"] = key
            write_report(res, folder)
        results[name] = res
        s = res["summary"]["adapted"][str(K_MAIN)]
        say(f"{name}: 5-shot {s['base_wer_mean']:.2f} -> {s['wer_mean']:.2f} "
             f"(rel {100 * s['relative']:.1f}%, CI {s['relative_ci']})")
    # paired differences (same draws) of every model against each reference: joint for
    # "does meta-learning beat joint training", maml / metasgd / finetune for meta_lstm
    paired = {}
    for ref in args.reference.split(","):
        if ref in results:
            paired[ref] = {name: {str(k): compare_models(results[ref], results[name], "adapted", k)
                                  for k in KS if k > 0}
                           for name in results if name not in (ref, "base")}
    comparisons = paired.get("joint", {})
    # each model adapted against the base not adapted at all, on the same queries: does adapting
    # a (meta-)trained model beat simply using the base?
    from sb_meta.evaluation import UNADAPTED, oracle_gate

    vs_base = {name: {str(k): compare_models(results["base"], res, UNADAPTED, k, method_b="adapted")
                      for k in KS if k > 0} for name, res in results.items()} if "base" in results else {}
    # the most any keep-or-drop rule (a guard, a gate) could make of each model's adaptation
    gates = {name: oracle_gate(res, "adapted", K_MAIN) for name, res in results.items()}
    record = {"family": args.family, "grid": args.grid, "decoder": args.decoder, "ks": KS, "repeats": args.repeats,
              "seed": seed, "heldout": HELDOUT, "chosen": chosen, "oracle_gate": gates,
              "failed": {n: r["failed"] for n, r in results.items() if r["failed"]},
              "summary": {n: r["summary"] for n, r in results.items()},
              "si_unadapted_query": {n: r["summary"]["adapted"]["0"] for n, r in results.items()},
              "meta_vs_joint": comparisons, "paired": paired, "vs_base_unadapted": vs_base,
              "machine": common.machine(),
              "command": f"{_cmd()}evaluate --family {args.family} "
                         f"--models {args.models} --dev-repeats {args.dev_repeats} --repeats {args.repeats} "
                         f"--reference {args.reference}" + _flags(args)}
    common.write_json(out / "record.json", record)
    return record


def method_grid(model, base_method, name="base", dev_csv=None, dev_repeats=1):
    """The test-time adaptation methods compared on the same draws (issue 14, item 2):
    full and head-only updates at the dev-chosen step size; LHUC and LoRA each at its own
    step size chosen on dev (``dev_csv``), or at 0.05 without one."""
    from sb_meta.evaluation import Method

    b = base_method.as_dict()
    lr, steps = b["lr"], b["steps"]
    adapters = {"lhuc": {}, "lora": {"peft_rank": 8}}
    core = [
        Method(name="full", strategy="finetune", lr=lr, steps=steps),
        Method(name="head", strategy="finetune", lr=lr, steps=steps, adapt_params=["ctc_lin.*"]),
    ]
    for addon, config in adapters.items():
        chosen_lr = max(lr, 0.05)
        if dev_csv is not None:
            grid = adapter_grid(addon, steps, config)
            chosen_lr = choose(model, f"{name}_{addon}", dev_csv, dev_repeats, grid=grid, stepsizes=False)[0].lr
        core.append(Method(name=addon, strategy="finetune", lr=chosen_lr, steps=steps, addons=[addon],
                           addon_config=config))
    if model.has_step_sizes:
        core.append(Method(name=model.state_strategy, strategy=model.state_strategy, steps=steps))
    out = []
    for m in core:
        out.append(m)
        d = m.as_dict()
        out.append(Method(**dict(d, name=m.name + "+aug", addons=d["addons"] + ["augment"],
                                 addon_config=dict(d["addon_config"], augment_phases=["adapt"]))))
        out.append(Method(**dict(d, name=m.name + "+distill", addons=d["addons"] + ["distill"],
                                 addon_config=dict(d["addon_config"], distill_phases=["adapt"]))))
    return out


def cmd_methods(args):
    from sb_meta.evaluation import Method, evaluate_kshot, write_report

    manifests = OUT / "manifests"
    (name,) = args.models.split(",")
    model = _models(args.family, [name], args.decoder)[name]
    suffix = grid_suffix(args.grid, args.decoder)
    base, _ = choose_on_grid(model, name, args.grid, args.dev_repeats, args.decoder)
    methods = method_grid(model, base, name + suffix, manifests / "dev.csv", args.dev_repeats)
    if args.unsupervised:
        methods += [Method(name=f"unsup-{u}", strategy="finetune", lr=base.lr, steps=base.steps,
                           adapt_params=base.adapt_params, addons=[u]) for u in ("entropy", "pseudo")]
        # the decoder names the choice: a model's lexicon and greedy choices differ
        cmvn, _ = choose(model, f"{name}_cmvn{grid_suffix('short', args.decoder)}", manifests / "dev.csv",
                         args.dev_repeats, grid=UNSUP_GRID["cmvn"], stepsizes=False)
        methods.append(Method(**dict(cmvn.as_dict(), name="unsup-cmvn")))
    res = evaluate_kshot(model, eval_manifest(manifests), ks=(0, K_MAIN), repeats=args.repeats,
                         methods=methods, progress=False)
    write_report(res, OUT / "eval" / args.family / f"methods_{name}{suffix}")
    record = {"family": args.family, "model": name, "grid": args.grid, "decoder": args.decoder,
              "base_method": base.as_dict(),
              "methods": {m.name: m.as_dict() for m in methods}, "summary": res["summary"], "failed": res["failed"], "machine": common.machine(),
              "command": f"{_cmd()}methods --family {args.family} --models {name} "
                         f"--dev-repeats {args.dev_repeats} --repeats {args.repeats}" + (" --unsupervised" if args.unsupervised else "")
                         + _flags(args)}
    common.write_json(OUT / "eval" / args.family / f"methods_{name}{suffix}.json", record)
    return record


def cmd_guard(args):
    """The dev-chosen adaptation of each model with and without the leave-one-out guard
    (:mod:`sb_meta.adapt.safeguard`), on the same test draws as ``evaluate`` at k = 5."""
    from sb_meta.evaluation import Method, evaluate_kshot, write_report

    manifests = OUT / "manifests"
    suffix, out = grid_suffix(args.grid, args.decoder), {}
    for name, model in _models(args.family, args.models.split(","), args.decoder).items():
        method, _ = choose_on_grid(model, name, args.grid, args.dev_repeats, args.decoder)
        d = method.as_dict()
        methods = [Method(**dict(d, name="adapted")), Method(**dict(d, name="adapted+guard", guard=True))]
        folder = OUT / "eval" / args.family / f"guard_{name}{suffix}"
        key = {"methods": [m.as_dict() for m in methods], "repeats": args.repeats,
               "model": _model_stamp(args.family, name)}
        res = _cached(folder / "results.json", key)
        if res is None:
            res = evaluate_kshot(model, eval_manifest(manifests), ks=(0, K_MAIN), repeats=args.repeats,
                                 methods=methods, progress=False)
            res["config"]["cache_key"] = key
            write_report(res, folder)
        checks = [d["adapted"]["adapted+guard"]["guard"] for d in res["draws"]
                  if d["k"] == K_MAIN and "guard" in d["adapted"].get("adapted+guard", {})]
        out[name] = {"method": d, "summary": res["summary"], "failed": res["failed"],
                     "kept": sum(c["kept"] for c in checks), "checked": len(checks)}
        for m in ("adapted", "adapted+guard"):
            s = res["summary"][m][str(K_MAIN)]
            say(f"{name} {m}: {s['base_wer_mean']:.2f} -> {s['wer_mean']:.2f} ({s['delta_wer_mean']:+.2f} "
                 f"{s['delta_ci']}), worse {len(s['worse_tasks'])}/{s['tasks']}")
    record = {"family": args.family, "grid": args.grid, "decoder": args.decoder, "repeats": args.repeats,
              "models": out,
              "machine": common.machine(),
              "command": f"{_cmd()}guard --family {args.family} --models {args.models} "
                         f"--grid {args.grid} --dev-repeats {args.dev_repeats} --repeats {args.repeats}"
                         + (f" --decoder {args.decoder}" if args.decoder != "greedy" else "")}
    common.write_json(OUT / "eval" / args.family / f"guard{suffix}.json", record)
    return record


def cmd_channels(args):
    """Meta-train across (speaker, channel) tasks from the base and measure how much
    of each channel's WER loss 5-shot adaptation wins back on the test speakers."""
    from sb_meta.evaluation import Method, evaluate_kshot, write_report

    root = an4_root(args.an4_root)
    channels = args.channels.split(",")
    base = OUT / "base" / args.family / "pretrained"
    records = {}
    decoder, seed, grid = args.decoder, args.seed, args.grid
    # a grid other than the short one and a decoder other than greedy keep their own dev choices
    # (which never see the test draws); with a draw seed other than 0 as well, its own results and record
    dev_suffix = grid_suffix(grid, decoder)
    suffix = dev_suffix + _seed_suffix(seed)
    for strategy in [s for s in args.strategies.split(",") if s]:  # "": the base alone
        ov = meta_overrides(args.family, strategy, args.set)
        ov.update(channels=channels, task_column="spk_channel")
        records[strategy] = train(args.family, OUT / "channels" / args.family / strategy, ov, root,
                                  args.epochs, init_from=base, manifests=OUT / "manifests")
    test_csv = OUT / "manifests" / "channels" / "test.csv"
    dev_csv = OUT / "manifests" / "channels" / "valid.csv"  # prepare_channels keeps the recipe split names
    from sb_meta.adapt import load_model

    out = {"channels": channels, "training": records, "results": {}}
    models = {"base": load_model(base)}
    models.update({s: load_model(r["export"]) for s, r in records.items()})
    for name, model in models.items():
        if decoder == "lexicon":  # the training speakers' words, as in evaluate
            model.set_lexicon(OUT / "manifests" / "train.csv")
        method, rec = choose(model, f"channels_{name}{dev_suffix}", dev_csv, 1, grid=GRIDS[grid],
                             task_column="spk_channel")
        cmvn, _ = choose(model, f"channels_{name}_cmvn{grid_suffix('short', decoder)}", dev_csv, 1,
                         grid=UNSUP_GRID["cmvn"],
                         task_column="spk_channel", stepsizes=False)  # the same tasks without transcripts
        methods = [Method(**dict(method.as_dict(), name="adapted")), Method(**dict(cmvn.as_dict(), name="cmvn"))]
        folder = OUT / "eval" / args.family / f"channels_{name}{suffix}"
        key = {"methods": [m.as_dict() for m in methods], "ks": [0, K_MAIN], "repeats": args.repeats,
               "channels": channels, "model": json.dumps(model.info, sort_keys=True),
               **({"seed": seed} if seed else {}), **({"decoder": decoder} if decoder != "greedy" else {})}
        res = _cached(folder / "results.json", key)
        if res is None:
            res = evaluate_kshot(model, test_csv, task_column="spk_channel", ks=(0, K_MAIN), repeats=args.repeats,
                                 methods=methods, progress=False, seed=seed)
            res["config"]["cache_key"] = key
            write_report(res, folder)
        out["results"][name] = {"method": method.as_dict(), "per_channel": per_channel_summary(res, channels),
                                "cmvn": cmvn.as_dict(), "per_channel_cmvn": per_channel_summary(res, channels, "cmvn"),
                                "summary": res["summary"]}
    out["machine"], out["decoder"], out["seed"], out["repeats"] = common.machine(), decoder, seed, args.repeats
    out["grid"] = grid
    strategies = args.strategies or "''"  # the base alone
    out["command"] = (f"{_cmd()}channels --family {args.family} "
                      f"--strategies {strategies} --epochs {args.epochs} --channels {args.channels} "
                      f"--repeats {args.repeats}" + _flags(args))
    common.write_json(OUT / "eval" / args.family / f"channels{suffix}.json", out)
    return out


def per_channel_summary(res, channels, method="adapted", k=K_MAIN):
    """Per channel: unadapted and adapted query WER, their paired change with its 95% interval
    (bootstrap over the channel's speakers and draws), the speakers made worse, and the share
    of the channel's WER loss over the same model's clean WER that adaptation wins back."""
    from sb_meta.evaluation.statistics import summarize_paired

    out = {}
    for ch in channels:
        base, adapted = {}, {}
        for d in res["draws"]:
            if d["k"] == k and d["task"].endswith("@" + ch) and method in d["adapted"]:
                base.setdefault(d["task"], []).append(d["unadapted"]["wer"])
                adapted.setdefault(d["task"], []).append(d["adapted"][method]["wer"])
        if not base:
            out[ch] = {"unadapted": None, "adapted": None, "won_back": None}
            continue
        p = summarize_paired(base, adapted)
        out[ch] = {"unadapted": p["base_mean"], "adapted": p["mean"], "delta": p["delta"],
                   "delta_ci": p["delta_ci"], "relative": p["relative"], "relative_ci": p["relative_ci"],
                   "worse_tasks": p["worse_tasks"], "tasks": p["tasks"]}
    clean = out.get("clean", {}).get("unadapted")
    for v in out.values():
        loss = None if clean is None or v["unadapted"] is None else v["unadapted"] - clean
        v["won_back"] = None if not loss or v["adapted"] is None else (v["unadapted"] - v["adapted"]) / loss
    return out


#: unsupervised candidates, chosen per mode on the dev channel tasks
UNSUP_GRID = {mode: [{"name": f"{mode}_lr{lr:g}_s{steps}", "strategy": "finetune", "lr": lr, "steps": steps,
                      "unsupervised": mode} for lr in (0.02, 0.1) for steps in (3, 10)]
              for mode in ("entropy", "pseudo")}
#: re-estimated input statistics take no step: the share of the support's statistics is chosen
UNSUP_GRID["cmvn"] = [{"name": f"cmvn_w{w:g}", "strategy": "finetune", "steps": 1, "unsupervised": "cmvn",
                       "unsupervised_config": {"cmvn_weight": w}} for w in (0.25, 0.5, 1.0)]
KS_UNSUP = (0, 5, 20)


def cmd_unsup(args):
    """Adaptation without transcripts from 5 and 20 unlabelled utterances of a new channel.

    An AN4 test speaker has 13 utterances, too few for 20 unlabelled ones plus a query;
    a channel of the test set pooled over its 10 speakers has 130. Each mode's step size
    and steps are chosen on the dev speakers' channel tasks at k = 20 (never on test).
    """
    from sb_meta.evaluation import Method, evaluate_kshot, write_report

    manifests = OUT / "manifests" / "channels"
    if not (manifests / "test.csv").is_file():
        raise SystemExit(f"an4_study: no {manifests / 'test.csv'}; run the channels step first")
    model = _models(args.family, ["base"])["base"]
    methods, chosen = [], {}
    for mode, grid in UNSUP_GRID.items():
        method, rec = choose(model, f"unsup_{mode}_base", manifests / "valid.csv", args.dev_repeats,
                             grid=grid, task_column="channel", k=max(KS_UNSUP))
        chosen[mode] = {"method": method.as_dict(), "selection": rec}
        methods.append(Method(**dict(method.as_dict(), name=f"unsup-{mode}")))
    res = evaluate_kshot(model, manifests / "test.csv", task_column="channel", ks=KS_UNSUP,
                         repeats=args.repeats, methods=methods, progress=False)
    write_report(res, OUT / "eval" / args.family / "unsup_channels")
    record = {"family": args.family, "model": "base", "task_column": "channel", "ks": KS_UNSUP,
              "repeats": args.repeats, "chosen": chosen, "summary": res["summary"], "per_task": res["per_task"],
              "failed": res["failed"],
              "machine": common.machine(),
              "command": f"{_cmd()}unsup --family {args.family} "
                         f"--dev-repeats {args.dev_repeats} --repeats {args.repeats}"}
    common.write_json(OUT / "eval" / args.family / "unsup_channels.json", record)
    for name, summ in res["summary"].items():
        for k in KS_UNSUP[1:]:
            s = summ[str(k)]
            say(f"{name} k={k}: {s['base_wer_mean']:.2f} -> {s['wer_mean']:.2f} "
                 f"({s['delta_wer_mean']:+.2f} {s['delta_ci']}), worse {s['worse_draws']}/{s['n']} draws")
    return record


def add_eval_commands(sub):
    e = sub.add_parser("evaluate", help="k-shot protocol on the test speakers, choices on dev")
    e.add_argument("--family", required=True)
    e.add_argument("--models", default="base,joint,fomaml,reptile,metasgd")
    e.add_argument("--repeats", type=int, default=5)
    e.add_argument("--dev-repeats", type=int, default=2)
    e.add_argument("--reference", default="joint",
                   help="comma-separated models every other one is compared with, paired")
    e.add_argument("--grid", choices=sorted(GRIDS), default="short",
                   help="the candidates chosen from on dev: short (3 steps, all or head) or long (25-50 steps)")
    e.add_argument("--seed", type=int, default=0,
                   help="seed of the test support draws (another seed: other draws, their own results)")
    e.add_argument("--decoder", choices=DECODERS, default="greedy",
                   help="greedy CTC decoding, or a beam search restricted to the training words")
    e.set_defaults(func=cmd_evaluate)
    m = sub.add_parser("methods", help="adaptation methods compared on the same draws")
    m.add_argument("--family", required=True)
    m.add_argument("--models", default="base")
    m.add_argument("--repeats", type=int, default=3)
    m.add_argument("--dev-repeats", type=int, default=2)
    m.add_argument("--unsupervised", action="store_true")
    m.add_argument("--grid", choices=sorted(GRIDS), default="short",
                   help="the grid the full update's step size and steps are chosen from (as in evaluate)")
    m.add_argument("--decoder", choices=DECODERS, default="greedy",
                   help="greedy CTC decoding, or a beam search restricted to the training words")
    m.set_defaults(func=cmd_methods)
    g = sub.add_parser("guard", help="the dev-chosen adaptation with and without the leave-one-out guard")
    g.add_argument("--family", required=True)
    g.add_argument("--models", default="base")
    g.add_argument("--grid", choices=sorted(GRIDS), default="long")
    g.add_argument("--repeats", type=int, default=2)
    g.add_argument("--dev-repeats", type=int, default=2)
    g.add_argument("--decoder", choices=DECODERS, default="greedy",
                   help="greedy CTC decoding, or a beam search restricted to the training words")
    g.set_defaults(func=cmd_guard)
    c = sub.add_parser("channels", help="(speaker, channel) tasks")
    c.add_argument("--family", required=True)
    c.add_argument("--strategies", default="joint,fomaml")
    c.add_argument("--epochs", type=int, default=4, help="meta-training epochs of 50 outer steps")
    c.add_argument("--channels", default="clean,telephone,noise10,reverb")
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--set", action="append")
    c.add_argument("--decoder", choices=DECODERS, default="greedy",
                   help="greedy CTC decoding, or a beam search restricted to the training words")
    c.add_argument("--seed", type=int, default=0,
                   help="seed of the test support draws (another seed: other draws, their own results)")
    c.add_argument("--grid", choices=sorted(GRIDS), default="short",
                   help="the candidates of the supervised adaptation, chosen on the dev speakers' channel "
                        "tasks (norm: the CNN's layer norms only, a feature-space update)")
    c.set_defaults(func=cmd_channels)
    u = sub.add_parser("unsup", help="adaptation without transcripts from 5 and 20 utterances of a "
                                     "new channel (after channels)")
    u.add_argument("--family", required=True)
    u.add_argument("--repeats", type=int, default=2)
    u.add_argument("--dev-repeats", type=int, default=1)
    u.set_defaults(func=cmd_unsup)



# --------------------------------------------------------------------- transfer add-ons
def cmd_dann(args):
    """Joint training from the base with and without DANN over speakers, equal budgets:
    WER on the unseen test speakers."""
    root = an4_root(args.an4_root)
    base = OUT / "base" / args.family / "pretrained"
    records = {}
    for name, extra in (("joint", []), ("joint_dann", ["meta_addons=[dann]", "dann_column=spk_id"])):
        ov = meta_overrides(args.family, "joint", extra + (args.set or []))
        folder = OUT / "meta" / args.family / name
        records[name] = train(args.family, folder, ov, root, args.epochs, init_from=base,
                              manifests=OUT / "manifests")
    out = {"records": records, "machine": common.machine(),
           "command": f"{_cmd()}dann --family {args.family} --epochs {args.epochs}"}
    common.write_json(OUT / "transfer" / "dann.json", out)
    return out


def cmd_distill(args):
    """A student with at most a third of the teacher's (the base's) parameters, trained
    from scratch with and without distillation from it, equal budgets."""
    root = an4_root(args.an4_root)
    teacher = OUT / "base" / args.family / "pretrained"
    student = {"rnn_neurons": args.student_rnn, "dnn_neurons": args.student_rnn, "rnn_layers": 2}
    records = {}
    for name, extra in (("student_alone", {}),
                        ("student_distilled", {"meta_addons": "[distill]", "distill_teacher": str(teacher),
                                               "distill_phases": "[outer]"})):
        ov = dict(BASE_COMMON, **FAMILIES[args.family]["base"])
        ov.update(student, **extra)
        ov["curve_every_minutes"] = None
        records[name] = train(args.family, OUT / "transfer" / name, ov, root, args.epochs,
                              manifests=OUT / "manifests")
    base = json.loads((OUT / "base" / args.family / "record.json").read_text())
    out = {"teacher": {"parameters": base["parameters"], "test": base["test"]}, "records": records,
           "machine": common.machine(),
           "command": f"{_cmd()}distill --family {args.family} "
                      f"--epochs {args.epochs} --student-rnn {args.student_rnn}"}
    common.write_json(OUT / "transfer" / "distill.json", out)
    return out


def cmd_compress(args):
    """int8 and pruned copies of the base vs the float model: size, real-time factor, WER."""
    import subprocess

    model = OUT / "base" / args.family / "pretrained"
    test_csv = OUT / "manifests" / "test.csv"
    cmd = [sys.executable, str(REPO / "benchmarks" / "compression.py"), "--model", str(model), "--data", str(test_csv),
           "--out", str(OUT / "transfer" / "compression"), "--variants", args.variants,
           "--threads", "1", "--repeats", str(args.repeats), "--force"]
    subprocess.run(cmd, check=True)
    rows = json.loads((OUT / "transfer" / "compression" / "compression.json").read_text())
    out = {"rows": rows, "machine": common.machine(),
           "command": "python benchmarks/compression.py " + " ".join(shlex.quote(c) for c in cmd[2:])}
    common.write_json(OUT / "transfer" / "compression.json", out)
    return out


def add_transfer_commands(sub):
    d = sub.add_parser("dann", help="joint from the base with and without DANN")
    d.add_argument("--family", default="crdnn_ctc")
    d.add_argument("--epochs", type=int, default=4, help="epochs of 50 outer steps")
    d.add_argument("--set", action="append")
    d.set_defaults(func=cmd_dann)
    k = sub.add_parser("distill", help="a small student with and without distillation from the base")
    k.add_argument("--family", default="crdnn_ctc")
    k.add_argument("--epochs", type=int, default=20, help="epochs of plain batches")
    k.add_argument("--student-rnn", type=int, default=96, help="RNN and DNN units of the student")
    k.set_defaults(func=cmd_distill)
    c = sub.add_parser("compress", help="int8 / pruned vs float")
    c.add_argument("--family", default="crdnn_ctc")
    c.add_argument("--variants", default="int8,prune:0.5,prune:0.8")
    c.add_argument("--repeats", type=int, default=3)
    c.set_defaults(func=cmd_compress)


# --------------------------------------------------------------------- report
def cmd_decode(args):
    """Each CTC base decoded greedily and with the lexicon of the training words, on every dev
    and test utterance (the same exported model and batches for both; nothing chosen on test:
    the search keeps torchaudio's defaults, beam 50, no word or silence score)."""
    from sb_meta.evaluation.protocol import error_rates
    from sb_meta.data.manifest import read_manifest

    an4_root(args.an4_root)
    record = {"families": {}, "lexicon": str(OUT / "manifests" / "train.csv"), "machine": common.machine(),
              "command": f"{_cmd()}decode --families {args.families}"}
    for fam in args.families.split(","):
        model = _models(fam, ["base"], "lexicon")["base"]
        lexicon = model.decoder  # made once; greedy decoding is the model without it
        rec = {"words": len(lexicon.words)}
        for split in ("dev", "test"):
            rows = read_manifest(OUT / "manifests" / f"{split}.csv", required=("ID", "wav", "wrd"))
            wavs = [model.load_audio(r["wav"], what=f"audio file of {r['ID']}") for r in rows]
            refs = [r["wrd"] for r in rows]
            for decoder in DECODERS:
                model.decoder = lexicon if decoder == "lexicon" else None
                start = time.process_time()
                hyps = model.transcribe_waveforms(wavs)
                wer, cer = error_rates(hyps, refs)
                rec.setdefault(decoder, {})[split] = {"wer": wer, "cer": cer, "utterances": len(rows),
                                                     "cpu_seconds": round(time.process_time() - start, 1)}
                say(f"{fam} {split} {decoder}: WER {wer:.2f} CER {cer:.2f}")
        record["families"][fam] = rec
    common.write_json(OUT / "decode" / "record.json", record)
    return record


def cmd_report(args):
    from studies.an4 import an4_report

    an4_report.write_report()


def build_parser():
    """The command line of every step (``main`` runs the one it names)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--an4-root", default=None)
    p.add_argument("--heldout", type=int, default=0, metavar="N",
                   help="a second study (results/an4_study_heldoutN): N more training speakers left "
                        "out of training and evaluated beside the test speakers")
    sub = p.add_subparsers(dest="step", required=True)
    b = sub.add_parser("base", help="train a strong speaker-independent base")
    b.add_argument("--family", choices=sorted(FAMILIES), required=True)
    b.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: the family's, see FAMILIES)")
    b.add_argument("--set", action="append", help="more recipe overrides KEY=VALUE")
    b.add_argument("--tag", default=None, help="a variant: trained into base/<family>_<tag>, "
                   "evaluated as model base_<tag> (e.g. meta-training from scratch)")
    b.set_defaults(func=cmd_base)
    d = sub.add_parser("decode", help="each CTC base decoded greedily and with the training words' lexicon")
    d.add_argument("--families", default="crdnn_ctc")
    d.set_defaults(func=cmd_decode)
    m = sub.add_parser("meta", help="meta-train from a base at equal budgets")
    m.add_argument("--family", choices=sorted(FAMILIES), required=True)
    m.add_argument("--strategies", default="joint,fomaml,reptile,metasgd")
    m.add_argument("--epochs", type=int, default=4,
                   help=f"meta-training epochs of {EPISODES_PER_EPOCH} outer steps")
    m.add_argument("--base", default=None, help="export to start from (default: the family's base)")
    m.add_argument("--tag", default="", help="suffix of the run folders")
    m.add_argument("--set", action="append", help="more recipe overrides KEY=VALUE")
    m.set_defaults(func=cmd_meta)
    c = sub.add_parser("cost", help="MAML vs FOMAML seconds per outer step")
    c.add_argument("--family", choices=sorted(FAMILIES), required=True)
    c.add_argument("--k", type=int, default=1)
    c.add_argument("--rounds", type=int, default=5)
    c.set_defaults(func=cmd_cost)
    s = sub.add_parser("strategies", help="every strategy from scratch for a few epochs: does the loss fall?")
    s.add_argument("--strategies", default=",".join(STRATEGIES))
    s.add_argument("--epochs", type=int, default=2)
    s.set_defaults(func=cmd_strategies)
    add_eval_commands(sub)
    add_transfer_commands(sub)
    r = sub.add_parser("report", help="gather the records into docs/studies/an4/results.json and report.md")
    r.set_defaults(func=cmd_report)
    return p


def main(argv=None):
    global OUT, HELDOUT
    args = build_parser().parse_args(argv)
    if args.heldout:
        if args.step not in ("base", "meta", "decode", "evaluate", "methods", "guard"):
            raise SystemExit(f"an4_study: --heldout is for base, meta, decode, evaluate, methods and guard, not {args.step}")
        HELDOUT, OUT = args.heldout, REPO / "results" / f"an4_study_heldout{args.heldout}"
    out = args.func(args)
    return out if isinstance(out, int) else 0


if __name__ == "__main__":
    sys.exit(main())
