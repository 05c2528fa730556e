"""What every sb-meta study shares: corpus roots, recipe runs, records, reports.

A study is a script under ``studies/<name>/`` that trains with the recipes and
evaluates with ``sb_meta``'s public API. Its runs write records
(``results/<study>/.../record.json``); its ``report`` step gathers them into
``docs/studies/<name>/results.json`` and renders ``report.md`` beside it with
:func:`write_report`.

Budgets and the one clock
-------------------------
A study's training budget is stated in optimizer steps or epochs (the recipes'
``number_of_epochs``, with ``episodes_per_epoch`` outer steps per epoch of
episodes), never in minutes, so that a rerun on another machine does the same
computation. The minutes a training took are recorded beside it, on one clock:
:data:`CLOCK`.

Example
-------
>>> recipe_argv("h.yaml", {"number_of_epochs": 72, "meta_addons": ["lhuc"], "init_from": None})
['h.yaml', '--number_of_epochs=72', '--meta_addons=[lhuc]']
>>> fmt_ci([-1.25, 0.5])
'[-1.2, +0.5]'
"""

import datetime
import json
import os
import pathlib
import platform
import shlex

#: the repository root (studies run from a source checkout: they use its recipes)
REPO = pathlib.Path(__file__).resolve().parents[1]
#: the clock of every "minutes" a study records: the CPU minutes of the training process
#: while it trained (batches loaded and optimizer steps; validation, test and export
#: excluded), summed over resumed runs, as ``MetaBrain.train_clock`` counts them. CPU time,
#: not wall time: a run pinned to one core with one thread takes the same CPU minutes on a
#: busy machine, where its wall clock stretches.
CLOCK = "CPU minutes of the training process while training (validation, test and export excluded), MetaBrain.train_clock"

#: the corpora studies read, by environment variable, and a file each must hold
CORPORA = {
    "SBMETA_AN4_ROOT": "etc/an4_train.transcription",
    "SBMETA_SPEECHOCEAN762_ROOT": "train/wav.scp",
    "SBMETA_LIBRISPEECH_ROOT": "",
}


def corpus_root(var, given=None):
    """The corpus root ``given`` on the command line, else ``$var``; exits with one line
    naming the variable when neither points at the corpus."""
    root = given or os.environ.get(var)
    marker = CORPORA.get(var, "")
    if not root or not pathlib.Path(root, marker).exists():
        raise SystemExit(f"{var}: {root or 'unset'}; point it at the corpus in its original layout"
                         + (f" (it holds {marker})" if marker else ""))
    return str(pathlib.Path(root).resolve())


def say(tag):
    """A logger printing ``[tag HH:MM:SS] message`` at once (studies run for hours)."""

    def log(msg):
        print(f"[{tag} {datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)

    return log


def write_json(path, data):
    """Write ``data`` to ``path`` atomically (a killed study never leaves half a record)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path):
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


def machine():
    """The machine and software a record was measured on, with the cores the run was
    pinned to (``taskset``) and its torch threads."""
    import speechbrain
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                   if line.lower().startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu_model": cpu, "cores": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "speechbrain": speechbrain.__version__, "python": platform.python_version()}


def command(script, argv):
    """``argv`` as typed from the repository root: ``python studies/... args``."""
    return " ".join(["python", str(script)] + [shlex.quote(str(a)) for a in argv])


def recipe_argv(yaml, overrides):
    """A recipe's command-line arguments: the YAML, then ``--key=value`` per override
    (lists as ``[a,b]``; ``None`` values left out)."""
    args = [str(yaml)]
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = "[" + ",".join(map(str, value)) + "]"
        args.append(f"--{key}={value}")
    return args


def run_recipe(train_py, argv, folder, budget, log=print):
    """Run a recipe's ``main(argv)`` (its ``train.py``) into ``folder``; returns the
    training record :func:`training_record` writes to ``folder/record.json``.

    A folder whose record holds the same command is reused: a study resumes where it
    stopped. ``budget`` states the training budget (``{"epochs": N}`` or
    ``{"outer_steps": N}``); it is recorded, not enforced here (``argv`` sets it).
    """
    from sb_meta.utils import load_script

    folder = pathlib.Path(folder)
    rel = pathlib.Path(train_py).resolve().relative_to(REPO)
    cmd = command(rel, argv)
    path = folder / "record.json"
    if path.is_file():
        old = read_json(path)
        if old.get("command") == cmd and (folder / "pretrained" / "sbmeta.json").is_file():
            log(f"reusing {folder}")
            return old
    log(f"training: {cmd}")
    recipe = load_script(train_py, "sbmeta_study_recipe_" + rel.parent.name.lower())
    brain = recipe.main(list(argv))
    record = training_record(brain, cmd, budget, folder)
    write_json(path, record)
    return record


def training_record(brain, command, budget, folder=None):
    """What a study keeps of a training: its command and budget, the steps and epochs it
    took, its minutes on :data:`CLOCK`, the machine, its test scores and learning curve."""
    clock = brain.train_clock
    curve = pathlib.Path(folder or ".") / "learning_curve.json"
    stats = getattr(brain, "test_stats", None) or {}
    return {
        "command": command,
        "budget": budget,
        "outer_steps": int(brain.optimizer_step),
        "epochs": int(brain.hparams.epoch_counter.current),
        "train_minutes": round(clock.cpu_seconds / 60, 2),
        "clock": CLOCK,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "parameters": sum(p.numel() for n, p in brain.modules.named_parameters()
                          if not n.startswith("sbmeta_")),
        "test": {"wer": stats.get("WER"), "cer": stats.get("CER"), "checkpoint": "best dev WER"},
        "curve": read_json(curve) if folder and curve.is_file() else [],
        "export": str(pathlib.Path(folder) / "pretrained") if folder else None,
    }


def fmt_ci(ci, digits=1):
    """A 95% interval as ``[-1.2, +0.5]`` (``–`` when not computed)."""
    if not ci or ci[0] is None:
        return "–"
    return f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def display(text, corpus_var="SBMETA_AN4_ROOT"):
    """Commands as a user types them: paths relative to the repository, the corpus as
    ``$corpus_var``."""
    import re

    text = text.replace(str(REPO) + "/", "")
    return re.sub(r"--data_folder=\S+", f"--data_folder=${corpus_var}", text)


def write_report(results, folder, title, intro, order):
    """Write ``results`` (section name -> section) to ``folder/results.json`` and render
    ``folder/report.md``: the targets of every section, then each section's markdown
    with its command and the machine it ran on, in ``order``."""
    folder = pathlib.Path(folder)
    write_json(folder / "results.json", results)
    (folder / "report.md").write_text(render_report(results, title, intro, order), encoding="utf-8")


def render_report(results, title, intro, order):
    """``report.md`` of a study's ``results.json`` (see :func:`write_report`)."""
    out = [f"# {title}", "", "Generated from the `results.json` beside this file by the study's "
           "`report` step; do not edit by hand.", "", intro, "", "## Targets", "",
           "| section | target | measured | status |", "|---|---|---|---|"]
    for key, _ in order:
        for target, measured, met in (results.get(key) or {}).get("targets") or []:
            status = "n/a" if met is None else ("**MET**" if met else "**MISSED**")
            out.append(f"| {key} | {target} | {measured} | {status} |")
    for key, heading in order:
        sec = results.get(key)
        out += ["", f"## {heading}", ""]
        if not sec:
            out.append("Not run.")
            continue
        out.append(sec.get("markdown") or "(no tables recorded)")
        if sec.get("code"):
            out += ["", f"Produced by {sec['code']}."]
        m = sec.get("machine") or {}
        if m:
            out += ["", f"Machine: {m.get('cpu_model', '?')}, {m.get('torch_threads', '?')} torch "
                        f"thread(s), torch {m.get('torch', '?')}."]
    out.append("")
    return "\n".join(out)
