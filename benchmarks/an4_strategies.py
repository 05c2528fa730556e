#!/usr/bin/env python
"""Every strategy meta-trains the AN4 recipe from the command line: does the loss fall?

Runs ``recipes/AN4/train.py`` once per strategy for ``--epochs`` epochs (one
epoch = one pass over the 68 training speakers, 17 episodes of 4 speakers) and
records the training loss of each epoch from SpeechBrain's train log, plus the
wall time. Results go to ``benchmarks/an4_strategies.json``.

    python benchmarks/an4_strategies.py --epochs 2
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
STRATEGIES = ["fomaml", "maml", "reptile", "metasgd", "anil", "joint", "finetune"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--out", default="results/an4_strategies")
    parser.add_argument("--json", default=str(HERE / "an4_strategies.json"))
    parser.add_argument("--an4-root", default=os.environ.get("SBMETA_AN4_ROOT"))
    args = parser.parse_args(argv)
    if not args.an4_root:
        parser.error("set SBMETA_AN4_ROOT or pass --an4-root")
    results = {
        "command": "python benchmarks/an4_strategies.py " + " ".join(argv or sys.argv[1:]),
        "epochs": args.epochs,
        "runs": {},
    }
    for strategy in args.strategies.split(","):
        out = pathlib.Path(args.out) / strategy
        cmd = [
            sys.executable, str(ROOT / "recipes/AN4/train.py"),
            str(ROOT / "recipes/AN4/hparams/crdnn_ctc_meta.yaml"),
            f"--data_folder={args.an4_root}", f"--output_folder={out}",
            f"--meta_strategy={strategy}", f"--number_of_epochs={args.epochs}", "--noprogressbar",
        ]
        start = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - start
        log = (out / "train_log.txt").read_text() if (out / "train_log.txt").is_file() else ""
        losses = [float(x) for x in re.findall(r"train loss: ([0-9.e+-]+)", log)]
        results["runs"][strategy] = {
            "exit_code": proc.returncode,
            "train_loss_per_epoch": losses,
            "loss_falls": len(losses) >= 2 and losses[-1] < losses[0],
            "wall_s": round(wall, 1),
            "error": proc.stderr[-1500:] if proc.returncode else None,
        }
        print(strategy, results["runs"][strategy]["train_loss_per_epoch"],
              f"{wall:.0f} s", "OK" if results["runs"][strategy]["loss_falls"] else "CHECK", flush=True)
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["loss_falls"] for r in results["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
