#!/usr/bin/env python
"""Cost of adapting and meta-training SSL (wav2vec2-base-sized) recognizers on this machine.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 0 python benchmarks/hf_models.py
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 0 python benchmarks/hf_models.py --quick

Two measurements, each case in a fresh process (its peak resident memory is its own):

* **5-shot adaptation** of an ``EncoderASR`` folder laid out like SpeechBrain's published
  ``asr-wav2vec2-*`` models, with a wav2vec2 encoder of the base size (the
  ``transformers`` defaults: 12 layers of 768 units, 95M parameters in the encoder)
  and random weights: ``load_model``, ``adapt`` on five 3-second utterances (3 steps),
  with LoRA (default targets), a full update (the convolutional front end frozen) and
  the CTC head alone; seconds, peak memory, and the size of a LoRA adapter export
  against the model's checkpoint;
* **meta-training**: seconds per outer FOMAML step and peak memory of
  ``recipes/AN4/hparams/ssl_ctc_meta.yaml`` (that encoder frozen, LoRA adapters) against
  ``crdnn_ctc_meta.yaml``, on the same episodes (AN4 from ``$SBMETA_AN4_ROOT``, else
  the synthetic corpus).

The weights are random: these are costs, not accuracies (no pretrained checkpoint can
be downloaded here). Writes ``benchmarks/hf_models.json`` and ``benchmarks/HF_MODELS.md``.
"""

import argparse
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

TEXTS = ["HELLO THERE", "SEVEN EIGHT NINE", "GOOD MORNING", "ONE TWO THREE", "THANK YOU"]


def _speech_like(seconds, seed):
    """A deterministic waveform with some structure (tones and noise), at 16 kHz."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = int(16000 * seconds)
    t = torch.arange(n) / 16000.0
    f = 150.0 + 100.0 * seed
    return 0.1 * torch.randn(n, generator=g) + 0.3 * torch.sin(2 * torch.pi * f * t) * torch.sin(
        2 * torch.pi * 3.0 * t)


# ------------------------------------------------------------------ children
def child_adapt(folder, method, steps, out):
    """Load ``folder``, adapt it by ``method`` on 5 utterances; JSON of the costs to ``out``."""
    import torch

    from sb_meta.adapt import Method, load_model

    t0 = time.perf_counter()
    model = load_model(folder)
    load_s = time.perf_counter() - t0
    wavs = [_speech_like(3.0, i) for i in range(len(TEXTS))]
    kwargs = {"lora": {"addons": ["lora"]}, "full": {}, "head": {"adapt_params": ["ctc_lin.*"]}}[method]
    common.reset_peak_rss()
    before = common.rss_mib()
    t0 = time.perf_counter()
    adapted = model.adapt((wavs, TEXTS), Method(steps=steps, lr=1e-4, **kwargs))
    adapt_s = time.perf_counter() - t0
    result = {
        "method": method,
        "load_s": load_s,
        "adapt_s": adapt_s,
        "steps": steps,
        "rss_before_adapt_mib": before,
        "peak_rss_mib": common.peak_rss_mib(),
        "adapted_tensors": adapted.last_adaptation["adapted_parameters"],
        "model_parameters": sum(p.numel() for _, p in model.named_parameters()),
        "threads": torch.get_num_threads(),
    }
    if method == "lora":
        with tempfile.TemporaryDirectory() as tmp:
            folder_out = adapted.export_adapters(pathlib.Path(tmp) / "adapters")
            result["adapter_export_bytes"] = sum(p.stat().st_size for p in folder_out.iterdir())
        result["adapter_parameters"] = sum(
            p.numel() for n, p in adapted.named_parameters() if ".adapter_" in n)
    pathlib.Path(out).write_text(json.dumps(result))


def child_meta(yaml, data, kind, workdir, steps, extra, out):
    """Meta-train ``steps`` outer steps of the AN4 recipe's brain; JSON of the costs to ``out``."""
    from sb_meta.utils import load_script

    name = "AN4" if kind == "an4" else "SynthVoices"
    recipe = load_script(REPO / "recipes" / name / "train.py", f"sbmeta_bench_{name}")
    times = []

    class Timed(recipe.ASR):
        def fit_batch(self, batch):
            t0 = time.perf_counter()
            loss = super().fit_batch(batch)
            times.append(time.perf_counter() - t0)
            return loss

    argv = [str(REPO / "recipes" / "AN4" / "hparams" / yaml), f"--data_folder={data}",
            f"--output_folder={workdir}", "--meta_strategy=fomaml", "--inner_steps=1",
            "--meta_batch_tasks=2", "--k_support=2", "--k_query=2", "--debug",
            f"--debug_batches={steps}", "--debug_epochs=1", "--noprogressbar", *extra]
    common.reset_peak_rss()
    if kind == "an4":
        recipe.main(argv, brain_class=Timed)
    else:
        an4 = load_script(REPO / "recipes" / "AN4" / "train.py", "sbmeta_bench_an4_for_synth")
        an4.main(argv, prepare_data=recipe.prepare, brain_class=Timed)
    pathlib.Path(out).write_text(json.dumps({"outer_step_s": times, "peak_rss_mib": common.peak_rss_mib()}))


# ------------------------------------------------------------------ parent
def run_child(args, timeout=3000):
    """``python benchmarks/hf_models.py --child ...`` in a fresh process; its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", json.dumps(args), "--child-out", out]
    env = dict(os.environ, **common.MALLOC_ENV)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{args}: {proc.stderr[-2000:]}")
    result = json.loads(pathlib.Path(out).read_text())
    os.unlink(out)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny encoder: checks the script runs")
    parser.add_argument("--out", default=str(HERE / "hf_models.json"))
    parser.add_argument("--md", default=str(HERE / "HF_MODELS.md"))
    parser.add_argument("--steps", type=int, default=3, help="adaptation steps")
    parser.add_argument("--outer-steps", type=int, default=4, help="outer steps timed per recognizer")
    parser.add_argument("--render", action="store_true", help="only rewrite --md from --out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        if spec["what"] == "adapt":
            return child_adapt(spec["folder"], spec["method"], spec["steps"], args.child_out)
        return child_meta(spec["yaml"], spec["data"], spec["kind"], spec["workdir"], spec["steps"],
                          spec["extra"], args.child_out)

    if args.render:
        pathlib.Path(args.md).write_text(render(json.loads(pathlib.Path(args.out).read_text())))
        return
    from sb_meta.adapt.hf_folders import BASE_SIZES, TINY_SIZES, hf_ssl_source, ssl_ctc_folder

    sizes = TINY_SIZES if args.quick else BASE_SIZES
    result = {"command": " ".join(["python", "benchmarks/hf_models.py"] + [shlex.quote(a) for a in (
        argv if argv is not None else sys.argv[1:])]),
              "machine": common.machine_info(), "quick": args.quick,
              "affinity": sorted(os.sched_getaffinity(0)),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        source = hf_ssl_source(tmp / "hf_wav2vec2", "wav2vec2", sizes)
        folder = ssl_ctc_folder(tmp / "ssl_ctc", TEXTS, source=source, freeze=True, dnn_neurons=1024)
        result["checkpoint_bytes"] = {p.name: p.stat().st_size for p in folder.iterdir() if p.suffix == ".ckpt"}
        result["adaptation"] = {
            m: run_child({"what": "adapt", "folder": str(folder), "method": m, "steps": args.steps})
            for m in ("lora", "full", "head")}
        an4 = common.an4_root()
        if an4:
            kind, data = "an4", an4
        else:
            from sb_meta.data.synth import generate_corpus

            kind, data = "synth", tmp / "synth"
            generate_corpus(data, speakers=6, utts_per_speaker=5, seed=1, progress=False)
        hidden = json.loads((source / "config.json").read_text())["hidden_size"]
        meta = {}
        for name, yaml, extra in (
            ("crdnn_ctc", "crdnn_ctc_meta.yaml", []),
            ("ssl_ctc_lora", "ssl_ctc_meta.yaml", [f"--ssl_hub={source}", f"--ssl_output_size={hidden}"]),
        ):
            out = run_child({"what": "meta", "yaml": yaml, "data": str(data), "kind": kind,
                             "workdir": str(tmp / name), "steps": args.outer_steps, "extra": extra})
            later = out["outer_step_s"][1:] or out["outer_step_s"]
            meta[name] = dict(out, median_outer_step_s=statistics.median(later),
                              episode="fomaml, inner_steps=1, 2 tasks x (2 support + 2 query)", corpus=kind)
        result["meta_training"] = meta
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    pathlib.Path(args.md).write_text(render(result))
    print(render(result))


def render(r):
    """The Markdown page of a result."""
    a = r["adaptation"]
    params = a["lora"]["model_parameters"]
    ckpt = sum(r["checkpoint_bytes"].values())
    lines = [
        "# Cost of SSL (wav2vec2) recognizers: adaptation and meta-training",
        "",
        "Generated by `benchmarks/hf_models.py` (do not edit by hand). Reproduce with",
        "",
        f"    {'SBMETA_AN4_ROOT=/path/to/an4 ' if r['meta_training']['crdnn_ctc']['corpus'] == 'an4' else ''}"
        f"OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 0 {r['command']}",
        "",
        f"Machine: {r['machine'].get('cpu_model')}, run on cores {r['affinity']} with "
        f"{a['lora']['threads']} torch thread(s){' (quick: tiny encoder)' if r['quick'] else ''}. "
        "Random weights: costs only; recognition quality cannot be judged without pretrained weights.",
        "",
    ]
    load = (r["machine"].get("loadavg_at_start") or [0])[0]
    if load > 1.0:
        lines += [f"**Warning**: the machine was busy when this run started (1-min load average {load:.1f} "
                  f"on {r['machine'].get('cores')} cores, other work sharing the core): the seconds are "
                  "upper bounds; rerun on a quiet machine for clean timings.", ""]
    lines += [
        f"## 5-shot adaptation of a wav2vec2-base-sized model ({params / 1e6:.1f}M parameters)",
        "",
        f"Five 3-second utterances, {a['lora']['steps']} steps, one batch; `load_model` then `adapt`. "
        "Memory is the process's resident set (Python, torch and transformers included): before "
        "`adapt`, and its peak during `adapt`.",
        "",
        "| method | adapted tensors | load (s) | adapt (s) | memory before adapt (MiB) | peak memory (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    names = {"lora": "LoRA (default targets)", "full": "full (front end frozen)", "head": "CTC head only"}
    for m in ("lora", "full", "head"):
        x = a[m]
        lines.append(f"| {names[m]} | {x['adapted_tensors']} | {x['load_s']:.1f} | {x['adapt_s']:.1f} | "
                     f"{x['rss_before_adapt_mib']:.0f} | {x['peak_rss_mib']:.0f} |")
    lora = a["lora"]
    lines += [
        "",
        f"LoRA adapters: {lora['adapter_parameters'] / 1e6:.2f}M parameters "
        f"({100 * lora['adapter_parameters'] / params:.2f}% of the model); their export "
        f"(`export_adapters`) is {lora['adapter_export_bytes'] / 2**20:.1f} MiB against "
        f"{ckpt / 2**20:.0f} MiB of checkpoints ({100 * lora['adapter_export_bytes'] / ckpt:.2f}%).",
        "",
        "## Meta-training: seconds per outer step",
        "",
        f"FOMAML, one inner step, 2 tasks x (2 support + 2 query utterances) per episode, "
        f"{r['meta_training']['crdnn_ctc']['corpus']} corpus; median over the outer steps after the first.",
        "",
        "| recognizer | outer steps | median s / outer step | peak memory (MiB) |",
        "|---|---|---|---|",
    ]
    for name, label in (("crdnn_ctc", "CRDNN + CTC (`crdnn_ctc_meta.yaml`)"),
                        ("ssl_ctc_lora", "wav2vec2-base frozen + LoRA + CTC (`ssl_ctc_meta.yaml`)")):
        x = r["meta_training"][name]
        lines.append(f"| {label} | {len(x['outer_step_s'])} | {x['median_outer_step_s']:.2f} | "
                     f"{x['peak_rss_mib']:.0f} |")
    c, s = (r["meta_training"][k]["median_outer_step_s"] for k in ("crdnn_ctc", "ssl_ctc_lora"))
    lines += ["", f"The SSL recognizer's outer step costs {s / c:.1f}x the CRDNN's.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
