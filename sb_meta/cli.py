"""The ``sb-meta`` command.

Example
-------
>>> main(["plugins"])  # doctest: +ELLIPSIS
strategy  anil ...
0
"""

import argparse
import json
import sys

__all__ = ["main"]


def _cmd_plugins(args):
    from sb_meta.plugins import PluginRegistry

    registry = PluginRegistry(extra=args.plugin or (), strict=False)
    rows = registry.listing()
    if args.json:
        print(json.dumps({"plugins": rows, "broken": registry.broken}, indent=2, default=repr))
    else:
        width = max((len(r["name"]) for r in rows), default=4)
        for r in rows:
            declared = [x for x in [r.get("addon_kind")] + r.get("flags", []) if x]
            print(
                f"{r['kind']:<9} {r['name']:<{width}}  {r['module']}.{r['class']}"
                f"  [{r['distribution']}]" + (f"  ({', '.join(declared)})" if declared else "")
                + f"  {r['doc']}"
            )
            if r["options"]:  # its YAML keys (sb_meta.options), defaults after "="
                print(" " * 10 + "options: " + ", ".join(f"{k}={v!r}" for k, v in r["options"].items()))
        for name, msg in registry.broken.items():
            print(f"BROKEN    {name}: {msg}")
    return 1 if registry.broken else 0


def _cmd_synth(args):
    from sb_meta.data.manifest import format_summary_table
    from sb_meta.data.synth import generate_corpus
    from sb_meta.utils import check_output

    check_output(args.out)
    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    generate_corpus(
        args.out,
        speakers=args.speakers,
        utts_per_speaker=args.utts_per_speaker,
        langs=langs,
        seed=args.seed,
        channel=not args.no_channel,
        progress=not args.quiet,
        wordlist=args.wordlist,
    )
    print(f"Synthetic corpus written to {args.out}")
    print(format_summary_table(args.out))
    return 0


def _cmd_summary(args):
    from sb_meta.data.manifest import format_summary_table

    print(format_summary_table(args.folder, splits=args.splits.split(","), task_column=args.task_column))
    return 0


def _cmd_channels(args):
    import pathlib

    from sb_meta.data.channels import prepare_channels

    folder = pathlib.Path(args.manifests)
    csvs = {p.stem: p for p in sorted(folder.glob("*.csv"))} if folder.is_dir() else {folder.stem: folder}
    if not csvs:
        raise FileNotFoundError(f"no manifest (*.csv) in {folder}")
    names = [c.strip() for c in args.channels.split(",") if c.strip()]
    out = prepare_channels(csvs, args.out, names, seed=args.seed, progress=not args.quiet)
    for split, path in out.items():
        print(f"{split}: {path}")
    return 0


def _cmd_demo(args):
    from sb_meta.demo import DEMO_DEFAULTS, run_demo

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in DEMO_DEFAULTS:
            raise KeyError(f"unknown demo setting {key!r}; settings are {sorted(DEMO_DEFAULTS)}")
        kind = type(DEMO_DEFAULTS[key])
        overrides[key] = kind(value)
    run_demo(args.out, progress=not args.quiet, **overrides)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="sb-meta",
        description="Meta-learning and transfer-learning adaptation for SpeechBrain ASR.",
    )
    from sb_meta import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list registered strategies and add-ons")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plugin", action="append", help="also load this plugin (module or .py file)")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("synth", help="generate the embedded synthetic multi-speaker corpus")
    p.add_argument("--out", required=True, help="output folder (wav/ and train/valid/test.csv)")
    p.add_argument("--speakers", type=int, default=24)
    p.add_argument("--utts-per-speaker", type=int, default=20)
    p.add_argument("--langs", default="en", help="comma-separated espeak languages, e.g. en,de,fr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-channel", action="store_true", help="no per-speaker noise/reverb channel")
    p.add_argument("--wordlist", default=None,
                   help="one word list for all speakers instead of each language's (e.g. digits)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("summary", help="task summary (tasks, utterances, hours) of manifests")
    p.add_argument("folder")
    p.add_argument("--splits", default="train,valid,dev,test")
    p.add_argument("--task-column", default="spk_id")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("channels", help="pass manifests' utterances through realistic channels "
                                        "(telephone, noise, reverb): (speaker, channel) tasks")
    p.add_argument("--manifests", required=True, help="a manifest CSV, or a folder of them")
    p.add_argument("--out", required=True, help="folder for the audio and the new manifests")
    p.add_argument("--channels", default="clean,telephone,noise10,reverb",
                   help="comma-separated: clean, telephone, noise<SNR dB> (e.g. noise10), reverb")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_channels)

    p = sub.add_parser("demo", help="synthesise, meta-train, adapt held-out speakers, report")
    p.add_argument("--out", default="demo_out", help="working folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a demo setting (e.g. epochs=2); see sb_meta.demo.DEMO_DEFAULTS")
    p.set_defaults(func=_cmd_demo)

    _add_later_commands(sub)
    return parser


def _add_later_commands(sub):
    """Commands implemented in other modules (adaptation, evaluation)."""
    from sb_meta.adapt import commands
    from sb_meta.words import commands as word_commands

    commands.add_commands(sub)
    word_commands.add_commands(sub)  # sb-meta words enrol | classify | evaluate | synth


#: errors a user causes (bad input, configuration, files): one line, exit code 2
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, PermissionError, ImportError,
               RuntimeError)


def main(argv=None):
    """Entry point of the ``sb-meta`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"sb-meta {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
