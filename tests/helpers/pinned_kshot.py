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

    OMP_NUM_THREADS=1 python tests/helpers/pinned_kshot.py

and says why in its commit message.
"""

import json
import pathlib
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
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    with tempfile.TemporaryDirectory() as tmp:
        FIGURES.write_text(json.dumps(compute(tmp), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIGURES}")
