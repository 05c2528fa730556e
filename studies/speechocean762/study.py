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
they took: ``train_cpu_minutes`` is the training process's CPU time while it
trained (validation excluded), ``wall_minutes`` the whole command's wall clock.
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
OUT = REPO / "results" / "so762"
DOCS = REPO / "docs" / "studies" / "speechocean762"
RECIPES = REPO / "recipes"

#: the CRDNN-CTC settings of every base: the AN4 study's base (3.6M parameters, the CNN
#: pooling time by 4, ~24 s of audio per batch, Adam 2e-3, 200 warm-up steps then a cosine
#: over the planned steps, speed perturbation and SpecAugment-style masks)
BASE = {"meta_strategy": "joint", "plain_batches": True, "train_augmentation": True,
        "rnn_neurons": 256, "dnn_neurons": 256, "using_2d_pooling": True, "time_pooling": False,
        "lr": 0.002, "train_budget_clock": "cpu", "ckpt_interval_minutes": 10}
AN4_EPOCHS = 72


def say(msg):
    print(f"[so762 {datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def corpus_root(var):
    root = os.environ.get(var)
    if not root or not pathlib.Path(root).is_dir():
        raise SystemExit(f"study: set {var} to the corpus folder")
    return str(pathlib.Path(root).resolve())


def write_json(path, data):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def machine():
    import platform

    import torch

    return {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
            "affinity": sorted(os.sched_getaffinity(0)), "torch": torch.__version__}


def _argv(yaml, overrides):
    return [str(yaml)] + [f"--{k}={v}" if not isinstance(v, list) else f"--{k}=[{','.join(map(str, v))}]"
                          for k, v in overrides.items() if v is not None]


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
        f"{record['optimizer_steps']} steps, {record['train_cpu_minutes']} CPU-min")
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
        "train_cpu_minutes": round(brain.train_clock.cpu_seconds / 60, 2),
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
        "train_cpu_minutes": float(minutes.group(1)) if minutes else None,
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
    ov = dict(BASE, data_folder=root, number_of_epochs=AN4_EPOCHS, ckpt_interval_minutes=5)
    return train("AN4", "crdnn_ctc_meta.yaml", OUT / "an4_base", ov)


def base_name(init, age_group=None, tag=None):
    return "base_" + init + (f"_{age_group}" if age_group else "") + (f"_{tag}" if tag else "")


def cmd_base(args):
    """A speechocean762 base: joint training on the training speakers, from scratch or from AN4."""
    root = corpus_root("SBMETA_SPEECHOCEAN762_ROOT")
    ov = dict(BASE, data_folder=root, prepare_folder=manifests(), number_of_epochs=args.epochs,
              train_age_group=args.age_group)
    if args.init == "an4":
        an4 = OUT / "an4_base" / "pretrained"
        if not (an4 / "sbmeta.json").is_file():
            raise SystemExit(f"study: no AN4 base in {an4}; run `study.py an4-base` first")
        ov["init_from"] = an4
    ov.update(_pairs(args.set))
    return train("SpeechOcean762", "crdnn_ctc_meta.yaml", OUT / "base" / base_name(args.init, args.age_group, args.tag),
                 ov)


def _pairs(items):
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key] = value
    return out


# --------------------------------------------------------------------- commands
def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("an4-base", help="the AN4 base that --init an4 starts from")
    b = sub.add_parser("base", help="a speechocean762 base")
    b.add_argument("--init", choices=("scratch", "an4"), required=True)
    b.add_argument("--epochs", type=int, required=True)
    b.add_argument("--age-group", choices=("adult", "child"), default=None)
    b.add_argument("--tag", default=None)
    b.add_argument("--set", action="append", help="more recipe overrides, key=value")
    return p


COMMANDS = {"an4-base": cmd_an4_base, "base": cmd_base}


def main(argv=None):
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
