#!/usr/bin/env python
"""MAML vs FOMAML per task on the AN4 CRDNN, interleaved so machine load hits both alike.

    SBMETA_AN4_ROOT=... python benchmarks/maml_vs_fomaml.py [--rounds 4] [--threads 1]

Also times the alternatives MetaBrain.inner_loop_context was chosen against:
MAML with oneDNN disabled for the whole step, and with oneDNN disabled for the
whole inner loop (convolutions included) rather than in the RNN layers only.
"""

import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
import time

import torch
from hyperpyyaml import load_hyperpyyaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes" / "AN4"))
from an4_prepare import prepare_an4  # noqa: E402

from sb_meta.recipe import prepare_tokenizer  # noqa: E402
from sb_meta.utils import load_script  # noqa: E402

RECIPE = load_script(ROOT / "recipes" / "AN4" / "train.py", "sbmeta_maml_vs_fomaml_recipe")


def make(strategy, root, tmp):
    with open(ROOT / "recipes/AN4/hparams/crdnn_ctc_meta.yaml") as f:
        hp = load_hyperpyyaml(f, {"data_folder": root, "output_folder": tmp, "meta_strategy": strategy,
                                  "inner_steps": 1, "meta_batch_tasks": 1})
    prepare_tokenizer(hp, f"{tmp}/m/train.csv", tmp)
    ds = RECIPE.dataio_prepare(hp, {"train": f"{tmp}/m/train.csv"})
    brain = RECIPE.ASR(hp["modules"], hp["opt_class"], hp, run_opts={"device": "cpu"})
    brain.modules.train()
    return brain, next(iter(brain.make_episode_loader(ds["train"]))).tasks[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = os.environ["SBMETA_AN4_ROOT"]
    tmp = tempfile.mkdtemp()
    prepare_an4(root, f"{tmp}/m")
    fo, t1 = make("fomaml", root, tmp)
    ma, t2 = make("maml", root, tmp)

    def whole_inner_loop_off(create_graph):
        return torch.backends.mkldnn.flags(enabled=False) if create_graph else contextlib.nullcontext()

    def timed(brain, task, global_off=False, inner_off=False):
        ctx = torch.backends.mkldnn.flags(enabled=False) if global_off else contextlib.nullcontext()
        if inner_off:
            brain.inner_loop_context = whole_inner_loop_off
        try:
            with ctx:
                start = time.perf_counter()
                brain.strategy.task_backward(task, 1.0)
                return time.perf_counter() - start
        finally:
            brain.__dict__.pop("inner_loop_context", None)

    res = {"fomaml": [], "maml": [], "maml_onednn_off_in_whole_inner_loop": [],
           "maml_onednn_off_everywhere": []}
    for _ in range(args.rounds):
        res["fomaml"].append(timed(fo, t1))
        res["maml"].append(timed(ma, t2))
        res["maml_onednn_off_in_whole_inner_loop"].append(timed(ma, t2, inner_off=True))
        res["maml_onednn_off_everywhere"].append(timed(ma, t2, True))
    for name, values in res.items():
        print(f"{name:<36}" + " ".join(f"{v:.2f}" for v in values) + " s")
    med = {k: sorted(v[1:])[len(v[1:]) // 2] for k, v in res.items()}  # first round is warm-up
    for name in res:
        if name != "fomaml":
            print(f"median after warm-up: {name} / fomaml = {med[name] / med['fomaml']:.2f}")


if __name__ == "__main__":
    main()
