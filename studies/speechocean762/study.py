#!/usr/bin/env python3
"""Speaker and child adaptation on speechocean762: the study's every step.

The corpus (``$SBMETA_SPEECHOCEAN762_ROOT``, published layout) is prepared by
the recipe (``recipes/SpeechOcean762``); AN4 (``$SBMETA_AN4_ROOT``) gives the
pretrained model one base starts from. Trained models and raw results go to
``results/so762/`` (not committed: the commands rebuild them); the committed
results and the write-up are in ``docs/studies/speechocean762/``.

Steps, in order (each reuses what an earlier run of the same command left)::

    python studies/speechocean762/study.py an4-base
    python studies/speechocean762/study.py base --init an4 --epochs 25
    python studies/speechocean762/study.py base --init scratch --epochs 40
    python studies/speechocean762/study.py score --models base_an4,base_scratch
    python studies/speechocean762/study.py meta --strategies joint,fomaml,reptile --steps 600
    python studies/speechocean762/study.py select --models base_an4 --grid methods
    python studies/speechocean762/study.py evaluate --models base_an4 --grid methods --ks 5
    python studies/speechocean762/study.py report

Budgets are in epochs or optimizer steps; the records also give the minutes
they took on the studies' one clock (``studies/common.py``: the training
process's CPU minutes while it trained), and ``wall_minutes``, the whole
command's wall clock.
Every run here was pinned to one core with one thread
(``OMP_NUM_THREADS=1 taskset -c N``).
"""

import argparse
import datetime
import json
import os
import pathlib
import shlex
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from studies import common  # noqa: E402

OUT = pathlib.Path(os.environ.get("SBMETA_SO762_OUT", REPO / "results" / "so762"))  # trained models, raw results
DOCS = REPO / "docs" / "studies" / "speechocean762"
RECIPES = REPO / "recipes"

#: the CRDNN-CTC settings of every base: the AN4 study's base (3.6M parameters, the CNN
#: pooling time by 4, ~24 s of audio per batch, Adam 2e-3, 200 warm-up steps then a cosine
#: over the planned steps, speed perturbation and SpecAugment-style masks)
BASE = {"meta_strategy": "joint", "plain_batches": True, "train_augmentation": True,
        "rnn_neurons": 256, "dnn_neurons": 256, "using_2d_pooling": True, "time_pooling": False,
        "lr": 0.002, "train_budget_clock": "cpu", "ckpt_interval_minutes": 10}
AN4_EPOCHS = 72

say = common.say("so762")
write_json = common.write_json
machine = common.machine


def corpus_root(var):
    return common.corpus_root(var)


def _argv(yaml, overrides):
    return common.recipe_argv(yaml, overrides)


def train(recipe, yaml, folder, overrides):
    """Run ``recipes/<recipe>/train.py`` (its ``main``, in this process) into ``folder``.

    A folder whose ``record.json`` holds the same command is reused; an
    interrupted run resumes from its last checkpoint (SpeechBrain's).
    """
    from sb_meta.utils import load_script

    folder = pathlib.Path(folder)
    argv = _argv(RECIPES / recipe / "hparams" / yaml, dict(overrides, output_folder=folder)) + ["--noprogressbar"]
    command = f"python recipes/{recipe}/train.py " + " ".join(shlex.quote(a) for a in argv)
    record_path = folder / "record.json"
    if record_path.is_file() and json.loads(record_path.read_text()).get("command") == command:
        say(f"reusing {folder}")
        return json.loads(record_path.read_text())
    if not record_path.is_file() and (folder / "pretrained" / "sbmeta.json").is_file():
        # finished by the same command started outside this script (its command.txt says so)
        started = (folder / "command.txt").read_text().strip() if (folder / "command.txt").is_file() else None
        if started == command:
            record = record_from_folder(folder, command)
            write_json(record_path, record)
            return record
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "command.txt").write_text(command + "\n")
    say(f"training: {command}")
    t0 = time.time()
    module = load_script(RECIPES / recipe / "train.py", f"so762_study_{recipe}")
    brain = module.main(argv)
    record = training_record(brain, folder, command, time.time() - t0)
    write_json(record_path, record)
    say(f"{folder.name}: test WER {record['test']['wer']:.2f} after {record['epochs']} epochs, "
        f"{record['optimizer_steps']} steps, {record['train_minutes']} CPU-min")
    return record


def training_record(brain, folder, command, wall_seconds):
    """What a training run did: its budget in epochs and steps, its minutes, its curve."""
    log = pathlib.Path(folder) / "train_log.txt"
    return {
        "command": command,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "epochs": int(brain.hparams.epoch_counter.current),
        "optimizer_steps": int(brain.optimizer_step),
        "train_minutes": round(brain.train_clock.cpu_seconds / 60, 2),
        "clock": common.CLOCK,
        "wall_minutes": round(wall_seconds / 60, 2),
        "parameters": sum(p.numel() for n, p in brain.modules.named_parameters() if not n.startswith("sbmeta_")),
        "test": {"wer": brain.test_stats["WER"], "cer": brain.test_stats["CER"],
                 "checkpoint": "best dev WER", "decoding": "greedy"},
        "train_log": log.read_text().splitlines() if log.is_file() else [],
        "export": str(pathlib.Path(folder) / "pretrained"),
    }


def record_from_folder(folder, command):
    """The record of a finished run read from its folder: the training log (epochs, the
    budget clock's minutes, steps where the log has them) and the kept checkpoint."""
    import re

    folder = pathlib.Path(folder)
    lines = (folder / "train_log.txt").read_text().splitlines()
    epochs = [ln for ln in lines if ln.startswith("epoch:")]
    tested = [ln for ln in lines if "test WER" in ln]
    minutes = re.search(r"train minutes: ([0-9.e+-]+)", epochs[-1])
    kept = sorted((folder / "save").glob("CKPT*/brain.ckpt"))
    kept_step = None
    if kept:
        for ln in kept[-1].read_text().splitlines():
            if ln.startswith("optimizer_step:"):
                kept_step = int(ln.split(":")[1])
    wer = re.search(r"test WER: ([0-9.e+-]+)", tested[-1]) if tested else None
    cer = re.search(r"test CER: ([0-9.e+-]+)", tested[-1]) if tested else None
    return {
        "command": command,
        "finished": datetime.datetime.fromtimestamp((folder / "pretrained" / "sbmeta.json").stat().st_mtime,
                                                    datetime.timezone.utc).isoformat(timespec="seconds"),
        "epochs": len(epochs),
        "optimizer_steps_kept_checkpoint": kept_step,
        "train_minutes": float(minutes.group(1)) if minutes else None,
        "clock": common.CLOCK,
        "test": {"wer": float(wer.group(1)) if wer else None, "cer": float(cer.group(1)) if cer else None,
                 "checkpoint": "best dev WER", "decoding": "greedy"},
        "train_log": lines,
        "export": str(folder / "pretrained"),
    }


def manifests():
    return OUT / "manifests"


# --------------------------------------------------------------------- training
def cmd_an4_base(args):
    """The AN4 CRDNN-CTC base that ``base --init an4`` starts from (the AN4 study's settings)."""
    root = corpus_root("SBMETA_AN4_ROOT")
    ov = dict(BASE, data_folder=root, number_of_epochs=args.epochs, ckpt_interval_minutes=5)
    return train("AN4", "crdnn_ctc_meta.yaml", OUT / an4_base_name(args.epochs), ov)


def an4_base_name(epochs):
    """``an4_base`` at the plan's budget, ``an4_base_e<N>`` at another one."""
    return "an4_base" if epochs == AN4_EPOCHS else f"an4_base_e{epochs}"


def base_name(init, age_group=None, tag=None):
    return "base_" + init + (f"_{age_group}" if age_group else "") + (f"_{tag}" if tag else "")


def cmd_base(args):
    """A speechocean762 base: joint training on the training speakers, from scratch or from AN4."""
    root = corpus_root("SBMETA_SPEECHOCEAN762_ROOT")
    ov = dict(BASE, data_folder=root, prepare_folder=manifests(), number_of_epochs=args.epochs,
              train_age_group=args.age_group)
    if args.init == "an4":
        an4 = OUT / an4_base_name(args.an4_epochs) / "pretrained"
        if not (an4 / "sbmeta.json").is_file():
            raise SystemExit(f"study: no AN4 base in {an4}; run `study.py an4-base --epochs {args.an4_epochs}` first")
        ov["init_from"] = an4
    ov.update(_pairs(args.set))
    return train("SpeechOcean762", "crdnn_ctc_meta.yaml", OUT / "base" / base_name(args.init, args.age_group, args.tag),
                 ov)


#: meta-training from the adaptation base: 4 speakers x (4 support + 4 query) per outer step, Adam
#: 5e-4 without warm-up, a validation every 50 outer steps; one inner step at 0.05 for the MAML
#: family, two for Reptile (one on the support and one on the query batch)
META = {"meta_strategy": None, "plain_batches": False, "train_augmentation": False, "lr": 0.0005,
        "warmup_steps": 0, "meta_batch_tasks": 4, "k_support": 4, "k_query": 4, "inner_steps": 1,
        "inner_lr": 0.05, "episodes_per_epoch": 50, "train_budget_clock": "cpu", "ckpt_interval_minutes": 10}
META_STRATEGY = {"reptile": {"inner_steps": 2}}


def meta_overrides(strategy):
    """The recipe settings of one meta-trained initialisation: the base's, the meta-training's,
    then the strategy's own (which win).

    >>> meta_overrides("reptile")["inner_steps"], meta_overrides("fomaml")["inner_steps"]
    (2, 1)
    """
    return {**BASE, **META, **META_STRATEGY.get(strategy, {}), "meta_strategy": strategy}


def cmd_meta(args):
    """Initialisations meta-trained from the adaptation base, the same number of outer steps each."""
    root = corpus_root("SBMETA_SPEECHOCEAN762_ROOT")
    base = model_folder(args.base)
    if not (base / "sbmeta.json").is_file():
        raise SystemExit(f"study: no base {base}")
    if args.steps % META["episodes_per_epoch"]:
        raise SystemExit(f"study: --steps must be a multiple of {META['episodes_per_epoch']} (one epoch)")
    records = {}
    for strategy in args.strategies.split(","):
        ov = meta_overrides(strategy)
        ov.update(data_folder=root, prepare_folder=manifests(), init_from=base,
                  number_of_epochs=args.steps // META["episodes_per_epoch"])
        ov.update(_pairs(args.set))
        name = strategy + (f"_{args.tag}" if args.tag else "")
        records[strategy] = train("SpeechOcean762", "crdnn_ctc_meta.yaml", OUT / "meta" / name, ov)
    return records


def _pairs(items):
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key] = value
    return out


# --------------------------------------------------------------------- adaptation methods
def _candidates(family, steps_list, lrs, **restriction):
    return [dict({"name": f"{family}_lr{lr:g}_s{s}", "strategy": "finetune", "lr": lr, "steps": s}, **restriction)
            for s in steps_list for lr in lrs]


ADAPTER_LRS = (0.05, 0.5, 2.0)  # a fresh LHUC scale, LoRA factor or layer-norm gain needs larger steps
STEPS = (3, 10)
#: the test-time adaptation families of the speaker study; within each, the step size and the
#: number of steps are chosen on the dev speakers
FAMILIES = {
    "full": _candidates("full", STEPS, (0.005, 0.02, 0.05)),
    "head": _candidates("head", STEPS, (0.05, 0.2, 1.0), adapt_params=["ctc_lin.*"]),
    "lhuc": _candidates("lhuc", STEPS, ADAPTER_LRS, addons=["lhuc"]),
    "lora": _candidates("lora", STEPS, ADAPTER_LRS, addons=["lora"]),
    "norm": _candidates("norm", STEPS, ADAPTER_LRS, adapt_params=["enc.CNN.*norm*"]),
}
DECODERS = ("greedy", "lexicon")


def family_grid(family, name):
    """A family's candidates; ``init`` (how each initialisation is adapted) is the ``full``
    family plus, for a model carrying meta-learned state (Meta-SGD's step sizes, Meta-LSTM's
    learned optimizer), that state's own update at 3 and 10 steps."""
    if family != "init":
        return FAMILIES[family]
    grid = [dict(c, name=c["name"].replace("full_", "init_")) for c in FAMILIES["full"]]
    info = stamp(name)
    own = (info.get("meta_state") or {}).get("strategy")
    if own:
        grid += [{"name": f"init_{own}_s{s}", "strategy": own, "steps": s} for s in STEPS]
    return grid


def model_folder(name):
    """``base_*``: a base; ``an4_base*``: an AN4 model; anything else: a model meta-trained from the base."""
    if name.startswith("an4_base"):
        return OUT / name / "pretrained"
    if name.startswith("base_"):
        return OUT / "base" / name / "pretrained"
    return OUT / "meta" / name / "pretrained"


def load(name, decoder):
    """A trained model, decoding greedily or over the training speakers' words (nothing of dev or test)."""
    from sb_meta.adapt import load_model

    folder = model_folder(name)
    if not (folder / "sbmeta.json").is_file():
        raise SystemExit(f"study: no model {folder}; train it first")
    model = load_model(folder)
    if decoder == "lexicon":
        model.set_lexicon(manifests() / "train.csv")
    return model


def stamp(name):
    """What identifies a trained model: its export's metadata (written once per export)."""
    return json.loads((model_folder(name) / "sbmeta.json").read_text())


def cmd_score(args):
    """Speaker-independent test (and dev) WER of each model, per age group."""
    from sb_meta.data.manifest import read_manifest
    from sb_meta.evaluation import error_rates

    out = {}
    for name in args.models.split(","):
        for decoder in args.decoders.split(","):
            model = load(name, decoder)
            t0 = time.process_time()
            for split in ("dev", "test"):
                rows = read_manifest(manifests() / f"{split}.csv")
                hyps = model.transcribe_waveforms([model.load_audio(r["wav"]) for r in rows])
                entry = {}
                for group in ("all", "child", "adult"):
                    sel = [i for i, r in enumerate(rows) if group == "all" or r["age_group"] == group]
                    wer, cer = error_rates([hyps[i] for i in sel], [rows[i]["wrd"] for i in sel])
                    entry[group] = {"wer": wer, "cer": cer, "utterances": len(sel)}
                out.setdefault(name, {}).setdefault(decoder, {})[split] = entry
            out[name][decoder]["cpu_seconds"] = round(time.process_time() - t0, 1)
            say(f"{name} {decoder}: test WER {out[name][decoder]['test']['all']['wer']:.2f} "
                f"(children {out[name][decoder]['test']['child']['wer']:.2f}, "
                f"adults {out[name][decoder]['test']['adult']['wer']:.2f})")
        write_json(OUT / "score" / f"{name}.json", dict(out[name], model=stamp(name), machine=machine(),
                                                        command=_command(args)))
    return out


def _command(args):
    return "python studies/speechocean762/study.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def selection_path(name, family, decoder, group=None):
    return OUT / "select" / decoder / (name + (f"@{group}" if group else "")) / f"{family}.json"


def speakers(split, group=None):
    """The speakers of a split, or of one age group of it."""
    from sb_meta.data.manifest import read_manifest

    return sorted({r["spk_id"] for r in read_manifest(manifests() / f"{split}.csv")
                   if group is None or r["age_group"] == group})


def cmd_select(args):
    """Each family's step size and steps chosen on the dev speakers (k = 5, 2 draws)."""
    from sb_meta.evaluation import select_on_dev

    for name in args.models.split(","):
        model = None
        for family in args.families.split(","):
            path = selection_path(name, family, args.decoder, args.age_group)
            grid = family_grid(family, name)
            if path.is_file():
                rec = json.loads(path.read_text())
                if rec.get("grid") == grid and rec.get("model") == stamp(name):
                    say(f"reusing {path}")
                    continue
            model = model or load(name, args.decoder)
            t0 = time.process_time()
            dev = speakers("dev", args.age_group)
            method, rec = select_on_dev(model, manifests() / "dev.csv", grid, k=5, repeats=args.repeats,
                                        progress=args.progress, seed=0, tasks=dev)
            rec.update(grid=grid, model=stamp(name), cpu_seconds=round(time.process_time() - t0, 1),
                       adaptations=len(grid) * len(dev) * args.repeats, age_group=args.age_group,
                       machine=machine(), command=_command(args))
            write_json(path, rec)
            say(f"{name} {family}: chose {method.name} on dev "
                f"({rec['candidates'][method.name]['dev_wer']:.2f}% against {rec['unadapted_dev_wer']:.2f}% unadapted)")


def chosen(name, family, decoder, group=None):
    """The dev-chosen method of ``family`` for model ``name``, named after its family."""
    from sb_meta.evaluation import Method

    path = selection_path(name, family, decoder, group)
    if not path.is_file():
        raise SystemExit(f"study: no dev choice {path}; run `study.py select --models {name} --families {family}`")
    rec = json.loads(path.read_text())
    if rec.get("model") != stamp(name):
        raise SystemExit(f"study: {path} was chosen for another export of {name}; select again")
    c = dict(rec["candidates"][rec["chosen"]])
    c = {k: v for k, v in c.items() if k not in ("dev_wer", "failed")}
    return Method(**dict(c, name=family)), rec


def eval_folder(name, label, decoder):
    return OUT / "eval" / decoder / name / label


def cmd_evaluate(args):
    """The k-shot protocol on the 125 test speakers (or one shard of them) with the dev choices."""
    from sb_meta.evaluation import evaluate_kshot, merge_results, write_report

    ks = [int(k) for k in args.ks.split(",")]
    index, count = (int(x) for x in args.shard.split("/"))
    mine = speakers("test", args.age_group)[index::count]
    for name in args.models.split(","):
        methods = [chosen(name, f, args.decoder, args.age_group)[0] for f in args.families.split(",")]
        folder = eval_folder(name, args.label, args.decoder)
        key = {"model": stamp(name), "methods": [m.as_dict() for m in methods], "ks": ks,
               "repeats": args.repeats, "seed": args.seed}
        part_path = folder / "parts" / f"{index}of{count}.json"
        if part_path.is_file() and json.loads(part_path.read_text())["key"] == key:
            say(f"reusing {part_path}")
        else:
            model = load(name, args.decoder)
            t0 = time.process_time()
            res = evaluate_kshot(model, manifests() / "test.csv", ks=ks, repeats=args.repeats, methods=methods,
                                 seed=args.seed, tasks=mine, progress=args.progress)
            cpu = time.process_time() - t0
            adaptations = sum(len(d["adapted"]) for d in res["draws"])
            write_json(part_path, {"key": key, "results": res, "cpu_seconds": round(cpu, 1),
                                   "adaptations": adaptations, "machine": machine(), "command": _command(args)})
            say(f"{name} {args.label} shard {index}/{count}: {adaptations} adaptations in {cpu / 60:.1f} CPU-min "
                f"({adaptations / max(cpu / 60, 1e-9):.1f} per CPU-minute)")
        parts = [folder / "parts" / f"{i}of{count}.json" for i in range(count)]
        if all(p.is_file() for p in parts):
            loaded = [json.loads(p.read_text()) for p in parts]
            if all(p["key"] == key for p in loaded):
                merged = merge_results([p["results"] for p in loaded])
                cpu = sum(p["cpu_seconds"] for p in loaded)
                n = sum(p["adaptations"] for p in loaded)
                merged["config"]["selection"] = {f: chosen(name, f, args.decoder, args.age_group)[1]["candidates"]
                                                 for f in args.families.split(",")}
                merged["cost"] = {"cpu_seconds": cpu, "adaptations": n,
                                  "adaptations_per_cpu_minute": round(n / max(cpu / 60, 1e-9), 2),
                                  "shards": count}
                write_report(merged, folder)
                s = merged["summary"]
                for m in s:
                    if "5" in s[m]:
                        e = s[m]["5"]
                        say(f"{name} {m} k=5: {e['base_wer_mean']:.2f} -> {e['wer_mean']:.2f} "
                            f"({100 * e['relative']:+.1f}% [{100 * e['relative_ci'][0]:+.1f}, "
                            f"{100 * e['relative_ci'][1]:+.1f}]), {len(e['worse_tasks'])}/{e['tasks']} worse")


# --------------------------------------------------------------------- children
#: domain adaptation of the adults-only base from child utterances of the training speakers:
#: epochs over them in batches of 8 at a step size, both chosen on the dev children
CHILD_N = (20, 50, 100)
CHILD_DRAWS = 3
CHILD_GRID = [{"name": f"ep{e}_lr{lr:g}", "epochs": e, "lr": lr} for e in (1, 3) for lr in (0.002, 0.01, 0.05)]
#: the same utterances without their transcripts
UNSUPERVISED = [{"name": "cmvn", "unsupervised": "cmvn"},
                {"name": "entropy", "unsupervised": "entropy", "epochs": 1, "lr": 0.002},
                {"name": "pseudo", "unsupervised": "pseudo", "epochs": 1, "lr": 0.01}]


def child_rows(split):
    from sb_meta.data.manifest import read_manifest

    return [r for r in read_manifest(manifests() / f"{split}.csv") if r["age_group"] == "child"]


def child_draw(n, draw):
    """``n`` transcribed child utterances of the training speakers (never dev or test)."""
    import random

    rows = child_rows("train")
    return random.Random(f"child-{n}-{draw}").sample(rows, n)


def adapt_to_children(model, rows, cand):
    """The model adapted on ``rows`` (transcripts unused for an unsupervised candidate)."""
    import math

    wavs = [model.load_audio(r["wav"]) for r in rows]
    batches = math.ceil(len(rows) / 8)
    steps = max(1, batches * cand.get("epochs", 1))
    from sb_meta.adapt import Method, Support

    unsup = cand.get("unsupervised")  # a test-time method that reads no transcript
    texts = None if unsup else [r["wrd"] for r in rows]
    method = Method(strategy="finetune", steps=steps, lr=cand.get("lr"), batch_size=8,
                    addons=[unsup] if unsup else [])
    return model.adapt(Support(wavs, texts, [r["ID"] for r in rows], "children"), method)


def per_speaker_wer(model, rows):
    """``{speaker: WER}`` over each speaker's utterances, and the WER of all of them."""
    from sb_meta.evaluation import error_rates

    hyps = model.transcribe_waveforms([model.load_audio(r["wav"]) for r in rows])
    by = {}
    for r, h in zip(rows, hyps):
        by.setdefault(r["spk_id"], ([], []))
        by[r["spk_id"]][0].append(h)
        by[r["spk_id"]][1].append(r["wrd"])
    return ({s: error_rates(h, ref)[0] for s, (h, ref) in by.items()},
            error_rates(hyps, [r["wrd"] for r in rows])[0])


def child_gap_reference(model, decoder):
    """The base trained with the training children that the adults-only ``model`` is measured
    against (its name without ``_adult``), and that base's test-children WER from its score, or
    None before it is scored."""
    reference = model.replace("_adult", "", 1)
    score = _score(reference)
    if reference == model or score is None or decoder not in score:
        return reference, None
    return reference, score[decoder]["test"]["child"]["wer"]


def gap_share(adult_wer, adapted_wer, with_children_wer):
    """The share of the adult-to-child gap won back: ``(adult - adapted) / (adult - with_children)``;
    None without a reference or a gap.

    >>> round(gap_share(84.0, 81.0, 72.0), 2)
    0.25
    >>> gap_share(84.0, 81.0, None) is None
    True
    """
    if with_children_wer is None or adult_wer <= with_children_wer:
        return None
    return (adult_wer - adapted_wer) / (adult_wer - with_children_wer)


def cmd_children(args):
    """Domain adaptation of the adults-only base: from N transcribed child utterances, and from
    the same audio without transcripts; each setting chosen on the dev children."""
    from sb_meta.evaluation import summarize_paired

    model = load(args.model, args.decoder)
    folder = OUT / "children" / args.decoder / args.model
    dev, test = child_rows("dev"), child_rows("test")
    _, dev_base = per_speaker_wer(model, dev)
    test_spk, test_base = per_speaker_wer(model, test)
    results = {"model": stamp(args.model), "dev_unadapted": dev_base, "test_unadapted": test_base,
               "test_unadapted_per_speaker": test_spk, "settings": {}, "command": _command(args),
               "machine": machine()}
    # the targets' settings first (50 transcribed, 100 untranscribed), so a run cut short by its
    # budget has measured them; each setting is kept as it finishes and reused by the next run
    settings = [(f"supervised_{n}", n, CHILD_GRID) for n in sorted(CHILD_N, key=lambda n: n != 50)]
    settings.insert(1, ("unsupervised_100", 100, UNSUPERVISED))
    for label, n, grid in settings:
        path = folder / f"{label}.json"
        if path.is_file() and json.loads(path.read_text()).get("model") == stamp(args.model):
            results["settings"][label] = json.loads(path.read_text())
            say(f"reusing {path}")
            continue
        t0 = time.process_time()
        dev_wer = {}
        for cand in grid:  # chosen on the dev children, draw 0 of the utterances
            dev_wer[cand["name"]] = per_speaker_wer(adapt_to_children(model, child_draw(n, 0), cand), dev)[1]
        best = min(dev_wer, key=dev_wer.get)
        cand = next(c for c in grid if c["name"] == best)
        draws = []
        for d in range(CHILD_DRAWS):
            spk, wer = per_speaker_wer(adapt_to_children(model, child_draw(n, d), cand), test)
            draws.append({"draw": d, "test_wer": wer, "per_speaker": spk})
        base = {s: [test_spk[s]] * CHILD_DRAWS for s in test_spk}
        other = {s: [dr["per_speaker"][s] for dr in draws] for s in test_spk}
        rec = {"model": stamp(args.model), "n": n, "dev_wer": dev_wer, "dev_unadapted": dev_base, "chosen": cand,
               "draws": draws, "paired": summarize_paired(base, other), "cpu_seconds": round(time.process_time() - t0, 1)}
        write_json(path, rec)
        results["settings"][label] = rec
        p = rec["paired"]
        say(f"{label}: chose {best} on dev; test children {test_base:.2f} -> "
            f"{sum(dr['test_wer'] for dr in draws) / len(draws):.2f} ({100 * p['relative']:+.1f}% "
            f"[{100 * p['relative_ci'][0]:+.1f}, {100 * p['relative_ci'][1]:+.1f}])")
    write_json(folder / "results.json", results)
    return results


#: speed perturbation of adult speech as a child proxy: the adults-only base fine-tuned on adult
#: speech sped up by 5-20% (pitch and formants rise with it) against the same fine-tuning at
#: the recipe's usual speeds
PERTURB = {"child_proxy": [105, 110, 115, 120], "control": [95, 100, 105]}
PERTURB_EPOCHS = 4


def cmd_perturb(args):
    """The adults-only base fine-tuned on perturbed adult speech, and its control."""
    root = corpus_root("SBMETA_SPEECHOCEAN762_ROOT")
    base = model_folder(args.base)
    records = {}
    for name, speeds in PERTURB.items():
        ov = dict(BASE, data_folder=root, prepare_folder=manifests(), init_from=base, train_age_group="adult",
                  number_of_epochs=PERTURB_EPOCHS, lr=0.0005, warmup_steps=0, perturb_speeds=speeds)
        records[name] = train("SpeechOcean762", "crdnn_ctc_meta.yaml", OUT / "base" / f"{args.base}_{name}", ov)
    return records


#: domain-adversarial fine-tuning from untranscribed child audio: the adults-only base on
#: adult speech plus 100 untranscribed training-child utterances, dann on age_group (two
#: weights, chosen on the dev children); its control is perturb's (the same fine-tuning on
#: adult speech alone)
DANN_WEIGHTS = (0.1, 1.0)


def cmd_dann(args):
    root = corpus_root("SBMETA_SPEECHOCEAN762_ROOT")
    base = model_folder(args.base)
    records = {}
    for w in DANN_WEIGHTS:
        ov = dict(BASE, data_folder=root, prepare_folder=manifests(), init_from=base, train_age_group="adult",
                  number_of_epochs=PERTURB_EPOCHS, lr=0.0005, warmup_steps=0, untranscribed_children=100,
                  meta_addons=["dann"], dann_column="age_group", dann_weight=w)
        records[w] = train("SpeechOcean762", "crdnn_ctc_meta.yaml", OUT / "base" / f"{args.base}_dann{w:g}", ov)
    return records


# --------------------------------------------------------------------- report
def _pct(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def _rel(entry):
    lo, hi = entry["relative_ci"]
    return f"{100 * entry['relative']:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"


# A new machine keeps the repository, not results/so762/: the report reads each result from
# results/so762/ when this machine has it, else from the copy committed under docs/.
def _records():
    """``[(name, record, train_log folder or None)]`` of every trained base: those in
    results/so762/ and, by name, the committed ones (``docs/.../records/<name>.json``) it lacks."""
    out = {}
    for rec_path in sorted((DOCS / "records").glob("*.json")):
        if rec_path.stem.startswith(("an4_base", "base_")):
            out[rec_path.stem] = (json.loads(rec_path.read_text()), None)
    for folder in sorted(OUT.glob("an4_base*")) + sorted((OUT / "base").glob("base_*")):
        # a link (an old name pointing at a rebuilt model) is not a run of its own
        if (folder / "record.json").is_file() and not folder.is_symlink():
            out[folder.name] = (json.loads((folder / "record.json").read_text()), folder)
    return [(name, *out[name]) for name in sorted(out)]


def _score(name):
    """A model's ``score`` record from results/so762/, else the committed one, else None."""
    for path in (OUT / "score" / f"{name}.json", DOCS / "records" / f"score_{name}.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _evaluations(decoder):
    """``{(model, label): folder}`` of the finished evaluations: results/so762/'s, and the
    committed copies (``docs/.../<label>[_greedy]/<model>/``) of those it lacks."""
    suffix = "" if decoder == "lexicon" else f"_{decoder}"  # the lexicon decoder's folders have none
    not_lexicon = tuple(f"_{d}" for d in DECODERS if d != "lexicon")
    found = {}
    for path in sorted(DOCS.glob("*/*/results.json")):
        label = path.parent.parent.name
        mine = label.endswith(suffix) if suffix else not label.endswith(not_lexicon)
        if label in ("children", "records") or not mine:
            continue
        found[(path.parent.name, label[: len(label) - len(suffix)])] = path.parent
    for path in sorted((OUT / "eval" / decoder).glob("*/*/results.json")):
        found[(path.parent.parent.name, path.parent.name)] = path.parent
    return found


def _children_results():
    """``{(decoder, model): results.json}`` of the children's study, results/so762/'s or committed."""
    found = {}
    for path in sorted((DOCS / "children").glob("*.json")):
        name, _, decoder = path.stem.rpartition("_")
        if decoder in DECODERS:
            found[(decoder, name)] = path
    for path in sorted((OUT / "children").glob("*/*/results.json")):
        found[(path.parent.parent.name, path.parent.name)] = path
    return found


def _bases_table():
    lines = ["| model | initialised from | epochs | optimizer steps | training CPU-min | best dev WER (greedy) "
             "| test WER greedy: all / children / adults | test WER lexicon: all / children / adults |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rec, _ in _records():
        epochs = [ln for ln in rec["train_log"] if ln.startswith("epoch:")]
        import re

        devs = [float(m.group(1)) for ln in epochs if (m := re.search(r"valid WER: ([0-9.e+-]+)", ln))]
        steps = rec.get("optimizer_steps") or rec.get("optimizer_steps_kept_checkpoint")
        sc = _score(name)
        cells = {"greedy": "-", "lexicon": "-"}
        if sc is not None:
            for d in cells:
                if d in sc:
                    s = sc[d]["test"]
                    cells[d] = " / ".join(_pct(s[g]["wer"]) for g in ("all", "child", "adult"))
        an4 = re.search(r"--init_from=\S*/(an4_base\w*)/pretrained", rec["command"])
        init = f"AN4 (`{an4.group(1)}`)" if an4 else "random weights"
        if name.startswith("an4_base"):
            cells = {d: f"AN4 test: {_pct(rec['test']['wer'])}" if d == "greedy" else "-" for d in cells}
        lines.append(f"| `{name}` | {init} | {rec['epochs']} | {steps} | {_pct(rec.get('train_minutes', rec.get('train_cpu_minutes')))} "
                     f"| {_pct(min(devs) if devs else None)} | {cells['greedy']} | {cells['lexicon']} |")
    return "\n".join(lines)


def _curve(folder, lines=None):
    """``(epoch, optimizer steps, dev WER, dev CER)`` per epoch from a run's ``train_log.txt``
    (or from ``lines``, a record's ``train_log``)."""
    import re

    if lines is None:
        log = pathlib.Path(folder) / "train_log.txt"
        lines = log.read_text().splitlines() if log.is_file() else []
    pts = []
    for ln in lines:
        m = re.search(r"epoch: (\d+).*train steps: (\d+).*valid WER: ([0-9.e+-]+), valid CER: ([0-9.e+-]+)", ln)
        if m:
            pts.append((int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4))))
    return pts


def _unfinished_table():
    """Bases whose training has not finished: where each stopped (resumable by its own command)."""
    import re

    lines = []
    for folder in sorted((OUT / "base").glob("base_*")):
        if (folder / "record.json").is_file() or not _curve(folder):
            continue
        epoch, steps, wer, cer = _curve(folder)[-1]
        command = (folder / "command.txt").read_text().strip() if (folder / "command.txt").is_file() else "?"
        planned = re.search(r"number_of_epochs=(\d+)", command)
        lines.append(f"| `{folder.name}` | {epoch} of {planned.group(1) if planned else '?'} | {steps} "
                     f"| {wer:.2f} | {cer:.2f} |")
    if not lines:
        return ""
    return "\n".join(["| unfinished base | epochs done | optimizer steps | last dev WER | last dev CER |",
                      "|---|---|---|---|---|"] + lines)


def _plot_curves(path):
    """Dev WER and CER of every speechocean762 base against its optimizer steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    runs = [(name, folder, rec.get("train_log")) for name, rec, folder in _records() if name.startswith("base_")]
    runs += [(f.name, f, None) for f in sorted((OUT / "base").glob("base_*")) if not (f / "record.json").is_file()]
    for name, folder, lines in runs:
        pts = _curve(folder, None if folder is not None else lines)
        if not pts:
            continue
        line = ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", markersize=3, label=f"{name} WER")
        ax.plot([p[1] for p in pts], [p[3] for p in pts], linestyle="--", color=line[0].get_color(), alpha=0.6,
                label=f"{name} CER")
        drawn = True
    if not drawn:
        return False
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("dev error rate (%), greedy")
    ax.set_ylim(0, 105)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("speechocean762 bases: the 16 dev speakers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _eval_table(results, families=None):
    lines = ["| method | chosen on dev | k | unadapted -> adapted WER | relative [95% CI] | worse speakers |",
             "|---|---|---|---|---|---|"]
    sel = results["config"].get("selection", {})
    for m, by_k in results["summary"].items():
        if families and m not in families:
            continue
        for k in sorted(by_k, key=int):
            if int(k) == 0:
                continue
            e = by_k[k]
            choice = sel.get(m, {})
            chosen_name = next((n for n, c in choice.items() if c.get("dev_wer") == min(
                (c2["dev_wer"] for c2 in choice.values() if c2.get("dev_wer") is not None and not c2.get("failed")),
                default=None)), "-")
            lines.append(f"| {m} | {chosen_name} | {k} | {e['base_wer_mean']:.2f} -> {e['wer_mean']:.2f} | {_rel(e)} "
                         f"| {len(e['worse_tasks'])}/{e['tasks']} |")
    return "\n".join(lines)


#: each evaluation label of meta-trained initialisations and the one they are paired against (the
#: second pair was trained from the rebuilt base, so it is never mixed with the first)
INIT_PAIRS = (("init_k5", "joint"), ("init_k5_rb", "joint_rb"))


def _by_draw(results):
    """``(task, k, repeat) -> draw`` of one evaluation."""
    return {(d["task"], d["k"], d["repeat"]): d for d in results["draws"]}


def _draw_wer(draw):
    """The draw's WER after its one method's adaptation, or unadapted at k = 0."""
    if not draw["adapted"]:
        return draw["unadapted"]["wer"]
    (only,) = draw["adapted"].values()
    return only["wer"]


def paired_against(label, reference, decoder="lexicon"):
    """Every model evaluated under ``label`` paired with ``reference`` draw by draw.

    Both evaluations must have used the same support and query utterances (the
    protocol's seed); the comparison at each k is the adapted WER of the model
    against the adapted WER of ``reference`` (unadapted at k = 0), bootstrapped
    over speakers and draws as the protocol's own paired statistics.

    Returns
    -------
    dict
        ``model -> k -> summarize_paired(reference, model)``; empty while the
        reference is not evaluated.
    """
    from sb_meta.evaluation import summarize_paired

    evaluations = {name: folder for (name, lab), folder in _evaluations(decoder).items() if lab == label}
    if reference not in evaluations:
        return {}
    ref = _by_draw(json.loads((evaluations[reference] / "results.json").read_text()))
    out = {}
    for name, folder in sorted(evaluations.items()):
        if name == reference:
            continue
        mine = _by_draw(json.loads((folder / "results.json").read_text()))
        if set(mine) != set(ref) or any(mine[key]["support"] != ref[key]["support"]
                                        or mine[key]["query"] != ref[key]["query"] for key in ref):
            raise SystemExit(f"study: {name} and {reference} under {label} were not evaluated on the same draws")
        out[name] = {}
        for k in sorted({key[1] for key in ref}):
            base, other = {}, {}
            for key in sorted(key for key in ref if key[1] == k):
                base.setdefault(key[0], []).append(_draw_wer(ref[key]))
                other.setdefault(key[0], []).append(_draw_wer(mine[key]))
            out[name][str(k)] = summarize_paired(base, other)
    return out


def _paired_table(paired, reference):
    lines = [f"| initialisation | k | `{reference}` -> this WER | relative to `{reference}` [95% CI] "
             f"| speakers worse than `{reference}` |", "|---|---|---|---|---|"]
    for name, by_k in paired.items():
        for k, e in sorted(by_k.items(), key=lambda kv: int(kv[0])):
            lines.append(f"| `{name}` | {k} | {e['base_mean']:.2f} -> {e['mean']:.2f} | {_rel(e)} "
                         f"| {len(e['worse_tasks'])}/{e['tasks']} |")
    return "\n".join(lines)


def cmd_report(args):
    """Copy each finished evaluation into docs/studies/speechocean762/ and write report.md
    (the studies' generated page, as for the other studies), with a table of contents of the
    copied evaluation reports so that the documentation site builds them."""
    import shutil

    DOCS.mkdir(parents=True, exist_ok=True)
    parts = ["# speechocean762: generated tables", "",
             "Written by `python studies/speechocean762/study.py report` from `results/so762/` and, for what "
             "that folder lacks (a machine keeps only its own runs), the results committed beside this page.", "",
             "## Bases", "", _bases_table(), "", _unfinished_table(), ""]
    if _plot_curves(DOCS / "bases_dev_curve.png"):
        parts += ["![dev WER and CER of the bases against optimizer steps](bases_dev_curve.png)", ""]
    copied = []
    for decoder in DECODERS:
        for (name, label), source in sorted(_evaluations(decoder).items()):
            results = json.loads((source / "results.json").read_text())
            target = DOCS / (label if decoder == "lexicon" else f"{label}_{decoder}") / name
            target.mkdir(parents=True, exist_ok=True)
            for f in ("results.json", "report.md", "wer_vs_k.png", "per_task.png"):
                if (source / f).is_file() and source.resolve() != target.resolve():
                    shutil.copyfile(source / f, target / f)
            if (target / "report.md").is_file():
                copied.append(f"{target.relative_to(DOCS)}/report")
            cost = results.get("cost", {})
            parts += [f"## {label}: `{name}`, {decoder} decoding", "",
                      f"{len(results['tasks'])} test speakers, {results['config']['repeats']} draws; "
                      f"{cost.get('adaptations', '?')} adaptations, {cost.get('adaptations_per_cpu_minute', '?')} "
                      f"per CPU-minute. Folder: `{target.relative_to(DOCS)}/`.", "",
                      _eval_table(results), ""]
    for label, reference in INIT_PAIRS:
        paired = paired_against(label, reference)
        if not paired:
            continue
        write_json(DOCS / label / f"paired_against_{reference}.json", paired)
        parts += [f"## {label}: initialisations against `{reference}`, lexicon decoding", "",
                  f"Each initialisation adapted with its own dev choice of the `init` family, paired with "
                  f"`{reference}` on the same draws (k = 0: neither adapted). Positive: better than "
                  f"`{reference}`. File: `{label}/paired_against_{reference}.json`.", "",
                  _paired_table(paired, reference), ""]
    for (decoder, name), path in sorted(_children_results().items()):
        res = json.loads(path.read_text())
        reference, with_children = child_gap_reference(name, decoder)
        gap = "" if with_children is None else (
            f" `{reference}`, trained with the training children too: {with_children:.2f}; the gap is "
            f"{res['test_unadapted'] - with_children:.2f} points.")
        parts += [f"## Children: `{name}`, {decoder} decoding", "",
                  f"Unadapted: dev children {res['dev_unadapted']:.2f}, test children {res['test_unadapted']:.2f}.{gap}",
                  "", "| setting | chosen on dev children | test children WER (mean of draws) | relative [95% CI] "
                  "| worse | share of the gap won back |", "|---|---|---|---|---|---|"]
        for label, rec in res["settings"].items():
            mean = sum(d["test_wer"] for d in rec["draws"]) / len(rec["draws"])
            p = rec["paired"]
            share = gap_share(res["test_unadapted"], mean, with_children)
            parts.append(f"| {label} | {rec['chosen']['name']} | {mean:.2f} | {_rel(p)} "
                         f"| {len(p['worse_tasks'])}/{p['tasks']} | {'-' if share is None else f'{100 * share:.0f}%'} |")
        parts.append("")
        target = DOCS / "children" / f"{name}_{decoder}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.resolve() != target.resolve():
            shutil.copyfile(path, target)
    if copied:
        parts += ["## Each evaluation's report", "", "```{toctree}", ":maxdepth: 1", ""] + copied + ["```", ""]
    (DOCS / "report.md").write_text("\n".join(parts) + "\n")
    say(f"wrote {DOCS / 'report.md'}")


# --------------------------------------------------------------------- commands
def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("an4-base", help="the AN4 base that --init an4 starts from")
    a.add_argument("--epochs", type=int, default=AN4_EPOCHS)
    b = sub.add_parser("base", help="a speechocean762 base")
    b.add_argument("--init", choices=("scratch", "an4"), required=True)
    b.add_argument("--epochs", type=int, required=True)
    b.add_argument("--an4-epochs", type=int, default=AN4_EPOCHS, help="the AN4 base's budget (--init an4)")
    b.add_argument("--age-group", choices=("adult", "child"), default=None)
    b.add_argument("--tag", default=None)
    b.add_argument("--set", action="append", help="more recipe overrides, key=value")
    m = sub.add_parser("meta", help="initialisations meta-trained from the adaptation base")
    m.add_argument("--strategies", required=True)
    m.add_argument("--steps", type=int, required=True, help="outer steps (a multiple of 50)")
    m.add_argument("--base", default="base_an4")
    m.add_argument("--tag", default=None)
    m.add_argument("--set", action="append", help="more recipe overrides, key=value")
    c = sub.add_parser("children", help="domain adaptation of the adults-only base to children")
    c.add_argument("--model", default="base_an4_adult")
    c.add_argument("--decoder", choices=("greedy", "lexicon"), default="lexicon")
    pp = sub.add_parser("perturb", help="the adults-only base fine-tuned on sped-up adult speech, and a control")
    pp.add_argument("--base", default="base_an4_adult")
    dn = sub.add_parser("dann", help="the adults-only base fine-tuned with dann on untranscribed child audio")
    dn.add_argument("--base", default="base_an4_adult")
    sub.add_parser("report", help="docs/studies/speechocean762/: the finished evaluations and report.md")
    s = sub.add_parser("score", help="speaker-independent WER per age group")
    s.add_argument("--models", required=True)
    s.add_argument("--decoders", default="greedy,lexicon")
    for name, helptext in (("select", "dev choices of each adaptation family"),
                           ("evaluate", "the k-shot protocol on the test speakers")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--models", required=True)
        c.add_argument("--families", default=",".join(FAMILIES))
        c.add_argument("--decoder", choices=DECODERS, default="lexicon")
        c.add_argument("--repeats", type=int, default=2)
        c.add_argument("--progress", action="store_true")
        c.add_argument("--age-group", choices=("child", "adult"), default=None,
                       help="only the dev (select) or test (evaluate) speakers of this age group")
    e = sub.choices["evaluate"]
    e.add_argument("--ks", default="0,5")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--label", default="speaker_k5", help="the evaluation's folder name")
    e.add_argument("--shard", default="0/1", help="i/n: this process evaluates every n-th test speaker from i")
    return p


COMMANDS = {"an4-base": cmd_an4_base, "base": cmd_base, "meta": cmd_meta, "children": cmd_children, "perturb": cmd_perturb, "dann": cmd_dann, "report": cmd_report, "score": cmd_score, "select": cmd_select,
            "evaluate": cmd_evaluate}


def main(argv=None):
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    main()
