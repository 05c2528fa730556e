#!/usr/bin/env python
"""The single entry point of the sb-meta benchmarks.

    python benchmarks/run.py --full     # `make bench`: every section, ~2.5 h on 2 cores
    python benchmarks/run.py --quick    # `make bench-quick`: every section, a few minutes
    python benchmarks/run.py --full --only meta_step,peers   # merge these into RESULTS.json
    python benchmarks/run.py --quick --skip an4   # all but an4, merged (an4 takes long)
    python benchmarks/run.py --full --only an4 --an4-json results/an4_adaptation/results.json
        # merge a finished `an4_adaptation.py` run (hours) instead of running it again

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
* ``adaptation_latency_s``: test-time adaptation latency (from
  ``an4_adaptation.py`` when it provides it, else measured here);
* ``ddp``: episodes per second with 1 and 2 gloo processes (ddp.py);
* ``an4``: the AN4 adaptation benchmark of ``an4_adaptation.py``.

AN4 is read from ``$SBMETA_AN4_ROOT`` (``--an4-root``).
"""

import argparse
import datetime
import gc
import importlib
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

SECTIONS = ("meta_step", "peers", "memory", "adaptation_latency_s", "ddp", "an4")
TOP_KEYS = ("machine",) + SECTIONS
ALIASES = {"adaptation": "adaptation_latency_s", "adaptation_latency": "adaptation_latency_s",
           "latency": "adaptation_latency_s"}
DEFAULT_OUT = HERE / "RESULTS.json"


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


def an4_adaptation_module():
    """``benchmarks/an4_adaptation.py`` (another engineer's), or None."""
    if not (HERE / "an4_adaptation.py").is_file():
        return None
    return importlib.import_module("an4_adaptation")


def section_an4(ctx):
    if "an4" in ctx.cache:
        return ctx.cache["an4"]
    if ctx.an4_json:
        path = pathlib.Path(ctx.an4_json)
        try:
            out = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--an4-json {path}: {exc}") from None
        if not isinstance(out, dict) or "results" not in out:
            raise ValueError(f"--an4-json {path} is not a result of benchmarks/an4_adaptation.py")
        out = dict(out, source=f"benchmarks/an4_adaptation.py, imported from {path}")
        ctx.cache["an4"] = out
        return out
    mod = an4_adaptation_module()
    if mod is None:
        raise common.SkipSection("benchmarks/an4_adaptation.py does not exist yet")
    if not hasattr(mod, "run"):
        raise common.SkipSection("benchmarks/an4_adaptation.py has no run(quick) function")
    out = mod.run(ctx.quick)
    if not isinstance(out, dict):
        raise TypeError(f"an4_adaptation.run returned {type(out).__name__}, not a dict")
    out = dict(out)
    out.setdefault("status", "ok")
    out.setdefault("source", "benchmarks/an4_adaptation.py")
    ctx.cache["an4"] = out
    return out


def section_adaptation(ctx):
    """From an4_adaptation.py when it reports a latency, else measured here."""
    why = "benchmarks/an4_adaptation.py does not exist"
    if an4_adaptation_module() is not None:
        try:
            an4 = section_an4(ctx)
        except Exception as exc:  # noqa: BLE001 - measured here instead, saying why
            why = f"benchmarks/an4_adaptation.py failed: {type(exc).__name__}: {exc}"[:500]
        else:
            ctx.extra["an4"] = an4  # computed anyway: keep it
            latency = an4.get("adaptation_latency_s")
            if latency is not None:
                out = dict(latency) if isinstance(latency, dict) else {"median_s": latency}
                out.setdefault("status", "ok")
                out["source"] = an4.get("source", "benchmarks/an4_adaptation.py")
                if an4.get("machine"):  # measured where the study ran
                    out.setdefault("machine", an4["machine"])
                return out
            why = "benchmarks/an4_adaptation.py reports no adaptation_latency_s"
    out = measure_adaptation(ctx)
    out["source"] = f"measured by benchmarks/run.py ({why})"
    return out


def measure_adaptation(ctx, n_utts=5, steps=3):
    """Time adapting the AN4 model to 5 utterances of one speaker, 3 steps.

    Through ``sb_meta.adapt`` (export the YAML's model, ``load_model(folder)
    .adapt(wav_paths, transcripts, strategy="finetune", steps=3)``).
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

    from sb_meta.adapt import load_model
    from sb_meta.export import export_brain

    folder = pathlib.Path(ctx.workdir) / "pretrained"
    # a trained model has normalisation statistics: prime them on the support set
    brain.modules.train()
    with torch.no_grad():
        brain.compute_forward(task.support, sb.Stage.TRAIN)
    export_brain(brain, folder, hparams_file=str(common.AN4_YAML), force=True)
    model = load_model(str(folder))

    def adapt():
        return model.adapt(wavs, texts, strategy="finetune", steps=steps)

    adapt()
    samples = [common.timed(adapt) for _ in range(repeats)]
    return dict(base, status="ok", path="sb_meta.adapt.load_model(folder).adapt",
                what="load_model(exported folder).adapt(wav_paths, transcripts, "
                     f"strategy='finetune', steps={steps}): audio loading included",
                **common.summarize(samples))


RUNNERS = {
    "meta_step": section_meta_step,
    "peers": section_peers,
    "memory": section_memory,
    "adaptation_latency_s": section_adaptation,
    "ddp": section_ddp,
    "an4": section_an4,
}
NEEDS_AN4 = {"meta_step", "peers", "memory", "adaptation_latency_s"}


class Context:
    def __init__(self, quick, workdir, an4_root):
        self.quick = quick
        self.workdir = pathlib.Path(workdir)
        self.an4_root = an4_root
        self.an4_json = None
        self.cache = {}
        self.extra = {}
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
        if name in NEEDS_AN4 and not (name == "adaptation_latency_s" and an4_adaptation_module()):
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
    if result.get("command") and result["command"] != command:
        result["inner_command"] = result["command"]  # e.g. an4_adaptation.py's own CLI
    imported = "machine" in result
    result.update(command=command, mode=mode)
    if not imported:
        result["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    # a section measured elsewhere (an imported AN4 study) keeps its own machine and times
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
    mode.add_argument("--full", action="store_true", help="the reported numbers (~2.5 h, 1.5 h of it the AN4 study)")
    parser.add_argument("--only", help=f"comma-separated sections among {', '.join(SECTIONS)}; "
                        "merged into the existing JSON")
    parser.add_argument("--skip", help="comma-separated sections to leave out (the others "
                        "run and are merged into the existing JSON, as with --only)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="RESULTS.json path")
    parser.add_argument("--md", help="RESULTS.md path (default: beside --out, .md)")
    parser.add_argument("--an4-root", help="AN4 corpus root (default: $SBMETA_AN4_ROOT)")
    parser.add_argument("--an4-json", help="take the an4 section (and the adaptation latency) "
                        "from this finished `benchmarks/an4_adaptation.py` result instead of "
                        "running it")
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
        if args.an4_json and name in ("an4", "adaptation_latency_s"):
            parts += ["--an4-json", args.an4_json]
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
    ctx.an4_json = args.an4_json
    results["machine"] = common.machine_info()
    t_all = time.perf_counter()
    try:
        # an4 first: adaptation_latency_s may be taken from its result
        order = sorted(sections, key=lambda s: (s != "an4", SECTIONS.index(s)))
        for name in order:
            print(f"[bench] {name} ({mode_name}) ...", flush=True)
            results[name] = run_section(name, ctx, command_for(name), mode_name)
            for extra, value in ctx.extra.items():  # computed on the way (an4)
                if extra not in sections and extra in SECTIONS:
                    value = dict(value)
                    if value.get("command"):
                        value["inner_command"] = value["command"]
                    results[extra] = dict(value, command=command_for(name), mode=mode_name,
                                          machine=results[name]["machine"])
            ctx.extra.clear()
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
