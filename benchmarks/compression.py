#!/usr/bin/env python
"""Compressed vs float: size on disk, CPU real-time factor and WER of an exported model.

    python benchmarks/compression.py --model results/AN4/fomaml/1234/pretrained \\
        --data results/AN4/fomaml/1234/manifests/test.csv --out results/compression \\
        --variants int8,prune:0.5,prune:0.8,prune:0.5+int8 --threads 1 --repeats 3

For each variant (``int8``, ``prune:S``, ``prune:S:layer``, combined with
``+``) the model folder is compressed without adaptation
(:func:`sb_meta_plugins.compress.compress_folder`: the ``compress`` add-on's
pruning / dynamic int8 quantization, written as a SpeechBrain pretrained
folder and verified by loading it back) into ``<out>/<variant>/``; then the
float model and every variant transcribe the manifest's utterances on the CPU
(greedy CTC through SpeechBrain's interface, batches of ``--batch-size``
utterances of similar length, one warm-up batch first, audio loading not
timed) and the script writes ``<out>/compression.json`` and
``<out>/compression.md``: size of the folder on disk (and gzip-compressed:
pruned weights are stored densely, so pruning only saves space once the
files are compressed), real-time factor
(transcription seconds per second of audio, with ``--threads`` torch threads)
and WER / CER, each also relative to the float model.
"""

import argparse
import json
import pathlib
import platform
import sys

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]


def variant_options(spec):
    """``compress_folder`` keyword arguments of a variant such as ``prune:0.5+int8``."""
    from sb_meta_plugins.compress import compress_options

    opts = compress_options(spec.replace("+", ","))
    return {"prune": opts.get("compress_prune", 0.0), "scope": opts.get("compress_prune_scope", "global"),
            "int8": opts["compress_int8"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an exported model folder (the float model)")
    parser.add_argument("--data", required=True, help="manifest CSV (ID, wav, wrd) to transcribe")
    parser.add_argument("--out", required=True, help="folder for the compressed models and the report")
    parser.add_argument("--variants", default="int8,prune:0.5,prune:0.8",
                        help="comma-separated compressions; join two with + (default int8,prune:0.5,prune:0.8)")
    parser.add_argument("--data-root", default=None, help="replaces $data_root in wav paths")
    parser.add_argument("--limit", type=int, default=None, help="only the first N utterances (by ID)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="transcription passes per model (fastest kept)")
    parser.add_argument("--force", action="store_true", help="replace compressed models written before")
    args = parser.parse_args(argv)

    from sb_meta_plugins.compress import compare_exports, compress_folder, dump_report, report_table

    if args.threads:
        torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folders = {"float": pathlib.Path(args.model)}
    for spec in [v.strip() for v in args.variants.split(",") if v.strip()]:
        target = out / spec.replace(":", "_").replace("+", "_")
        compress_folder(args.model, target, force=args.force, **variant_options(spec))
        folders[spec] = target
    rows = compare_exports(folders, args.data, data_root=args.data_root, limit=args.limit,
                           batch_size=args.batch_size, reference="float", repeats=args.repeats)
    for r in rows:
        r["machine"] = platform.processor() or platform.machine()
        r["torch"] = torch.__version__
    path = dump_report(rows, out / "compression.json")
    print(report_table(rows))
    print(f"Results: {path} and {path.with_suffix('.md')}")
    print(json.dumps({"command": " ".join([sys.executable, *sys.argv])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
