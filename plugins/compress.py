"""Model compression before export: magnitude pruning and dynamic int8 quantization.

An add-on acting at ``sbmeta_before_export`` only: the recipes' export at the
end of training, and the export of a model adapted at test time
(``sb-meta adapt --compress ...``, ``model.adapt(..., addons=["compress"])``).
It changes the *copies* of the modules the export saves; the trained model is
untouched. The exported folder still loads with SpeechBrain's own
``EncoderASR.from_hparams`` (or ``EncoderDecoderASR``) and transcribes::

    meta_addons: [compress]
    compress_prune: 0.5            # fraction of weights set to zero (0: no pruning)
    compress_prune_scope: global   # or layer
    compress_int8: True            # dynamic int8 quantization
    compress_int8_layers: [Linear, LSTM, GRU]

Pruning
    L1 (magnitude) unstructured pruning with ``torch.nn.utils.prune`` of the
    weight matrices of linear, convolution and recurrent layers (biases and
    normalisation layers are kept): ``global`` removes the smallest
    ``compress_prune`` fraction of all those weights together, ``layer`` the
    fraction of each weight tensor. The masks are made permanent
    (``prune.remove``): the saved weights hold the zeros and load into the
    unchanged model. Weights stay dense tensors, so the folder only shrinks
    once compressed (zip, gzip) or quantized.
int8
    ``torch.ao.quantization.quantize_dynamic`` (int8 weights, activations
    quantized on the fly) of the ``compress_int8_layers`` types. The saved
    state dicts are the quantized modules' own, written by ``torch.save``
    with the version metadata their loading needs
    (:class:`QuantizedCheckpoint`; add-ons listed after ``compress`` no longer
    see these modules in ``plan.modules``, so put it last). The exported
    ``hyperparams.yaml`` gets, after the model and before the pretrainer, an
    ``!apply:torch.ao.quantization.quantize_dynamic`` of each quantized
    loadable (``inplace: True``, the exact layer names in ``qconfig_spec``),
    so SpeechBrain's pretrainer loads the int8 weights into an int8 model.
    Quantized recurrent layers need two more lines there, both plain torch:
    ``torch.serialization.add_safe_globals([torch.ScriptObject])``, because
    their packed weights are TorchBind objects that SpeechBrain's
    ``torch.load`` (``weights_only``) otherwise refuses (this allowlist is
    process-wide), and a no-op ``flatten_parameters`` on torch's dynamic
    quantized LSTM/GRU classes, which SpeechBrain's RNN wrappers call before
    every forward. ``compress_int8_layers: [Linear]`` needs neither. Dynamic
    quantization runs on the CPU only: int8 exports are for CPU inference and
    are written from a CPU brain (the export is checked on the brain's
    device); a model trained on a GPU is exported in float and compressed on
    the CPU with :func:`compress_folder`. (torch announces that
    ``torch.ao.quantization`` moves to the torchao package; torch 2.11 still
    ships it, and the YAML names only torch.)

Both are lossy: the export is verified by loading and transcribing rather
than against the float model's outputs (``plan.tolerance = None``), and
``sbmeta.json`` records what was done under ``compression``.
:func:`compress_folder` compresses an existing export without adapting it,
:func:`compare_exports` measures size on disk, CPU real-time factor and WER
(``benchmarks/compression.py``).

Example
-------
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> record = prune_modules({"model": net}, 0.5, scope="layer")
>>> record["achieved"], float((net[0].weight == 0).float().mean())
(0.5, 0.5)
"""

import contextlib
import copy
import json
import logging
import pathlib
import textwrap
import time
import warnings

import torch
from speechbrain.utils.checkpoints import mark_as_saver, register_checkpoint_hooks
from torch.nn.utils import prune as torch_prune

from sb_meta.contract import CommandOption
from sb_meta.plugins import hookimpl
from sb_meta.strategy import AddOn

logger = logging.getLogger(__name__)

__all__ = [
    "Compress",
    "compress_options",
    "prune_modules",
    "quantize_modules",
    "compress_plan",
    "compress_folder",
    "compare_exports",
    "folder_size",
    "gzip_size",
    "report_table",
    "dump_report",
]

#: layer types dynamic int8 quantization can convert, by the names compress_int8_layers uses
INT8_LAYERS = {"Linear": torch.nn.Linear, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}
_DYNAMIC_RNN = {"LSTM": "torch.ao.nn.quantized.dynamic.LSTM", "GRU": "torch.ao.nn.quantized.dynamic.GRU"}
_PRUNABLE = (torch.nn.Linear, torch.nn.modules.conv._ConvNd, torch.nn.RNNBase)


@contextlib.contextmanager
def _quiet_quantization():
    """torch.ao.quantization warns that it moves to torchao; it is what torch ships."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


# --------------------------------------------------------------------------- pruning
def prunable_weights(module):
    """``[(submodule, parameter name, qualified name)]`` of the weights pruning acts on.

    Weight matrices of linear, convolution and recurrent layers; parameters
    that do not require gradients are included (they are weights too).
    """
    out = []
    for qual, sub in module.named_modules():
        if not isinstance(sub, _PRUNABLE):
            continue
        for pname, p in sub.named_parameters(recurse=False):
            if pname.startswith("weight") and p.dim() >= 2:
                out.append((sub, pname, f"{qual}.{pname}" if qual else pname))
    return out


def prune_modules(modules, sparsity, scope="global"):
    """Magnitude-prune the weights of ``modules`` in place, permanently.

    Arguments
    ---------
    modules : dict of str to torch.nn.Module
        E.g. an export plan's module loadables (weights they share are pruned once).
    sparsity : float
        Fraction of the weights set to zero, in [0, 1).
    scope : str
        ``"global"``: the smallest weights over all tensors together;
        ``"layer"``: that fraction of each tensor.

    Returns
    -------
    dict
        ``sparsity``, ``scope``, ``tensors`` (names), ``weights`` and
        ``achieved`` (the fraction of zeros now).
    """
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"compress_prune must be in [0, 1), got {sparsity!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"compress_prune_scope must be 'global' or 'layer', got {scope!r}")
    seen, targets, names = set(), [], []
    for loadable, module in modules.items():
        for sub, pname, qual in prunable_weights(module):
            param = getattr(sub, pname)
            if id(param) in seen:
                continue
            seen.add(id(param))
            targets.append((sub, pname))
            names.append(f"{loadable}.{qual}")
    if not targets:
        raise ValueError("compress: nothing to prune (no linear, convolution or recurrent weights)")
    if sparsity > 0:
        with torch.no_grad():
            if scope == "global":
                torch_prune.global_unstructured(
                    targets, pruning_method=torch_prune.L1Unstructured, amount=sparsity
                )
            else:
                for sub, pname in targets:
                    torch_prune.l1_unstructured(sub, pname, amount=sparsity)
            for sub, pname in targets:
                torch_prune.remove(sub, pname)
    zeros = sum(int((getattr(s, p) == 0).sum()) for s, p in targets)
    total = sum(getattr(s, p).numel() for s, p in targets)
    return {"sparsity": sparsity, "scope": scope, "tensors": names, "weights": total,
            "achieved": round(zeros / total, 4)}


# --------------------------------------------------------------------------- int8
def _layer_types(layers):
    if isinstance(layers, str):
        layers = [x.strip() for x in layers.split(",") if x.strip()]
    unknown = [x for x in layers if x not in INT8_LAYERS]
    if unknown or not layers:
        raise ValueError(
            f"compress_int8_layers has {unknown or 'nothing'}; layer types are: {', '.join(INT8_LAYERS)}"
        )
    return {INT8_LAYERS[x]: x for x in layers}


def quantize_modules(modules, layers=tuple(INT8_LAYERS)):
    """Dynamic int8 quantization of ``modules`` in place.

    Returns
    -------
    dict
        ``loadable name -> {"layers": [qualified names], "types": [type names]}``
        for the modules that had layers to quantize.
    """
    types = _layer_types(layers)
    done = {}
    for loadable, module in modules.items():
        names, kinds = [], set()
        for qual, sub in module.named_modules():
            if type(sub) in types:  # exact types, as quantize_dynamic's mapping
                if not qual:
                    raise ValueError(
                        f"compress: the loadable {loadable!r} is itself a {type(sub).__name__}; "
                        "int8 quantization replaces layers inside a container, so wrap it in one"
                    )
                names.append(qual)
                kinds.add(types[type(sub)])
        if not names:
            continue
        with _quiet_quantization():
            torch.ao.quantization.quantize_dynamic(module, qconfig_spec=set(names), inplace=True)
        done[loadable] = {"layers": names, "types": sorted(kinds)}
    return done


_INT8_HEADER = (
    "compress (sb-meta): int8 weights. The model is built, quantized in place "
    "(torch.ao.quantization.quantize_dynamic), then the pretrainer loads the int8 weights."
)
_RNN_HEADER = (
    "Quantized LSTM/GRU layers: their packed weights are TorchBind objects (torch.ScriptObject) that "
    "torch.load(weights_only=True) accepts only once allowed, and SpeechBrain's RNN wrappers call "
    "flatten_parameters(), which torch's dynamic quantized RNNs lack (here a no-op)."
)


@register_checkpoint_hooks
class QuantizedCheckpoint:
    """A quantized module as an export loadable: saved with ``torch.save(module.state_dict())``.

    The state dicts of quantized modules carry version metadata (the
    ``_metadata`` attribute of the ordered dict) that their loading code
    needs; SpeechBrain's pretrainer then loads the file into the int8 model
    the exported YAML builds. Being no ``torch.nn.Module``, it is left alone
    by add-ons that act on ``plan.modules`` after ``compress``.
    """

    def __init__(self, module):
        self.module = module

    @mark_as_saver
    def _save(self, path):
        torch.save(self.module.state_dict(), path)


def _int8_yaml(plan, quantized):
    """Add the ``!apply`` lines that rebuild the int8 model to ``plan.yaml``."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSet, TaggedScalar

    doc = plan.yaml
    kinds = sorted({k for q in quantized.values() for k in q["types"]})
    rnn = [k for k in kinds if k in _DYNAMIC_RNN]
    lines = []
    if rnn and "sbmeta_int8_safe_globals" not in doc:
        lines.append("sbmeta_int8_safe_globals: !apply:torch.serialization.add_safe_globals\n"
                     "    - - !name:torch.ScriptObject\n")
    for kind in rnn:
        key = f"sbmeta_int8_{kind.lower()}_flatten"
        if key not in doc:
            lines.append(f"{key}: !apply:setattr\n    - !name:{_DYNAMIC_RNN[kind]}\n"
                         "    - flatten_parameters\n    - !name:builtins.tuple\n")
    for loadable in quantized:
        lines.append(f"sbmeta_int8_{loadable}: !apply:torch.ao.quantization.quantize_dynamic\n"
                     "    model: null\n    qconfig_spec: null\n    inplace: true\n")
    new = YAML().load("".join(lines))
    loadables = doc["pretrainer"]["loadables"]
    for loadable, q in quantized.items():
        ref = loadables[loadable]
        if isinstance(ref, TaggedScalar):  # a `!ref <model>` of a loaded model's YAML
            ref = copy.deepcopy(ref)
        node = new[f"sbmeta_int8_{loadable}"]
        node["model"] = ref
        node["qconfig_spec"] = CommentedSet(q["layers"])
    position = list(doc).index("pretrainer")
    first = True
    for key in new:
        doc.insert(position, key, new[key])
        if first:
            text = _INT8_HEADER + (" " + _RNN_HEADER if rnn else "")
            doc.yaml_set_comment_before_after_key(key, before="\n".join(textwrap.wrap(text, 96)))
            first = False
        position += 1


def compress_plan(plan, prune=0.0, scope="global", int8=False, int8_layers=tuple(INT8_LAYERS)):
    """Compress the modules of an :class:`sb_meta.export.ExportPlan` in place.

    Prunes, then quantizes; records what was done in ``plan.info["compression"]``
    and sets ``plan.tolerance`` to None (lossy). Returns the record.
    """
    record = {}
    modules = plan.modules
    if float(prune) > 0:
        if any(_is_quantized(m) for m in modules.values()):
            raise ValueError("compress: this model is already int8; prune the float model instead")
        record["prune"] = prune_modules(modules, prune, scope)
        record["prune"].pop("tensors")
        logger.info("compress: pruned %.0f%% of %d weights (%s)", 100 * record["prune"]["achieved"],
                    record["prune"]["weights"], scope)
    if int8:
        quantized = quantize_modules(modules, int8_layers)
        if quantized:
            _int8_yaml(plan, quantized)
            for name in quantized:
                plan.loadables[name] = QuantizedCheckpoint(plan.loadables[name])
        record["int8"] = {name: q["layers"] for name, q in quantized.items()}
        logger.info("compress: int8 layers: %s", record["int8"])
    if record:
        plan.tolerance = None
        previous = plan.info.get("compression")
        plan.info["compression"] = (previous if isinstance(previous, list) else
                                    ([previous] if previous else [])) + [record]
    return record


def _is_quantized(module):
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in module.modules())


# --------------------------------------------------------------------------- add-on
def compress_options(spec):
    """The ``compress`` add-on's options for a ``--compress`` value.

    ``int8``, ``prune:S`` (global sparsity ``S``), ``prune:S:layer`` (per
    layer), comma-separated.

    Example
    -------
    >>> compress_options("prune:0.8:layer,int8")
    {'compress_prune': 0.8, 'compress_prune_scope': 'layer', 'compress_int8': True}
    >>> compress_options("prune:0.5")
    {'compress_prune': 0.5, 'compress_int8': False}
    """
    out = {}
    for item in [x.strip() for x in str(spec).split(",") if x.strip()]:
        parts = item.split(":")
        if parts == ["int8"]:
            out["compress_int8"] = True
        elif parts[0] == "prune" and len(parts) in (2, 3):
            try:
                out["compress_prune"] = float(parts[1])
            except ValueError:
                raise ValueError(f"--compress {item!r}: the sparsity must be a number") from None
            if len(parts) == 3:
                out["compress_prune_scope"] = parts[2]
        else:
            raise ValueError(
                f"--compress {item!r} is not understood; use int8, prune:S or prune:S:layer "
                "(S = fraction of weights set to zero), comma-separated"
            )
    if not out:
        raise ValueError("--compress needs int8, prune:S or prune:S:layer")
    out.setdefault("compress_int8", False)
    return out


class Compress(AddOn):
    """Magnitude pruning and dynamic int8 quantization of the exported model (compress_prune, compress_int8)."""

    name = "compress"
    kind = "compressor"
    options = {
        "compress_prune": 0.0,
        "compress_prune_scope": "global",
        "compress_int8": True,
        "compress_int8_layers": list(INT8_LAYERS),
    }
    command_options = (
        CommandOption(
            "--compress", metavar="SPEC", parse=compress_options, activates=True,
            help="compress the exported model (adds the compress add-on): int8, prune:S (global "
                 "sparsity S, e.g. 0.5), prune:S:layer (per layer), comma-separated, e.g. prune:0.5,int8",
        ),
    )

    @classmethod
    def describe_export(cls, info):
        """One line per compression the export records (``sbmeta.json``'s ``compression``)."""
        lines = []
        for record in info.get("compression") or []:
            parts = []
            if record.get("prune"):
                p = record["prune"]
                parts.append(f"pruned {100 * p['achieved']:.0f}% of {p['weights']} weights ({p['scope']})")
            if record.get("int8"):
                n = sum(len(v) for v in record["int8"].values())
                parts.append(f"{n} layer(s) in int8")
            if parts:
                lines.append("Compressed: " + ", ".join(parts))
        return lines

    def __init__(self, brain, config):
        super().__init__(brain, config)
        self.prune = float(self.option("compress_prune"))
        if not 0.0 <= self.prune < 1.0:
            raise ValueError(f"compress_prune must be in [0, 1), got {self.option('compress_prune')!r}")
        self.scope = str(self.option("compress_prune_scope"))
        if self.scope not in ("global", "layer"):
            raise ValueError(f"compress_prune_scope must be 'global' or 'layer', got {self.scope!r}")
        self.int8 = bool(self.option("compress_int8"))
        self.int8_layers = list(_layer_types(self.option("compress_int8_layers")).values())
        device = str(getattr(brain, "device", "cpu"))
        if self.int8 and not device.startswith("cpu"):
            raise ValueError(
                f"compress_int8: dynamic int8 layers run on the CPU only, and the export is checked "
                f"by running it on the brain's device ({device}); export from a CPU brain, or export "
                "the float model and compress it on the CPU (sb_meta_plugins.compress.compress_folder, "
                "benchmarks/compression.py)"
            )
        if not self.int8 and self.prune == 0:
            logger.warning("compress: neither compress_int8 nor compress_prune is set; nothing to do")

    @hookimpl
    def sbmeta_before_export(self, plan):
        """Prune and / or quantize the copies of the modules the export saves."""
        compress_plan(plan, self.prune, self.scope, self.int8, self.int8_layers)


@hookimpl
def sbmeta_addons():
    return [Compress]


# --------------------------------------------------------------------------- tools
def folder_size(folder):
    """Bytes of the files in ``folder``."""
    return sum(p.stat().st_size for p in pathlib.Path(folder).rglob("*") if p.is_file())


def compress_folder(source, out, prune=0.0, scope="global", int8=False, int8_layers=tuple(INT8_LAYERS),
                    force=False, verify=True):
    """Write a compressed copy of the model folder ``source`` to ``out`` (no adaptation).

    Returns the output folder.
    """
    from sb_meta.adapt import load_model
    from sb_meta.adapt.exporting import adapted_plan
    from sb_meta.export.plan import write_export

    model = load_model(source, device="cpu")
    plan = adapted_plan(model)
    compress_plan(plan, prune, scope, int8, int8_layers)
    return write_export(plan, out, force=force, verify=verify, device="cpu")


def gzip_size(folder):
    """Bytes of the files in ``folder`` once gzip-compressed (what pruning's zeros save)."""
    import zlib

    return sum(len(zlib.compress(p.read_bytes(), 6)) for p in pathlib.Path(folder).rglob("*") if p.is_file())


def compare_exports(folders, manifest, data_root=None, limit=None, batch_size=8, reference=None, repeats=1):
    """Size on disk, CPU real-time factor and WER of model folders on one manifest.

    Arguments
    ---------
    folders : dict of str to path
        ``label -> model folder`` (e.g. ``{"float": ..., "int8": ...}``).
    manifest : path
        A SpeechBrain CSV manifest (``ID``, ``wav``, ``wrd``).
    data_root : path, optional
        Replaces ``$data_root`` in the wav paths (default: the manifest's folder).
    limit : int, optional
        Only the first ``limit`` utterances (sorted by ID).
    batch_size : int
        Utterances per transcription batch.
    reference : str, optional
        The label the changes are relative to (default: the first).
    repeats : int
        Transcription passes per model; the fastest is reported.

    Returns
    -------
    list of dict
        One row per folder: ``label``, ``folder``, ``size_mb``, ``gzip_mb`` (the
        files gzip-compressed: dense checkpoints only shrink from pruning
        once compressed), ``rtf``
        (seconds of CPU transcription per second of audio, audio loading
        excluded, with torch's current thread count), ``wer``, ``cer``,
        ``utterances``, ``audio_seconds`` and, against ``reference``,
        ``size_ratio``, ``rtf_ratio``, ``wer_change``.
    """
    from sb_meta.adapt import load_model
    from sb_meta.data.manifest import read_manifest

    rows = sorted(read_manifest(manifest, required=("ID", "wav", "wrd")), key=lambda r: r["ID"])
    if limit:
        rows = rows[: int(limit)]
    if not rows:
        raise ValueError(f"{manifest} has no utterance")
    root = data_root if data_root is not None else pathlib.Path(manifest).parent
    out = []
    for label, folder in folders.items():
        model = load_model(folder, device="cpu")
        wavs = [model.load_audio(str(r["wav"]).replace("$data_root", str(root))) for r in rows]
        seconds = sum(len(w) for w in wavs) / model.sample_rate
        model.transcribe_waveforms(wavs[:1])  # warm-up
        elapsed = float("inf")
        for _ in range(max(1, int(repeats))):
            start = time.perf_counter()
            hyps = model.transcribe_waveforms(wavs, batch_size=batch_size)
            elapsed = min(elapsed, time.perf_counter() - start)
        wer, cer = _error_rates(hyps, [r["wrd"] for r in rows], [r["ID"] for r in rows])
        out.append({"label": label, "folder": str(folder), "size_mb": round(folder_size(folder) / 1e6, 3),
                    "gzip_mb": round(gzip_size(folder) / 1e6, 3),
                    "rtf": round(elapsed / seconds, 4), "wer": round(wer, 2), "cer": round(cer, 2),
                    "utterances": len(rows), "audio_seconds": round(seconds, 1),
                    "threads": torch.get_num_threads()})
    ref = next((r for r in out if r["label"] == reference), out[0])
    for r in out:
        r["size_ratio"] = round(r["size_mb"] / ref["size_mb"], 3) if ref["size_mb"] else None
        r["rtf_ratio"] = round(r["rtf"] / ref["rtf"], 3) if ref["rtf"] else None
        r["wer_change"] = round(r["wer"] - ref["wer"], 2)
    return out


def _error_rates(hyps, refs, ids):
    """(WER, CER) in percent with SpeechBrain's ``ErrorRateStats`` (characters include spaces)."""
    from speechbrain.utils.metric_stats import ErrorRateStats

    wer, cer = ErrorRateStats(), ErrorRateStats(split_tokens=False)
    wer.append(ids, [h.split() for h in hyps], [r.split() for r in refs])
    cer.append(ids, [list(h) for h in hyps], [list(r) for r in refs])
    return float(wer.summarize("error_rate")), float(cer.summarize("error_rate"))


def report_table(rows):
    """A Markdown table of :func:`compare_exports` rows."""
    head = ("| model | size (MB) | gzip (MB) | size vs first | CPU RTF | RTF vs first | WER % | WER change "
            "| CER % |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['label']} | {r['size_mb']:.2f} | {r['gzip_mb']:.2f} | {r['size_ratio']:.2f}x | {r['rtf']:.3f} | "
        f"{r['rtf_ratio']:.2f}x | {r['wer']:.1f} | {r['wer_change']:+.1f} | {r['cer']:.1f} |\n"
        for r in rows
    )
    return head + body


def dump_report(rows, path):
    """Write rows as JSON (``path``) and the Markdown table beside it (``.md``)."""
    path = pathlib.Path(path)
    path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(report_table(rows), encoding="utf-8")
    return path
