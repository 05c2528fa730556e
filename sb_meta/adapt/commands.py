"""``sb-meta adapt``, ``transcribe`` and ``evaluate``: test-time adaptation commands.

Added to the ``sb-meta`` command by :func:`add_commands` (see
:mod:`sb_meta.cli`). Heavy imports happen inside the commands, so ``sb-meta
--help`` stays fast. Errors a user causes end in one line and exit code 2
(``sb-meta --verbose ...`` shows the traceback).

Example
-------
>>> import argparse
>>> parser = argparse.ArgumentParser(prog="sb-meta")
>>> add_commands(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["evaluate", "--model", "m", "--data", "t.csv", "--out", "r",
...                           "--k", "0,1,5", "--strategies", "finetune,anil"])
>>> args.k, args.strategies, args.repeats
([0, 1, 5], ['finetune', 'anil'], 3)
"""

import pathlib
import sys

from sb_meta.adapt.addon_options import add_addon_options, addon_settings, check_export, describe_export
from sb_meta.plugins import PluginRegistry
from sb_meta.trust import add_trust_option
from sb_meta.utils import check_output

__all__ = ["add_commands"]


def _int_list(text):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text):
    return [x.strip() for x in text.split(",") if x.strip()]


def _check_step_size(lr):
    """``--lr``, when given, is a finite number > 0 (refused before any work)."""
    import math

    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {lr}")


def _cmd_adapt(args):
    from sb_meta.adapt import Method, Support, load_model
    from sb_meta.evaluation import resolve_wav
    from sb_meta.export import check_destination

    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps} (nothing would be adapted)")
    _check_step_size(args.lr)
    addons, addon_config = addon_settings(args, args.registry)
    known = all(name in args.registry.addons for name in addons)
    if known:  # else an add-on of the model's own plugins: checked once the model is loaded
        check_export(addons, args.adapters_only, args.registry)
    method = Method(strategy=args.strategy, steps=args.steps, lr=args.lr, addons=addons, addon_config=addon_config,
                    adapt_params=_name_list(args.adapt_params) if args.adapt_params else None, guard=args.guard)
    audio_only = known and not _reads_transcripts(method, args.registry)
    if args.guard and audio_only:
        raise ValueError("--guard checks the transcripts of held-out support utterances: it cannot "
                         "guard adaptation from the audio alone")
    check_destination(args.out, force=args.force)  # refuse before any work
    check_output(args.out, [args.model, args.support])
    chosen, where = _support_rows(args, audio_only)
    data_root = args.data_root or pathlib.Path(args.support).parent
    wavs = [resolve_wav(r["wav"], data_root, args.support) for r in chosen]
    model = load_model(args.model, device=args.device, trust=args.trust_model)
    if not known:
        check_export(addons, args.adapters_only, model.registry)
    texts = None if audio_only else [r.get("wrd") for r in chosen]
    adapted = model.adapt(Support(wavs, texts, [r["ID"] for r in chosen], args.task), method)
    if args.adapters_only:
        out = adapted.export_adapters(args.out, force=args.force)
    else:  # adapters that fold into the weights are folded: a plain SpeechBrain folder
        out = adapted.export(args.out, force=args.force)
    rec = adapted.last_adaptation
    print(
        f"Adapted {args.model} with {rec['strategy']} ({rec['steps']} steps, lr {rec.get('lr')}) "
        f"on {len(chosen)} utterance(s) of {where}: {', '.join(r['ID'] for r in chosen)}"
    )
    _print_adaptation(rec, model.registry)
    if args.adapters_only:
        print(f"Exported the adapters only to {out} (load them on the base model with "
              f"sb_meta.adapt.load_model({str(args.model)!r}, adapters={str(out)!r}))")
    else:
        print(f"Exported to {out}")
        for line in describe_export(out, addons, model.registry):
            print(line)
    return 0


def _reads_transcripts(method, registry):
    """Whether adapting with ``method`` reads transcripts (not with a test-time method that reads none)."""
    from sb_meta.adapt.testtime import reads_transcripts

    return reads_transcripts([registry.get_addon(a) for a in method.addons], method.addon_config)


def _support_rows(args, audio_only=False):
    """``(chosen rows, where)``: the ``--k`` support utterances drawn (``--seed``) from
    ``--support`` (those of ``--task`` only, when given), and how messages name their origin."""
    from sb_meta.data.manifest import read_manifest
    from sb_meta.evaluation import seeded

    needed = ("ID", "duration", "wav") if audio_only else ("ID", "duration", "wav", "wrd")
    rows = read_manifest(args.support, required=needed, nonempty=("ID", "wav"))
    if args.task is not None:
        if rows and args.task_column not in rows[0]:
            raise KeyError(
                f"manifest {args.support} has no column {args.task_column!r}; "
                f"columns are {sorted(rows[0])}"
            )
        tasks = sorted({r[args.task_column] for r in rows})
        rows = [r for r in rows if r[args.task_column] == args.task]
        if not rows:
            raise ValueError(
                f"no utterance of {args.task_column}={args.task!r} in {args.support}; "
                f"values are {tasks[:20]}"
            )
    where = f"{args.task_column}={args.task!r}" if args.task is not None else str(args.support)
    if len(rows) < args.k:
        raise ValueError(f"--k {args.k} support utterances requested but {where} has {len(rows)}")
    rows = sorted(rows, key=lambda r: r["ID"])
    chosen = sorted(seeded(args.seed, "adapt", args.task, args.k).sample(rows, args.k), key=lambda r: r["ID"])
    return chosen, where


def _print_adaptation(rec, registry):
    """What an adaptation record says beyond its strategy and support: the guard, the test-time methods."""
    if rec.get("guard"):
        g = rec["guard"]
        print(f"Guard: {g['errors_before']} -> {g['errors_after']} word errors on {g['words']} held-out words "
              f"({g['folds']} folds): " + ("adaptation kept" if g["kept"] else "the model is exported unadapted"))
    for name, log in (rec.get("test_time") or {}).items():
        for line in registry.get_addon(name).describe(log):
            print(line)


def _with_lexicon(model, args):
    """``model`` decoding with the lexicon of ``--lexicon`` (when given)."""
    if args.lexicon:
        model.set_lexicon(args.lexicon, beam_size=args.beam_size)
    return model


def _lexicon_options(p):
    p.add_argument("--lexicon", default=None,
                   help="decode with a beam search restricted to these words: a text file of words "
                        "(e.g. one per line) or a CSV manifest (its wrd column), e.g. the training manifest; "
                        "CTC models with character labels (needs pip install flashlight-text)")
    p.add_argument("--beam-size", type=int, default=50, help="beam of the --lexicon search")


def _cmd_transcribe(args):
    from sb_meta.adapt import load_model

    model = _with_lexicon(load_model(args.model, device=args.device, trust=args.trust_model), args)
    failed = 0
    for path in args.files:
        try:
            text = model.transcribe_file(path)
        except (FileNotFoundError, ValueError) as exc:
            print(f"sb-meta transcribe: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}\t{text}", flush=True)
    return 1 if failed else 0


def _cmd_evaluate(args):
    import dataclasses

    from sb_meta.adapt import load_model
    from sb_meta.evaluation import (
        check_report_folder,
        evaluate_kshot,
        methods_from,
        summary_table,
        write_report,
    )

    _check_step_size(args.lr)
    check_report_folder(args.out)  # before the evaluation, not after it
    check_output(args.out, [args.model, args.data])
    model = _with_lexicon(load_model(args.model, device=args.device, trust=args.trust_model), args)
    # add-on method names: the installed plugins' and those the model's own YAML names
    methods = methods_from(args.methods or args.strategies, registry=model.registry)
    if args.unsupervised:  # each method also without transcripts, on the same draws
        methods += [dataclasses.replace(m, name=f"{m.name}-{args.unsupervised}", addons=m.addons + [args.unsupervised])
                    for m in methods]
    results = evaluate_kshot(
        model,
        args.data,
        task_column=args.task_column,
        ks=args.k,
        repeats=args.repeats,
        methods=methods,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        progress=not args.quiet,
        batch_size=args.batch_size,
        adapt_params=_name_list(args.adapt_params) if args.adapt_params else None,
        data_root=args.data_root,
    )
    paths = write_report(results, args.out)
    print(summary_table(results))
    for s in results["skipped"]:
        print(f"skipped: {s['reason']}")
    for f in results["failed"]:
        print(f"failed: {f['task']} k={f['k']} repeat {f['repeat']} ({f['strategy']}): {f['reason']}")
    print(f"Report: {paths['markdown']}  Results: {paths['json']}  Plots: {paths['plot']}, {paths['tasks_plot']}")
    return 0


def _option_example(registry):
    """``KEY=VALUE`` for the first scalar option a registered add-on declares (for help texts)."""
    for info in registry.addons.values():
        for key, value in info.cls.options.items():
            if isinstance(value, (bool, int, float, str)):
                return f"{key}={value}"
    return "KEY=VALUE"


def add_commands(subparsers, registry=None):
    """Add ``adapt``, ``transcribe`` and ``evaluate`` to the ``sb-meta`` parser.

    The add-on options of ``adapt`` and the add-on method names of
    ``evaluate`` come from ``registry`` (default: the plugins installed
    through the ``sb_meta.plugins`` entry points).
    """
    registry = registry if registry is not None else PluginRegistry(strict=False)
    _add_adapt(subparsers, registry)
    _add_transcribe(subparsers)
    _add_evaluate(subparsers, registry)


def _add_adapt(subparsers, registry):
    """``sb-meta adapt``, with the options the add-ons of ``registry`` declare."""
    adapters = registry.addon_names("adapter")
    p = subparsers.add_parser(
        "adapt", help="adapt a model from k support utterances and export the adapted model"
    )
    p.add_argument("--model", required=True, help="exported model folder (or cached hub id)")
    p.add_argument("--support", required=True, help="manifest CSV holding the support utterances")
    p.add_argument("--k", type=int, default=5, help="support utterances to use (default 5)")
    p.add_argument("--steps", type=int, default=3, help="adaptation steps (default 3)")
    p.add_argument("--lr", type=float, default=None,
                   help="step size (default: meta-learned for metasgd, else the model's inner_lr)")
    p.add_argument("--strategy", default=None,
                   help="gradient strategy (default: metasgd if the model has step sizes, else finetune)")
    p.add_argument("--task", default=None, help="only utterances with this value of --task-column")
    p.add_argument("--task-column", default="spk_id")
    p.add_argument("--adapt-params", default=None,
                   help="comma-separated parameter name patterns to adapt, e.g. 'ctc_lin.*'")
    p.add_argument("--adapters-only", action="store_true",
                   help="with an adapter add-on (" + (", ".join(adapters) or "none is registered")
                        + "): export the adapter weights alone (a few %% of the model)")
    p.add_argument("--addons", type=_name_list, default=[],
                   help="comma-separated add-ons active during adaptation and export, in order (of "
                        + (", ".join(registry.addons) or "none registered") + "; `sb-meta plugins` lists them)")
    p.add_argument("--addon-config", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of an active add-on (repeatable), e.g. "
                        + _option_example(registry) + "; values are read as YAML")
    p.add_argument("--seed", type=int, default=0, help="seed of the support draw")
    p.add_argument("--data-root", default=None,
                   help="replaces $data_root in wav paths (default: the manifest's folder); other "
                        "relative paths are read from the working directory, then from the manifest's folder")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True,
                   help="new folder for the adapted model (an earlier sb-meta export there is "
                        "replaced only with --force; nothing else is ever replaced)")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier sb-meta export at --out (atomically)")
    p.add_argument("--guard", action="store_true",
                   help="adapt once per support utterance on the others first, and keep the adaptation "
                        "only when it removed more word errors than it added on the held-out ones "
                        "(k + 1 adaptations; needs k >= 2)")
    add_trust_option(p)
    add_addon_options(p, registry)
    p.set_defaults(func=_cmd_adapt, registry=registry)


def _add_transcribe(subparsers):
    """``sb-meta transcribe``."""
    p = subparsers.add_parser("transcribe", help="transcribe audio files (prints path<TAB>text)")
    p.add_argument("--model", required=True, help="exported model folder (or cached hub id)")
    p.add_argument("--device", default=None)
    p.add_argument("files", nargs="+", help="audio files")
    _lexicon_options(p)
    add_trust_option(p)
    p.set_defaults(func=_cmd_transcribe)


def _audio_only(registry):
    """The registered test-time methods that adapt from the audio alone."""
    return [n for n in registry.addon_names("test_time") if not registry.addons[n].cls.reads_transcripts({})]


def _add_evaluate(subparsers, registry):
    """``sb-meta evaluate``, whose methods may name the adapter add-ons of ``registry``."""
    adapters = registry.addon_names("adapter") + registry.addon_names("test_time")
    p = subparsers.add_parser(
        "evaluate", help="k-shot adaptation benchmark: WER/CER per task, strategy and k"
    )
    p.add_argument("--model", required=True, help="exported model folder (or cached hub id)")
    p.add_argument("--data", required=True, help="manifest CSV of the evaluation tasks")
    p.add_argument("--task-column", default="spk_id")
    p.add_argument("--k", type=_int_list, default=[0, 1, 2, 5, 10],
                   help="comma-separated support sizes (default 0,1,2,5,10)")
    p.add_argument("--repeats", type=int, default=3, help="support draws per task and k")
    p.add_argument("--methods", type=_name_list, default=None,
                   help="comma-separated methods NAME[:STRATEGY[:PATTERN+PATTERN]] or the names of adapter "
                        "add-ons and test-time methods (" + (", ".join(adapters) or "none is registered")
                        + "), e.g. 'full:finetune,head:finetune:ctc_lin.*' (default: --strategies)")
    p.add_argument("--unsupervised", choices=_audio_only(registry), default=None,
                   help="also evaluate every method adapting without transcripts, with this test-time method")
    p.add_argument("--strategies", type=_name_list, default=["finetune"],
                   help="comma-separated gradient strategies (default finetune)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--adapt-params", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="query utterances per batch")
    p.add_argument("--data-root", default=None,
                   help="replaces $data_root in wav paths (default: the manifest's folder); other "
                        "relative paths are read from the working directory, then from the manifest's folder")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="report folder (results.json, report.md, wer_vs_k.png)")
    _lexicon_options(p)
    add_trust_option(p)
    p.set_defaults(func=_cmd_evaluate, registry=registry)
