#!/usr/bin/env python
"""The single entry point of the sb-meta benchmarks.

    python benchmarks/run.py --full     # `make bench`: every section
    python benchmarks/run.py --quick    # `make bench-quick`: every section, a few minutes
    python benchmarks/run.py --full --only meta_step,peers   # merge these into RESULTS.json
    python benchmarks/run.py --quick --skip ddp   # all but ddp, merged

Writes ``benchmarks/RESULTS.json`` (``--out``) and regenerates
``benchmarks/RESULTS.md`` beside it (``--md``) with ``report.py``. Without
``--only`` the JSON is rewritten whole; with ``--only`` the selected sections
replace theirs and the others are kept. Each section records the command that
produced it, the machine, the mode, medians over repeats and all raw samples.
A section that cannot run here (no AN4 corpus, a missing module) says
``not run`` and why; one that fails records the error, and the others still run.

Sections (top-level keys of RESULTS.json, with ``machine``):

* ``meta_step``: seconds per outer step vs plain SpeechBrain steps (meta_step.py);
* ``peers``: MAML / FOMAML vs ``higher`` and ``torchopt`` (peers.py);
* ``memory``: peak memory vs inner steps (memory.py);
* ``adaptation_latency_s``: test-time adaptation latency (measured here);
* ``ddp``: episodes per second with 1 and 2 gloo processes (ddp.py).

Studies (what the methods achieve, rather than what they cost) live in ``studies/``.

AN4 is read from ``$SBMETA_AN4_ROOT`` (``--an4-root``).
"""

import argparse
import datetime
import gc
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
import traceback
import warnings

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

SECTIONS = ("meta_step", "peers", "memory", "adaptation_latency_s", "ddp")
TOP_KEYS = ("machine",) + SECTIONS
ALIASES = {"adaptation": "adaptation_latency_s", "adaptation_latency": "adaptation_latency_s",
           "latency": "adaptation_latency_s"}
DEFAULT_OUT = HERE / "RESULTS.json"
#: adapting a model to a speaker from 5 utterances x 3 steps should take at most this long
TARGET_LATENCY_S = 2.0


# ------------------------------------------------------------------ sections
def section_meta_step(ctx):
    import meta_step

    return meta_step.run(ctx.quick, setup=ctx.an4_setup())


def section_peers(ctx):
    import memory
    import peers

    result = peers.run(ctx.quick, setup=ctx.an4_setup(), setup_kind="an4", workdir=ctx.workdir)
    return memory.attach_peer_memory(result, ctx.quick, setup_kind="an4", workdir=ctx.workdir)


def section_memory(ctx):
    import memory

    ctx.an4_setup()
    return memory.run(ctx.quick, setup_kind="an4", workdir=ctx.workdir)


def section_ddp(ctx):
    import ddp

    if ctx.quick:
        return ddp.run(True, setup_kind="toy")
    ctx.an4_setup()
    return ddp.run(False, setup_kind="an4", workdir=ctx.workdir)


def section_adaptation(ctx):
    out = measure_adaptation(ctx)
    out["source"] = "measured by benchmarks/run.py"
    return out


def measure_adaptation(ctx, n_utts=5, steps=3):
    """Time adapting the AN4 model to 5 utterances of one speaker, 3 steps.

    Through ``sb_meta.adapt`` (export the YAML's model, ``load_model(folder)
    .adapt((wav_paths, transcripts), Method(strategy="finetune", steps=3))``).
    """
    import torch

    setup = ctx.an4_setup()
    repeats = 3 if ctx.quick else 7
    brain = setup.brain(meta_strategy="finetune", k_support=n_utts, k_query=0,
                        meta_batch_tasks=1)
    episode = setup.episode(brain, seed=1, meta_batch_tasks=1, k_support=n_utts, k_query=0)
    task = episode.tasks[0]
    rows = [setup.train.data[i] for i in task.support_ids]
    wavs = [r["wav"] for r in rows]
    texts = [r["wrd"] for r in rows]
    audio_s = sum(float(r["duration"]) for r in rows)
    base = {
        "utterances": n_utts,
        "steps": steps,
        "speaker": task.name,
        "audio_seconds": round(audio_s, 3),
        "model": setup.name + " (YAML initialisation, untrained)",
        "repeats": repeats,
        "warmup": 1,
        "torch_threads": torch.get_num_threads(),
    }
    import speechbrain as sb

    from sb_meta.adapt import Method, load_model
    from sb_meta.export import export_brain

    folder = pathlib.Path(ctx.workdir) / "pretrained"
    # a trained model has normalisation statistics: prime them on the support set
    brain.modules.train()
    with torch.no_grad():
        brain.compute_forward(task.support, sb.Stage.TRAIN)
    export_brain(brain, folder, hparams_file=str(common.AN4_YAML), force=True)
    model = load_model(str(folder))

    def adapt():
        return model.adapt((wavs, texts), Method(strategy="finetune", steps=steps))

    adapt()
    samples = [common.timed(adapt) for _ in range(repeats)]
    summary = common.summarize(samples)
    return dict(base, status="ok", path="sb_meta.adapt.load_model(folder).adapt",
                target_s=TARGET_LATENCY_S, met=summary["median_s"] <= TARGET_LATENCY_S,
                what="load_model(exported folder).adapt((wav_paths, transcripts), "
                     f"Method(strategy='finetune', steps={steps})): audio loading included",
                **summary)


RUNNERS = {
    "meta_step": section_meta_step,
    "peers": section_peers,
    "memory": section_memory,
    "adaptation_latency_s": section_adaptation,
    "ddp": section_ddp,
}
NEEDS_AN4 = {"meta_step", "peers", "memory", "adaptation_latency_s"}


class Context:
    def __init__(self, quick, workdir, an4_root):
        self.quick = quick
        self.workdir = pathlib.Path(workdir)
        self.an4_root = an4_root
        self._setup = None

    def an4_setup(self):
        if self._setup is None:
            reason = common.an4_missing_reason()
            if reason:
                raise common.SkipSection(reason)
            self._setup = common.AN4Setup(common.an4_root(), self.workdir)
        return self._setup


# ------------------------------------------------------------------ driver
def parse_only(value):
    if not value:
        return list(SECTIONS)
    names = []
    for raw in value.split(","):
        name = ALIASES.get(raw.strip(), raw.strip())
        if not name:
            continue
        if name not in SECTIONS:
            raise SystemExit(f"--only: unknown section {raw!r}; sections are {', '.join(SECTIONS)}")
        names.append(name)
    return names


def empty_results(reason="not run"):
    return {key: ({} if key == "machine" else common.not_run(reason)) for key in TOP_KEYS}


def load_existing(path):
    path = pathlib.Path(path)
    if not path.is_file():
        return empty_results("not run yet")
    data = json.loads(path.read_text(encoding="utf-8"))
    base = empty_results("not run yet")
    base.update({k: v for k, v in data.items() if k in TOP_KEYS})
    return base


def _jsonable(obj):
    """Numbers and paths that ``json`` does not know (numpy, torch, pathlib)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def write(results, out, md):
    import report

    results = {k: results[k] for k in TOP_KEYS}
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=_jsonable) + "\n", encoding="utf-8")
    tmp.replace(out)
    pathlib.Path(md).write_text(report.render(results), encoding="utf-8")


def run_section(name, ctx, command, mode):
    machine = common.machine_info()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    try:
        if name in NEEDS_AN4:
            ctx.an4_setup()
        result = RUNNERS[name](ctx)
    except common.SkipSection as exc:
        result = common.not_run(str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded; the other sections still run
        result = {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
    result = dict(result)
    result.update(command=command, mode=mode)
    result["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result.setdefault("machine", machine)
    result.setdefault("started_at", started)
    result.setdefault("elapsed_s", round(time.perf_counter() - t0, 2))
    gc.collect()
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        description="Run the sb-meta benchmarks and write RESULTS.json / RESULTS.md.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes: fewer repeats and k")
    mode.add_argument("--full", action="store_true", help="the reported numbers")
    parser.add_argument("--only", help=f"comma-separated sections among {', '.join(SECTIONS)}; "
                        "merged into the existing JSON")
    parser.add_argument("--skip", help="comma-separated sections to leave out (the others "
                        "run and are merged into the existing JSON, as with --only)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="RESULTS.json path")
    parser.add_argument("--md", help="RESULTS.md path (default: beside --out, .md)")
    parser.add_argument("--an4-root", help="AN4 corpus root (default: $SBMETA_AN4_ROOT)")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)

    quick = not args.full
    mode_name = "quick" if quick else "full"
    if args.an4_root:
        os.environ["SBMETA_AN4_ROOT"] = args.an4_root
    sections = parse_only(args.only)
    if args.skip:
        skipped = parse_only(args.skip)
        sections = [name for name in sections if name not in skipped]
    args.merge = bool(args.only or args.skip)  # keep the sections not run now
    out = pathlib.Path(args.out)
    md = pathlib.Path(args.md) if args.md else out.with_suffix(".md")

    # the command that reproduces each section: the mode and that section
    def command_for(name):
        parts = ["--quick" if quick else "--full"]
        if args.merge:
            parts += ["--only", name]
        return common.command_line(parts)

    logging.basicConfig(level=logging.WARNING)
    disabled = logging.root.manager.disable
    logging.disable(logging.INFO)  # SpeechBrain announces every brain at INFO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _run(args, sections, quick, mode_name, out, md, command_for)
    finally:
        logging.disable(disabled)


def _run(args, sections, quick, mode_name, out, md, command_for):
    results = load_existing(out) if args.merge else empty_results("not run")
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="sbmeta-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick, workdir, os.environ.get("SBMETA_AN4_ROOT"))
    results["machine"] = common.machine_info()
    t_all = time.perf_counter()
    try:
        for name in sections:
            print(f"[bench] {name} ({mode_name}) ...", flush=True)
            results[name] = run_section(name, ctx, command_for(name), mode_name)
            status = results[name].get("status")
            print(f"[bench] {name}: {status} in {results[name]['elapsed_s']} s", flush=True)
            write(results, out, md)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"[bench] wrote {out} and {md} in {time.perf_counter() - t_all:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
