"""Pinned k-shot figures: the evaluation of a fixed model, corpus and seed.

The model is the tiny CTC recipe model of :func:`helpers.tiny_asr.exported_tiny_model`
(the AN4 recipe's brain, trained with a fixed seed for a few episodes on the
synthetic tone corpus, and exported); the test corpus is the tone corpus of
:func:`helpers.tiny_asr.make_corpus` with another fixed seed. :data:`METHODS` covers
a supervised method (``finetune``), an adapter add-on (``lora``), the
test-time methods without transcripts (``entropy``, ``pseudo``, ``cmvn``) and
a statistics-then-update method. ``tests/integration/test_pinned_kshot.py``
compares a fresh evaluation with ``tests/data/pinned_kshot.json``; a change
that is meant to change the figures regenerates that file with::

    python tests/helpers/pinned_kshot.py

and says why in its commit message.

The figures come from a tiny model trained and adapted here, which amplifies the
last bits of every floating-point sum: with the CPU's fastest kernels (AVX-512 on
one machine, AVX2 on another) they differ from machine to machine. So they are
computed in a process restricted to kernels every x86-64 CPU runs the same way
(:data:`PORTABLE_ENV`: one thread, PyTorch's unvectorised ATen kernels, MKL's
conditional numerical reproducibility, oneDNN at SSE4.1), by :func:`compute_portably`.
"""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIGURES = ROOT / "tests" / "data" / "pinned_kshot.json"

#: the methods evaluated, in the form :func:`sb_meta.evaluation.methods_from` reads
METHODS = [
    {"name": "finetune", "strategy": "finetune"},
    {"name": "lora", "strategy": "finetune", "addons": ["lora"], "addon_config": {"peft_rank": 2}},
    {"name": "entropy", "strategy": "finetune", "addons": ["entropy"], "addon_config": {"entropy_min_improvement": 0.0}},
    {"name": "pseudo", "strategy": "finetune", "addons": ["pseudo"], "addon_config": {"pseudo_confidence": 0.0}},
    {"name": "cmvn", "strategy": "finetune", "addons": ["cmvn"], "addon_config": {"cmvn_weight": 0.5}},
    {"name": "cmvn-finetune", "strategy": "finetune", "addons": ["cmvn"],
     "addon_config": {"cmvn_weight": 0.5, "cmvn_update": True}},
]


#: the environment of :func:`compute_portably`: results that do not depend on the CPU model
PORTABLE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default",
                "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}


def compute_portably(folder):
    """:func:`compute` in a fresh process, which this script gives :data:`PORTABLE_ENV`
    (kernels are chosen at import)."""
    folder = pathlib.Path(folder)
    out = folder / "figures.json"
    done = subprocess.run([sys.executable, __file__, "--out", str(out), "--work", str(folder / "work")],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"pinned_kshot.py failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def compute(folder):
    """``{"per_draw": {task/k/repeat: {method: [wer, cer]}}, "unadapted": {...}}`` of the pinned evaluation."""
    import torch

    from helpers.tiny_asr import exported_tiny_model, make_corpus
    from sb_meta.adapt import load_model
    from sb_meta.evaluation import evaluate_kshot

    folder = pathlib.Path(folder)
    model = load_model(exported_tiny_model(folder / "model", strategy="fomaml", epochs=4)["export"])
    csv = make_corpus(folder / "test", speakers=(("t0", 4), ("t1", 4), ("t2", 3)), seed=7)
    torch.manual_seed(0)
    results = evaluate_kshot(model, csv, ks=(0, 2), repeats=1, methods=METHODS, steps=3, lr=0.1,
                             seed=11, progress=False)
    out = {"failed": [[f["task"], f["k"], f["strategy"]] for f in results["failed"]], "draws": {}}
    for d in results["draws"]:
        key = f"{d['task']}/k{d['k']}/r{d['repeat']}"
        out["draws"][key] = {"unadapted": [d["unadapted"]["wer"], d["unadapted"]["cer"]],
                             **{m: [v["wer"], v["cer"]] for m, v in sorted(d["adapted"].items())}}
    out["log_probs"] = _log_prob_sums(model, csv)
    return out


def _log_prob_sums(model, csv):
    """``{method: sum of the adapted model's CTC log-probabilities on t1's other utterances}``,
    adapted on t1's first two: finer than WERs, which a small change may leave equal."""
    import torch

    from helpers.tiny_asr import read_rows
    from sb_meta.adapt import Support
    from sb_meta.evaluation import methods_from

    rows = [r for r in read_rows(csv) if r["spk_id"] == "t1"]
    wavs = [model.load_audio(r["wav"]) for r in rows]
    out = {}
    for method in methods_from(METHODS):
        torch.manual_seed(0)
        support = Support(wavs[:2], [r["wrd"] for r in rows[:2]], [r["ID"] for r in rows[:2]], "t1")
        adapted = model.adapt(support, method.with_defaults(steps=3, lr=0.1))
        out[method.name] = sum(float(adapted.log_probs(w[None], torch.ones(1)).sum()) for w in wavs[2:])
    return out


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="compute the pinned k-shot figures")
    parser.add_argument("--out", default=None, help="where to write them (default: the pinned file)")
    parser.add_argument("--work", default=None, help="a working folder (default: a temporary one)")
    args = parser.parse_args()
    if any(os.environ.get(k) != v for k, v in PORTABLE_ENV.items()):  # kernels are chosen at import
        os.execve(sys.executable, [sys.executable, __file__] + sys.argv[1:],
                  dict(os.environ, **PORTABLE_ENV))
    sys.path.insert(0, str(ROOT / "tests"))
    out = pathlib.Path(args.out) if args.out else FIGURES
    with tempfile.TemporaryDirectory() as tmp:
        out.write_text(json.dumps(compute(args.work or tmp), indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")
