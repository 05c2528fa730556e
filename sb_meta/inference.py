"""Few-shot adaptation of trained recognizers, and export in SpeechBrain's format.

A model trained with :class:`sb_meta.asr.CTCASRBrain` is written by
:func:`export_brain` as a SpeechBrain *pretrained folder*, which SpeechBrain
loads on its own, offline::

    from speechbrain.inference.ASR import EncoderASR
    asr = EncoderASR.from_hparams(source="pretrained", savedir="pretrained")
    asr.transcribe_file("speech.wav")

:func:`load_model` loads such a folder as an :class:`AdaptableASR`, which
transcribes like ``EncoderASR`` (it wraps one) and adapts to a speaker, a
language, a channel... from a few transcribed utterances:
:meth:`AdaptableASR.adapt` returns a *new* adapted model (the original is left
untouched) that :meth:`AdaptableASR.export` writes as a pretrained folder again.

Exported folder
---------------
::

    pretrained/
        hyperparams.yaml     HyperPyYAML: the model section of the recipe and
                             the EncoderASR interface (encoder, tokenizer,
                             decoding_function, modules, pretrainer)
        model.ckpt           state_dict of ModuleList([enc, ctc_lin])
        normalizer.ckpt      feature normalisation statistics
        tokenizer.ckpt       the tokenizer (see below)
        meta_strategy.ckpt   meta-learned strategy state, e.g. the Meta-SGD
                             step sizes (only when the strategy has some)
        sbmeta.json          strategy, meta configuration, files, provenance

``hyperparams.yaml`` defines ``encoder``, a
``speechbrain.nnet.containers.LengthsCapableSequential`` of
``[compute_features, normalize, enc, ctc_lin, log_softmax]``, greedy CTC
decoding (``speechbrain.decoders.ctc_greedy_decode``, ``blank_id: 0``) and a
``Pretrainer`` whose ``loadables`` are ``model``, ``normalizer`` and
``tokenizer``. The loadables have no ``paths`` entry: the pretrainer then
fetches ``<loadable>.ckpt`` from the ``source`` folder given to
``from_hparams``, so an export can be moved, copied or uploaded to a model hub
as it is (an absolute ``paths`` entry would pin it to where it was written).

Tokenizers: for character models ``tokenizer`` is SpeechBrain's
``CTCTextEncoder`` with the blank (``<blank>``) at index 0 and the characters
of :class:`sb_meta.asr.CharTokenizer` at 1..n in the same order;
SentencePiece models get a ``sentencepiece.SentencePieceProcessor`` whose model
file has a ``<blank>`` control piece inserted in front, so that its ids are
exactly sb-meta's (piece id + 1, blank 0) and ``EncoderASR`` decodes them with
``decode_ids`` unchanged. Network outputs beyond the vocabulary
(``output_neurons`` larger than the vocabulary) get placeholder labels
``<unused_i>`` (control pieces for SentencePiece, which decode to nothing) so
that decoding never fails; a trained model does not emit them. Exports need
nothing from sb-meta to be loaded.

Model hyperparameters
---------------------
The architecture is not reverse-engineered from the module objects: the
*model section of the recipe's YAML* is copied verbatim (the top-level keys
that ``compute_features``, ``normalize``, ``enc``, ``ctc_lin`` and
``log_softmax`` reference, transitively, through ``!ref`` or YAML aliases).
The YAML is, in order: the ``hparams_file`` argument of :func:`export_brain`
(a path or the YAML text), or the ``hyperparams.yaml`` that SpeechBrain's
``create_experiment_directory`` saved in ``brain.hparams.output_folder``
(what every recipe run has). The export is then loaded back with
``EncoderASR.from_hparams`` and must reproduce the brain's own forward pass,
so a YAML that does not match the trained modules is caught at export time.

Writing is atomic: the folder is assembled and verified in a temporary folder
next to the destination, which replaces the destination only once complete
(an existing export is swapped out, never deleted before the new one is in
place; a failed export leaves the previous one intact).

Test-time adaptation
--------------------
:meth:`AdaptableASR.adapt` runs the inner loop of a registered gradient
strategy (``finetune``, ``maml``, ``fomaml``, ``anil``, ``metasgd``,
``reptile``...: :class:`sb_meta.strategy.GradientStrategy`) on the support
utterances, through ``torch.func.functional_call`` on copies of the loaded
modules (:func:`sb_meta.functional.functional_objective` via a small
:class:`sb_meta.MetaBrain`), with the CTC loss of :func:`sb_meta.losses.ctc_loss`.
The strategy decides which parameters adapt (ANIL: the output layer) and with
which step sizes (Meta-SGD: the meta-learned ones stored in the folder, used
by default when present). Dropout is off and BatchNorm uses its running
statistics during adaptation (modules in eval mode: five utterances give no
usable batch statistics), and every normalisation statistic is frozen
(:func:`sb_meta.functional.frozen_statistics`), so adapting never changes the
model's statistics.

Parameter-efficient adapters
----------------------------
``adapt(..., addons=["lora"])`` (or ``peft="lora"``; also ``houlsby``,
``lhuc``, see :mod:`sb_meta_plugins.peft`) applies the add-on's module
surgery to the adapted copy and adapts only the adapter parameters; the base
weights stay bit-identical. :meth:`AdaptableASR.export_adapters` writes the
adapters alone::

    speaker42/
        adapters.ckpt    the adapter tensors, by parameter name
        adapters.json    format, add-ons and their configuration, the base
                         model's identity (SHA-256 of its weights and
                         statistics, see base_model_sha256) and provenance

``load_model(base, adapters="speaker42")`` (or
``load_model(base).with_adapters("speaker42")``) puts them back on the same
base model (another base model is refused); :meth:`AdaptableASR.merge_adapters`
folds LoRA / LHUC adapters into the layers for a plain pretrained folder.
"""

import contextlib
import copy
import ctypes
import datetime
import functools
import json
import logging
import os
import pathlib
import re
import shutil
import struct
import tempfile

import speechbrain as sb
import torch

from sb_meta.brain import MetaBrain

logger = logging.getLogger(__name__)

__all__ = [
    "AdaptableASR",
    "AdaptationError",
    "atomic_folder",
    "export_brain",
    "load_model",
    "model_yaml_section",
    "HPARAMS_FILE",
    "META_FILE",
    "ADAPTERS_META_FILE",
    "base_model_sha256",
]

#: SpeechBrain's hyperparameters file of a pretrained folder.
HPARAMS_FILE = "hyperparams.yaml"
#: sb-meta's metadata file of an export.
META_FILE = "sbmeta.json"
#: meta-learned strategy state (Meta-SGD step sizes), as checkpointed in training.
META_STATE_FILE = "meta_strategy.ckpt"
#: adapter-only exports (:meth:`AdaptableASR.export_adapters`): metadata and tensors.
ADAPTERS_META_FILE = "adapters.json"
ADAPTERS_FILE = "adapters.ckpt"
ADAPTERS_FORMAT = "sb-meta-adapters/1"
FORMAT = "sb-meta-pretrained/1"
BLANK_LABEL = "<blank>"

# keys the exported hyperparams.yaml defines itself
_RESERVED_KEYS = {
    "encoder",
    "model",
    "tokenizer",
    "decoding_function",
    "modules",
    "pretrainer",
    "audio_normalizer",
}
# roots of the model section: (key in CTCASRBrain, where: "modules" or "hparams")
_ROOTS = (
    ("compute_features", "hparams"),
    ("normalize", "modules"),
    ("enc", "modules"),
    ("ctc_lin", "modules"),
    ("log_softmax", "hparams"),
)


# --------------------------------------------------------------------------
# The model section of a recipe's YAML
# --------------------------------------------------------------------------

_KEY_RE = re.compile(r"^([A-Za-z_][\w.\-]*)\s*:(?:\s|$)")


def _strip_comment(line):
    """``line`` without its ``# comment`` (quotes respected)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _strip_quoted(code):
    return re.sub(r"\"[^\"]*\"|'[^']*'", "", code)


def _split_blocks(text):
    """Top-level ``[key, lines]`` blocks of a YAML text (column-0 comments dropped)."""
    blocks = []
    for line in text.splitlines():
        if _KEY_RE.match(line):
            blocks.append([_KEY_RE.match(line).group(1), [line]])
        elif not line.strip() or line[0] in " \t-]}":
            if blocks:
                blocks[-1][1].append(line)
        elif line.startswith(("#", "---", "...", "%")):
            continue
        elif blocks:
            blocks[-1][1].append(line)
    for block in blocks:  # trailing blank / comment lines
        while len(block[1]) > 1 and not _strip_comment(block[1][-1]).strip():
            block[1].pop()
    return blocks


def _block_links(lines):
    """(!ref names, aliases used, anchors defined) of a block."""
    refs, aliases, anchors = set(), set(), set()
    for line in lines:
        code = _strip_comment(line)
        for m in re.finditer(r"!(?:ref|copy)\b(.*)", code):
            refs.update(re.findall(r"<([A-Za-z_][\w\-]*)", m.group(1)))
        bare = _strip_quoted(code)
        aliases.update(re.findall(r"(?:^|[\s\[{,:])\*([\w\-]+)", bare))
        anchors.update(re.findall(r"(?:^|[\s\[{,:])&([\w\-]+)", bare))
    return refs, aliases, anchors


def model_yaml_section(text, roots=None):
    """The part of a recipe's YAML that builds the model.

    Arguments
    ---------
    text : str
        A HyperPyYAML file (as written, or as resolved by SpeechBrain's
        ``create_experiment_directory``, where references became aliases).
    roots : dict, optional
        ``{name: where}`` of the objects needed (``where`` is ``"modules"``
        for entries of the ``modules:`` mapping, ``"hparams"`` for top-level
        keys); defaults to what :class:`sb_meta.asr.CTCASRBrain` uses.

    Returns
    -------
    (str, dict)
        The YAML of every top-level key the roots need (transitively, in
        their original order; keys that clash with the names an export
        defines are renamed ``src_<key>``), and ``{root: top-level key}``.

    Raises
    ------
    ValueError
        When a root cannot be found, naming it.

    Example
    -------
    >>> text = '''
    ... seed: 3
    ... n_mels: 20
    ... data_folder: !PLACEHOLDER
    ... compute_features: !new:speechbrain.lobes.features.Fbank
    ...     n_mels: !ref <n_mels>
    ... norm: !new:speechbrain.processing.features.InputNormalization
    ... modules:
    ...     normalize: !ref <norm>
    ... '''
    >>> section, names = model_yaml_section(
    ...     text, {"compute_features": "hparams", "normalize": "modules"})
    >>> print(section)
    n_mels: 20
    compute_features: !new:speechbrain.lobes.features.Fbank
        n_mels: !ref <n_mels>
    norm: !new:speechbrain.processing.features.InputNormalization
    >>> names
    {'compute_features': 'compute_features', 'normalize': 'norm'}
    """
    roots = dict(_ROOTS) if roots is None else dict(roots)
    blocks = _split_blocks(text)
    order = [k for k, _ in blocks]
    lines_of = {k: lines for k, lines in blocks}
    links = {k: _block_links(lines) for k, lines in blocks}
    anchor_owner = {}
    header_anchor = {}
    for k, lines in blocks:
        for a in links[k][2]:
            anchor_owner.setdefault(a, k)
        m = re.match(r"^[^:]+:\s*&([\w\-]+)", lines[0])
        if m:
            header_anchor[m.group(1)] = k

    module_entries = {}
    if "modules" in lines_of:
        children = [ln for ln in lines_of["modules"][1:] if _strip_comment(ln).strip()]
        indent = min((len(ln) - len(ln.lstrip()) for ln in children), default=0)
        for ln in children:
            if len(ln) - len(ln.lstrip()) != indent:
                continue
            m = re.match(r"^\s*([\w\-]+)\s*:\s*(.*)$", _strip_comment(ln))
            if m:
                module_entries[m.group(1)] = m.group(2).strip()
        inline = re.match(r"^modules\s*:\s*\{(.*)\}\s*$", _strip_comment(lines_of["modules"][0]))
        if inline:
            for item in inline.group(1).split(","):
                if ":" in item:
                    name, value = item.split(":", 1)
                    module_entries[name.strip()] = value.strip()

    names = {}
    for root, where in roots.items():
        key = None
        if where == "modules" and root in module_entries:
            value = module_entries[root]
            ref = re.fullmatch(r"!ref\s+<([A-Za-z_][\w\-]*)>", value)
            alias = re.fullmatch(r"\*([\w\-]+)", value)
            if ref:
                key = ref.group(1)
            elif alias and alias.group(1) in header_anchor:
                key = header_anchor[alias.group(1)]
            else:
                raise ValueError(
                    f"modules entry {root!r} ({value!r}) must reference a top-level key "
                    f"(e.g. `{root}: !ref <{root}>`) for the model to be exported"
                )
        elif root in lines_of:
            key = root
        if key is None or key not in lines_of:
            raise ValueError(
                f"the YAML defines no {root!r} "
                + ("(in `modules:` or as a top-level key)" if where == "modules" else "top-level key")
                + "; it is needed to export the model"
            )
        names[root] = key

    needed, todo = set(), list(names.values())
    while todo:
        k = todo.pop()
        if k in needed:
            continue
        needed.add(k)
        refs, aliases, _ = links[k]
        deps = {r for r in refs if r in lines_of}
        deps |= {anchor_owner[a] for a in aliases if a in anchor_owner}
        todo.extend(deps - needed)

    renames = {}
    for k in needed:
        if k in _RESERVED_KEYS or k.startswith("sbmeta_"):
            new = f"src_{k}"
            while new in lines_of:
                new = "src_" + new
            renames[k] = new
    out = []
    for k in order:
        if k not in needed:
            continue
        block = "\n".join(lines_of[k])
        for old, new in renames.items():
            block = re.sub(rf"<{re.escape(old)}(?=[>.\[])", f"<{new}", block)
        if k in renames:
            block = renames[k] + block[len(k):]
        out.append(block)
    names = {root: renames.get(k, k) for root, k in names.items()}
    section = "\n".join(out)
    used = set(re.findall(r"(?:^|[\s\[{,:])\*([\w\-]+)", _strip_quoted(section), flags=re.M))
    section = re.sub(  # anchors nobody in the section refers to
        r"(?<=[\s\[{,:])&([\w\-]+) ?",
        lambda m: m.group(0) if m.group(1) in used else "",
        section,
    )
    return section, names


def _find_hparams_yaml(brain, hparams_file):
    """(text, description) of the YAML the brain was built from."""
    if hparams_file is not None:
        if isinstance(hparams_file, str) and "\n" in hparams_file:
            return hparams_file, "YAML text given to export_brain"
        path = pathlib.Path(hparams_file)
        if not path.is_file():
            raise FileNotFoundError(f"hparams file {path} does not exist")
        return path.read_text(encoding="utf-8"), str(path.resolve())
    out = getattr(brain.hparams, "output_folder", None)
    if out and (pathlib.Path(out) / "hyperparams.yaml").is_file():
        path = pathlib.Path(out) / "hyperparams.yaml"
        return path.read_text(encoding="utf-8"), str(path.resolve())
    raise ValueError(
        "export_brain needs the YAML the model was built from: pass hparams_file= "
        "(the recipe's hyperparameters file or its text), or train through a recipe, "
        "whose output_folder holds the hyperparams.yaml SpeechBrain saved"
    )


# --------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------


def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _sp_control_piece(piece):
    """A serialized ``ModelProto.pieces`` entry: a CONTROL piece named ``piece``."""
    name = piece.encode("utf-8")
    body = b"\x0a" + _varint(len(name)) + name + b"\x15" + struct.pack("<f", 0.0) + b"\x18" + _varint(3)
    return b"\x0a" + _varint(len(body)) + body


def shifted_sentencepiece(model_bytes, n_outputs):
    """A SentencePiece model whose ids are sb-meta's CTC ids.

    A ``<blank>`` control piece is put at id 0 (every other id moves up by
    one, as :class:`sb_meta.asr.SentencePieceTokenizer` numbers them) and
    ``<unused_i>`` control pieces fill the ids up to ``n_outputs - 1``.
    Control pieces decode to nothing. (Repeated protobuf fields concatenate,
    so pieces are added by prepending / appending serialized entries.)

    Arguments
    ---------
    model_bytes : bytes
        The original ``.model`` file.
    n_outputs : int
        Outputs of the network (blank included).

    Returns
    -------
    bytes
    """
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
    pieces = {sp.id_to_piece(i) for i in range(sp.vocab_size())}
    if sp.vocab_size() + 1 > n_outputs:
        raise ValueError(
            f"the SentencePiece model has {sp.vocab_size()} pieces (+ blank) but the "
            f"network has only {n_outputs} outputs"
        )

    def fresh(name):
        while name in pieces:
            name = name[:-1] + "_>"
        pieces.add(name)
        return name

    head = _sp_control_piece(fresh(BLANK_LABEL))
    tail = b"".join(
        _sp_control_piece(fresh(f"<unused_{i}>")) for i in range(sp.vocab_size() + 1, n_outputs)
    )
    shifted = head + bytes(model_bytes) + tail
    check = sentencepiece.SentencePieceProcessor(model_proto=shifted)
    if check.vocab_size() != n_outputs or not check.is_control(0):
        raise RuntimeError("could not build the blank-shifted SentencePiece model")
    return shifted


def _tokenizer_export(tokenizer, n_outputs):
    """(file bytes, YAML of ``tokenizer``, metadata) for an sb-meta tokenizer."""
    kind = getattr(tokenizer, "kind", None)
    if kind == "char":
        from speechbrain.dataio.encoder import CTCTextEncoder

        chars = list(tokenizer.chars)
        if len(chars) + 1 > n_outputs:
            raise ValueError(
                f"the tokenizer has {len(chars)} characters (+ blank) but the network has "
                f"only {n_outputs} outputs"
            )
        enc = CTCTextEncoder()
        enc.insert_blank(BLANK_LABEL, index=0)
        for i, c in enumerate(chars):
            enc.insert_label(c, i + 1)
        for i in range(len(chars) + 1, n_outputs):
            enc.insert_label(f"<unused_{i}>", i)
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "tokenizer.ckpt"
            enc.save(path)
            data = path.read_bytes()
        yaml = (
            "tokenizer: !new:speechbrain.dataio.encoder.CTCTextEncoder\n"
            "__tokenizer_size: !apply:speechbrain.dataio.encoder.CategoricalEncoder.expect_len\n"
            "    - !ref <tokenizer>\n"
            "    - !ref <sbmeta_output_neurons>"
        )
        meta = {"kind": "char", "labels": len(chars), "blank_index": 0}
        return data, yaml, meta
    if kind == "sentencepiece":
        data = shifted_sentencepiece(pathlib.Path(tokenizer.model_path).read_bytes(), n_outputs)
        yaml = "tokenizer: !new:sentencepiece.SentencePieceProcessor"
        meta = {"kind": "sentencepiece", "pieces": tokenizer.vocab_size - 1, "blank_index": 0}
        return data, yaml, meta
    raise TypeError(
        f"cannot export tokenizer {type(tokenizer).__name__}; expected an "
        "sb_meta.asr.CharTokenizer or SentencePieceTokenizer"
    )


# --------------------------------------------------------------------------
# Atomic folder writing, saving and verification
# --------------------------------------------------------------------------


def _is_export(folder):
    folder = pathlib.Path(folder)
    return (
        (folder / HPARAMS_FILE).is_file()
        or (folder / META_FILE).is_file()
        or (folder / ADAPTERS_META_FILE).is_file()
    )


def _exchange(a, b):
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _replace_dir(new, dest):
    """Put folder ``new`` at ``dest``; an existing ``dest`` is kept until ``new`` is in place."""
    if not os.path.lexists(dest):
        os.rename(new, dest)
        return
    if _exchange(new, dest):  # `new` now holds the previous export
        shutil.rmtree(new, ignore_errors=True)
        return
    old = tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent)
    os.rmdir(old)
    os.rename(dest, old)
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(dest):
    """Yield a temporary folder that replaces ``dest`` when the block succeeds.

    The temporary folder is created next to ``dest`` (same file system) and
    removed if the block raises; an existing ``dest`` is only replaced by a
    complete new folder. ``dest`` must be absent, empty, or a previous export.

    Example
    -------
    >>> import tempfile, pathlib
    >>> dest = pathlib.Path(tempfile.mkdtemp()) / "out"
    >>> with atomic_folder(dest) as tmp:
    ...     _ = (tmp / "hyperparams.yaml").write_text("a: 1")
    >>> sorted(p.name for p in dest.iterdir())
    ['hyperparams.yaml']
    """
    dest = pathlib.Path(dest).absolute()
    if os.path.lexists(dest):
        if not dest.is_dir():
            raise FileExistsError(f"{dest} exists and is not a folder")
        if any(dest.iterdir()) and not _is_export(dest):
            raise FileExistsError(
                f"{dest} exists and is not a model export (no {HPARAMS_FILE}); "
                "refusing to replace it"
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_loadable(obj, path):
    """Save ``obj`` as SpeechBrain's default save hook would, on the CPU."""
    from speechbrain.utils.checkpoints import (
        DEFAULT_SAVE_HOOKS,
        get_default_hook,
        torch_save,
        torch_save_once_per_node,
    )

    hook = get_default_hook(obj, DEFAULT_SAVE_HOOKS)
    if hook is not None and hook not in (torch_save, torch_save_once_per_node):
        if isinstance(obj, torch.nn.Module):
            obj = copy.deepcopy(obj).to("cpu")
        hook(obj, path)
    elif isinstance(obj, torch.nn.Module):
        # torch_save is main-process-only; exports are written by whoever calls
        torch.save({k: v.detach().cpu() for k, v in obj.state_dict().items()}, path)
    else:
        raise TypeError(f"don't know how to save {type(obj).__name__} to {path}")


@contextlib.contextmanager
def _eval_mode(*modules):
    """Eval mode inside the block; each module's own mode restored after."""
    saved = [(m, m.training) for mod in modules if mod is not None for m in mod.modules()]
    try:
        for mod in modules:
            if mod is not None:
                mod.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


def _probe_batch(sample_rate):
    """Two deterministic pseudo-utterances (1 s and 0.6 s) for checking exports."""
    g = torch.Generator().manual_seed(0)
    n = int(sample_rate)
    t = torch.arange(n) / float(sample_rate)
    wavs = 0.05 * torch.randn(2, n, generator=g)
    wavs[0] += 0.3 * torch.sin(2 * torch.pi * 300.0 * t)
    wavs[1] += 0.3 * torch.sin(2 * torch.pi * 550.0 * t)
    lens = torch.tensor([1.0, 0.6])
    wavs[1, int(0.6 * n):] = 0.0
    return wavs, lens


def _load_encoder_asr(source, savedir=None, device=None):
    """SpeechBrain's ``EncoderASR.from_hparams``, offline."""
    from speechbrain.inference.ASR import EncoderASR
    from speechbrain.utils.fetching import FetchConfig

    kwargs = {"fetch_config": FetchConfig(allow_network=False)}
    if savedir is not None:
        kwargs["savedir"] = str(savedir)
    if device is not None:
        kwargs["run_opts"] = {"device": str(device)}
    return EncoderASR.from_hparams(source=str(source), **kwargs)


def _verify_export(folder, reference, sample_rate, device):
    """Load ``folder`` with SpeechBrain's EncoderASR and compare with ``reference``."""
    try:
        asr = _load_encoder_asr(folder, savedir=folder, device=device)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(
            f"the export does not load with SpeechBrain's EncoderASR.from_hparams: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    wavs, lens = _probe_batch(sample_rate)
    with torch.no_grad():
        got = asr.encode_batch(wavs, lens).detach().cpu()
        want = reference(wavs, lens).detach().cpu()
        asr.transcribe_batch(wavs, lens)  # decoding and tokenizer work
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        detail = (
            f"shapes {tuple(got.shape)} vs {tuple(want.shape)}"
            if got.shape != want.shape
            else f"max difference {float((got - want).abs().max()):.3g}"
        )
        raise RuntimeError(
            "the exported model does not reproduce the model's outputs "
            f"({detail}); is the YAML the one the model was built from?"
        )


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _versions():
    import sb_meta

    return {"sb_meta": sb_meta.__version__, "speechbrain": sb.__version__, "torch": torch.__version__}


def _write_json(path, data):
    pathlib.Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------
# Export of a trained brain
# --------------------------------------------------------------------------

_HPARAMS_TEMPLATE = """\
# ############################################################################
# SpeechBrain pretrained CTC speech recognizer, exported by sb-meta {version}.
#
#   from speechbrain.inference.ASR import EncoderASR
#   asr = EncoderASR.from_hparams(source="<this folder>", savedir="<this folder>")
#   asr.transcribe_file("speech.wav")
#
# The pretrainer fetches <loadable>.ckpt from the source folder: model.ckpt
# (ModuleList([enc, ctc_lin])), normalizer.ckpt (feature statistics) and
# tokenizer.ckpt ({tokenizer_desc}).
# sbmeta.json holds the meta-learning configuration and provenance.
# ############################################################################

# ---- model: copied from {source}
{model_section}

# ---- inference interface (written by sb-meta)
sbmeta_sample_rate: {sample_rate}
sbmeta_output_neurons: {output_neurons}

audio_normalizer: !new:speechbrain.dataio.preprocess.AudioNormalizer
    sample_rate: !ref <sbmeta_sample_rate>

encoder: !new:speechbrain.nnet.containers.LengthsCapableSequential
    compute_features: !ref <{compute_features}>
    normalize: !ref <{normalize}>
    enc: !ref <{enc}>
    ctc_lin: !ref <{ctc_lin}>
    log_softmax: !ref <{log_softmax}>

model: !new:torch.nn.ModuleList
    - [!ref <{enc}>, !ref <{ctc_lin}>]

decoding_function: !name:speechbrain.decoders.ctc_greedy_decode
    blank_id: 0

{tokenizer_section}

modules:
    encoder: !ref <encoder>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        model: !ref <model>
        normalizer: !ref <{normalize}>
        tokenizer: !ref <tokenizer>
{extra_loadables}"""


def _brain_reference(brain):
    """``f(wavs, lens) -> log-probs`` through the brain's own ``compute_forward``."""
    from speechbrain.dataio.batch import PaddedBatch

    def reference(wavs, lens):
        device = brain.device
        items = []
        for i, (w, rel) in enumerate(zip(wavs, lens)):
            n = int(round(float(rel) * wavs.shape[1]))
            items.append({"id": f"probe{i}", "sig": w[:n], "tokens": torch.LongTensor([1]), "wrd": "A"})
        batch = PaddedBatch(items)
        with _eval_mode(brain.modules), torch.no_grad():
            out = brain.compute_forward(batch, sb.Stage.TEST)
        out = out["p_ctc"] if isinstance(out, dict) else out
        return out.to(device)

    return reference


def export_brain(brain, folder, tokenizer=None, hparams_file=None, verify=True):
    """Write a trained :class:`sb_meta.asr.CTCASRBrain` as a SpeechBrain pretrained folder.

    ``speechbrain.inference.ASR.EncoderASR.from_hparams(source=folder,
    savedir=folder)`` loads the result offline; see the module documentation
    for its layout. Call it on the main process only (e.g. through
    ``speechbrain.utils.distributed.run_on_main``).

    Arguments
    ---------
    brain : sb_meta.asr.CTCASRBrain
        The trained brain (modules ``enc``, ``ctc_lin``, ``normalize``;
        hparams ``compute_features``, ``log_softmax``).
    folder : str or pathlib.Path
        Destination; replaced atomically if it holds a previous export.
    tokenizer : CharTokenizer or SentencePieceTokenizer, optional
        Defaults to ``brain.tokenizer``.
    hparams_file : str or pathlib.Path, optional
        The YAML the brain was built from (a path, or its text). Defaults to
        the ``hyperparams.yaml`` SpeechBrain saved in
        ``brain.hparams.output_folder``.
    verify : bool
        Load the new folder with ``EncoderASR.from_hparams`` and check that it
        reproduces the brain's log-probabilities before it replaces ``folder``.

    A brain meta-trained with the ``lora`` or ``lhuc`` add-ons is exported
    with its adapters merged into the layers they wrap (a plain model);
    ``houlsby`` adapters cannot be merged (``ValueError``).

    Returns
    -------
    pathlib.Path
        The export folder.

    Example
    -------
    >>> export_brain(brain, "results/pretrained", hparams_file="hparams.yaml")  # doctest: +SKIP
    """
    merging = [a for a in (getattr(brain, "addons", None) or []) if hasattr(a, "merged")]
    if merging and not getattr(brain, "_sbmeta_adapters_merged", False):
        # adapters of PEFT add-ons (LoRA, LHUC) are folded into the layers they
        # wrap for the export, then put back; Houlsby adapters raise here
        with contextlib.ExitStack() as stack:
            for addon in merging:
                stack.enter_context(addon.merged(brain))
            brain._sbmeta_adapters_merged = True
            stack.callback(delattr, brain, "_sbmeta_adapters_merged")
            return export_brain(brain, folder, tokenizer, hparams_file, verify)
    tokenizer = tokenizer if tokenizer is not None else getattr(brain, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("export_brain needs a tokenizer (set brain.tokenizer or pass tokenizer=)")
    for name in ("enc", "ctc_lin", "normalize"):
        if name not in brain.modules:
            raise ValueError(f"the brain has no module {name!r}; export_brain expects a CTCASRBrain")
    for name in ("compute_features", "log_softmax"):
        if not hasattr(brain.hparams, name):
            raise ValueError(f"the brain has no hparams {name!r}; export_brain expects a CTCASRBrain")
    text, source = _find_hparams_yaml(brain, hparams_file)
    section, names = model_yaml_section(text)
    sample_rate = int(getattr(brain.hparams, "sample_rate", 16000))
    reference = _brain_reference(brain)
    with torch.no_grad():
        n_outputs = int(reference(*_probe_batch(sample_rate)).shape[-1])
    tok_bytes, tok_yaml, tok_meta = _tokenizer_export(tokenizer, n_outputs)

    compute_features = brain.hparams.compute_features
    extra = {}
    if any(True for _ in compute_features.parameters()):
        extra["compute_features"] = compute_features
    extra_yaml = "".join(f"        {k}: !ref <{names[k]}>\n" for k in extra)
    import sb_meta

    hparams_text = _HPARAMS_TEMPLATE.format(
        version=sb_meta.__version__,
        tokenizer_desc="CTCTextEncoder labels" if tok_meta["kind"] == "char"
        else "SentencePiece model, blank at id 0",
        source=source,
        model_section=section,
        sample_rate=sample_rate,
        output_neurons=n_outputs,
        tokenizer_section=tok_yaml,
        extra_loadables=extra_yaml,
        **names,
    )

    meta_modules = {}
    strategy = getattr(brain, "strategy", None)
    if strategy is not None:
        meta_modules = strategy.meta_modules()
    hp = brain.hparams
    counter = getattr(hp, "epoch_counter", None)
    info = {
        "format": FORMAT,
        "interface": "speechbrain.inference.ASR.EncoderASR",
        "created": _now(),
        "versions": _versions(),
        "strategy": getattr(strategy, "name", None),
        "meta_config": _jsonable(dict(getattr(brain, "meta_config", {}) or {})),
        "meta_state": {
            "file": META_STATE_FILE,
            "strategy": getattr(strategy, "name", None),
            "modules": sorted(meta_modules),
        } if meta_modules else None,
        "metasgd_step_sizes": META_STATE_FILE if "metasgd_lr" in meta_modules else None,
        "tokenizer": dict(tok_meta, file="tokenizer.ckpt", output_neurons=n_outputs),
        "sample_rate": sample_rate,
        "files": sorted(
            [HPARAMS_FILE, "model.ckpt", "normalizer.ckpt", "tokenizer.ckpt", META_FILE]
            + [f"{k}.ckpt" for k in extra]
            + ([META_STATE_FILE] if meta_modules else [])
        ),
        "base_model": {
            "kind": "trained",
            "brain": type(brain).__qualname__,
            "hparams_file": source,
            "output_folder": getattr(hp, "output_folder", None),
            "seed": getattr(hp, "seed", None),
            "epoch": getattr(counter, "current", None),
        },
        "adaptations": [],
    }

    with atomic_folder(folder) as tmp:
        (tmp / HPARAMS_FILE).write_text(hparams_text, encoding="utf-8")
        _save_loadable(torch.nn.ModuleList([brain.modules.enc, brain.modules.ctc_lin]), tmp / "model.ckpt")
        _save_loadable(brain.modules.normalize, tmp / "normalizer.ckpt")
        for key, obj in extra.items():
            _save_loadable(obj, tmp / f"{key}.ckpt")
        (tmp / "tokenizer.ckpt").write_bytes(tok_bytes)
        if meta_modules:
            _save_loadable(torch.nn.ModuleDict(meta_modules), tmp / META_STATE_FILE)
        _write_json(tmp / META_FILE, _jsonable(info))
        if verify:
            _verify_export(tmp, reference, sample_rate, brain.device)
    logger.info("exported the model to %s", folder)
    return pathlib.Path(folder)


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def load_model(source, savedir=None, device=None, adapters=None):
    """Load a SpeechBrain pretrained CTC recognizer as an :class:`AdaptableASR`.

    Loading is offline (``FetchConfig(allow_network=False)``).

    Arguments
    ---------
    source : str or pathlib.Path
        An export folder (:func:`export_brain`, :meth:`AdaptableASR.export`),
        or a model hub id (``org/name``) already in the local cache.
    savedir : str or pathlib.Path, optional
        Where SpeechBrain collects the files; defaults to the folder itself
        (for hub ids: the hub cache).
    device : str, optional
        ``"cpu"``, ``"cuda:0"``...; default SpeechBrain's choice.
    adapters : str or pathlib.Path, optional
        A folder written by :meth:`AdaptableASR.export_adapters` for this
        base model: the adapters are applied on top of it (same as
        ``load_model(source).with_adapters(adapters)``).

    Returns
    -------
    AdaptableASR

    Raises
    ------
    FileNotFoundError
        For a missing folder, an incomplete export (naming the missing files),
        or a hub id that is not cached.
    ValueError
        When ``adapters`` were made for another base model.

    Example
    -------
    >>> model = load_model("results/pretrained")  # doctest: +SKIP
    >>> model.transcribe_file("speech.wav")  # doctest: +SKIP
    """
    from speechbrain.utils.fetching import FetchConfig, fetch

    src = str(source)
    local = pathlib.Path(src)
    info = None
    if local.is_dir():
        if not (local / HPARAMS_FILE).is_file():
            raise FileNotFoundError(f"{local} is not a SpeechBrain pretrained folder: no {HPARAMS_FILE}")
        if (local / META_FILE).is_file():
            try:
                info = json.loads((local / META_FILE).read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ValueError(f"{local / META_FILE} is corrupt: {exc}") from exc
            missing = [f for f in info.get("files", []) if not (local / f).is_file()]
            if missing:
                raise FileNotFoundError(f"the export in {local} is incomplete: missing {missing}")
        savedir = savedir if savedir is not None else local
        hub = False
    elif local.exists():
        raise ValueError(f"{local} is a file; give the model's folder")
    elif _HUB_ID_RE.match(src) and not src.startswith((".", "/")):
        hub = True
    else:
        raise FileNotFoundError(f"model folder {src} does not exist")

    try:
        asr = _load_encoder_asr(src, savedir=savedir, device=device)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        if hub:
            raise FileNotFoundError(
                f"cannot load model {src!r}: it is not a local folder and not in the local "
                f"model-hub cache, and sb-meta loads models offline; download it first or "
                f"give the folder of an export ({type(exc).__name__}: {exc})"
            ) from exc
        raise ValueError(
            f"cannot load the SpeechBrain model in {src}: {type(exc).__name__}: {exc}"
        ) from exc

    offline = FetchConfig(allow_network=False)

    def fetched(name):
        return pathlib.Path(fetch(name, source=src, savedir=savedir, fetch_config=offline))

    yaml_text = fetched(HPARAMS_FILE).read_text(encoding="utf-8")
    if hub:
        try:
            info = json.loads(fetched(META_FILE).read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001 - a plain SpeechBrain model has none
            info = None
    meta_state = None
    if info and info.get("meta_state"):
        path = fetched(info["meta_state"]["file"])
        try:
            meta_state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"cannot read the meta-learned state {path}: {exc}") from exc

    pretrainer = asr.hparams.pretrainer
    loadables = dict(pretrainer.loadables)
    files = {}
    for name, obj in loadables.items():
        if not isinstance(obj, torch.nn.Module) and name in pretrainer.paths:
            files[name] = pathlib.Path(pretrainer.paths[name]).read_bytes()
    model = AdaptableASR(
        asr, yaml_text=yaml_text, info=info, source=src, loadables=loadables, files=files,
        meta_state=meta_state,
    )
    model._check_tokenizer()
    if adapters is not None:
        model = model.with_adapters(adapters)
    return model


# --------------------------------------------------------------------------
# Adaptation
# --------------------------------------------------------------------------


class AdaptationError(RuntimeError):
    """Test-time adaptation failed (e.g. diverged to non-finite weights)."""


class _AdaptBrain(MetaBrain):
    """Runs the layers of an ``EncoderASR`` encoder with a CTC objective.

    Its modules are the encoder's layers under their own names (``enc``,
    ``ctc_lin``...), so parameter names, ``adapt_params`` patterns and the
    Meta-SGD step sizes are those of training.
    """

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        x = wavs
        for name, arg in zip(self.hparams.layer_names, self.hparams.lengths_args):
            layer = self.modules[name]
            x = layer(x, **{arg: wav_lens}) if arg else layer(x)
            if isinstance(x, tuple):
                x = x[0]
        return x, wav_lens

    def compute_objectives(self, predictions, batch, stage):
        log_probs, wav_lens = predictions
        tokens, tokens_lens = batch.tokens
        return self.hparams.ctc_cost(log_probs, tokens, wav_lens, tokens_lens)


@contextlib.contextmanager
def _quiet(name, level=logging.WARNING):
    log = logging.getLogger(name)
    saved = log.level
    log.setLevel(max(level, saved))
    try:
        yield
    finally:
        log.setLevel(saved)


def _ctc_cost(blank):
    try:
        from sb_meta.losses import ctc_loss
    except ImportError:  # pragma: no cover - first-order fallback
        from speechbrain.nnet.losses import ctc_loss
    return functools.partial(ctc_loss, blank_index=blank)


def _ctc_min_frames(ids):
    """Frames CTC needs for ``ids``: one per token plus a blank between repeats."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)


class AdaptableASR:
    """A SpeechBrain ``EncoderASR`` that adapts from a few transcribed utterances.

    Made by :func:`load_model` and :meth:`adapt`. Transcription is
    SpeechBrain's own (``self.asr`` is the ``EncoderASR``).

    Arguments
    ---------
    asr : speechbrain.inference.ASR.EncoderASR
        The recognizer.
    yaml_text : str, optional
        Its ``hyperparams.yaml`` (needed by :meth:`export`).
    info : dict, optional
        Contents of ``sbmeta.json`` (None for a plain SpeechBrain model).
    source : str, optional
        Where it was loaded from.
    loadables : dict, optional
        The pretrainer's loadables (name -> object of *this* model).
    files : dict, optional
        Raw bytes of the loadables stored as files (the tokenizer).
    meta_state : dict, optional
        State of the meta-learned strategy modules (Meta-SGD step sizes).
    adapters : dict, optional
        Parameter-efficient adapters this model carries (made by
        :meth:`adapt` with ``addons`` or by :meth:`with_adapters`): add-on
        names, their configuration, adapter parameter names and the identity
        of the base model (see :meth:`export_adapters`).
    """

    def __init__(self, asr, yaml_text=None, info=None, source=None, loadables=None,
                 files=None, meta_state=None, adapters=None):
        self.asr = asr
        self.yaml_text = yaml_text
        self.info = info
        self.source = source
        self._loadables = dict(loadables or {})
        self._files = dict(files or {})
        self.meta_state = meta_state
        self._registry = None
        self.last_adaptation = None
        self.adapters = adapters

    def __repr__(self):
        return (
            f"AdaptableASR(source={self.source!r}, strategy={self.trained_strategy!r}, "
            f"adaptations={len(self.adaptations)})"
        )

    # ------------------------------------------------------------ properties
    @property
    def device(self):
        return self.asr.device

    @property
    def sample_rate(self):
        """Sample rate the model expects (audio is resampled to it)."""
        return int(getattr(self.asr.audio_normalizer, "sample_rate", 16000))

    @property
    def tokenizer(self):
        return self.asr.tokenizer

    @property
    def trained_strategy(self):
        """The strategy the model was meta-trained with (from ``sbmeta.json``)."""
        return (self.info or {}).get("strategy")

    @property
    def meta_config(self):
        return dict((self.info or {}).get("meta_config") or {})

    @property
    def adaptations(self):
        """Adaptation records, oldest first (kept in ``sbmeta.json``)."""
        return list((self.info or {}).get("adaptations") or [])

    @property
    def has_step_sizes(self):
        """Whether the model has meta-learned Meta-SGD step sizes."""
        return bool(self.meta_state) and bool((self.info or {}).get("metasgd_step_sizes"))

    @property
    def default_strategy(self):
        """``metasgd`` when the model has step sizes, else ``finetune``."""
        return "metasgd" if self.has_step_sizes else "finetune"

    @property
    def blank_index(self):
        fn = self.asr.hparams.decoding_function
        return int(getattr(fn, "keywords", {}).get("blank_id", 0))

    # ------------------------------------------------------------ audio and text
    def load_audio(self, path, what="audio file"):
        """A mono waveform at :attr:`sample_rate`, with clear errors naming ``path``."""
        from speechbrain.dataio import audio_io

        p = pathlib.Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{what} {p} does not exist")
        try:
            signal, sr = audio_io.load(str(p), channels_first=False)
            wav = self.asr.audio_normalizer(signal, sr)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"cannot read {what} {p}: {type(exc).__name__}: {exc}") from exc
        if wav.numel() == 0:
            raise ValueError(f"{what} {p} is empty (0 samples)")
        if not torch.isfinite(wav).all():
            raise ValueError(f"{what} {p} contains non-finite samples")
        return wav

    def _check_tokenizer(self):
        from speechbrain.dataio.encoder import CTCTextEncoder

        tok = self.tokenizer
        if isinstance(tok, CTCTextEncoder) and not tok.lab2ind:
            raise ValueError(
                f"the tokenizer of {self.source} did not load (empty or corrupt tokenizer file)"
            )

    def encode_transcript(self, text, name="transcript"):
        """Token ids of ``text``; raises ``ValueError`` naming ``name`` for an empty
        transcript or characters the tokenizer does not know."""
        import sentencepiece
        from speechbrain.dataio.encoder import CTCTextEncoder

        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"empty transcript for {name}")
        tok = self.tokenizer
        if isinstance(tok, CTCTextEncoder):
            unknown = sorted({c for c in text if c not in tok.lab2ind})
            if unknown:
                alphabet = "".join(
                    lab for _, lab in sorted(tok.ind2lab.items())
                    if isinstance(lab, str) and len(lab) == 1
                )
                raise ValueError(
                    f"transcript of {name} ({text!r}) has characters the model does not know: "
                    f"{unknown}; its alphabet is {alphabet!r}"
                )
            ids = [tok.lab2ind[c] for c in text]
        elif isinstance(tok, sentencepiece.SentencePieceProcessor):
            ids = tok.encode_as_ids(text)
            unk = tok.unk_id()
            if unk in ids:
                unknown = sorted({c for c in text if not c.isspace() and unk in tok.encode_as_ids(c)})
                raise ValueError(
                    f"transcript of {name} ({text!r}) has characters the model's "
                    f"SentencePiece vocabulary does not cover: {unknown}"
                )
        else:
            raise TypeError(f"unsupported tokenizer {type(tok).__name__}")
        if self.blank_index in ids:
            raise ValueError(f"transcript of {name} ({text!r}) encodes to the CTC blank")
        if not ids:
            raise ValueError(f"transcript of {name} ({text!r}) encodes to no token")
        return ids

    # ------------------------------------------------------------ inference
    def transcribe_batch(self, wavs, wav_lens):
        """SpeechBrain's ``EncoderASR.transcribe_batch``: (words, token ids)."""
        return self.asr.transcribe_batch(wavs, wav_lens)

    def transcribe_file(self, path):
        """The transcript of one audio file."""
        wav = self.load_audio(path)
        words, _ = self.transcribe_batch(wav.unsqueeze(0), torch.tensor([1.0]))
        return str(words[0])

    def transcribe_waveforms(self, wavs, batch_size=8):
        """Transcripts of a list of 1-D waveforms (at :attr:`sample_rate`), in order,
        batched by similar length."""
        order = sorted(range(len(wavs)), key=lambda i: -len(wavs[i]))
        out = [None] * len(wavs)
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start : start + batch_size]
            batch, lens = sb.utils.data_utils.batch_pad_right([wavs[i] for i in idx])
            words, _ = self.transcribe_batch(batch, lens)
            for i, w in zip(idx, words):
                out[i] = str(w)
        return out

    def log_probs(self, wavs, wav_lens):
        """The encoder's output (CTC log-probabilities) ``[batch, time, outputs]``."""
        with torch.no_grad():
            return self.asr.encode_batch(wavs, wav_lens)

    # ------------------------------------------------------------ strategies
    @property
    def registry(self):
        if self._registry is None:
            from sb_meta.plugins import PluginRegistry

            self._registry = PluginRegistry(extra=self.meta_config.get("plugins") or (), strict=False)
        return self._registry

    def check_strategy(self, name):
        """The strategy class for test-time adaptation with ``name``.

        Raises
        ------
        sb_meta.plugins.UnknownPluginError
            For an unregistered name (listing the valid ones).
        ValueError
            For a strategy that cannot adapt at test time (not a gradient
            strategy), or one whose meta-learned state this model lacks.
        """
        from sb_meta.strategy import GradientStrategy, Strategy

        cls = self.registry.get_strategy(name)
        if not issubclass(cls, GradientStrategy):
            usable = sorted(
                n for n, i in self.registry.strategies.items() if issubclass(i.cls, GradientStrategy)
            )
            raise ValueError(
                f"strategy {name!r} cannot adapt at test time (not a gradient strategy); "
                f"use one of: {', '.join(usable)}"
            )
        if cls.meta_modules is not Strategy.meta_modules:
            state = (self.info or {}).get("meta_state") or {}
            if not self.meta_state or state.get("strategy") != name:
                raise ValueError(
                    f"strategy {name!r} adapts with meta-learned state (e.g. Meta-SGD step "
                    f"sizes) that this model does not have (it was trained with "
                    f"{self.trained_strategy!r}); use 'finetune' or another strategy"
                )
        return cls

    # ------------------------------------------------------------ adaptation
    def _support(self, wavs_or_paths, transcripts, ids):
        if isinstance(wavs_or_paths, (str, os.PathLike)) or torch.is_tensor(wavs_or_paths):
            raise TypeError("pass a list of audio files or 1-D waveforms, not a single one")
        items, transcripts = list(wavs_or_paths), list(transcripts)
        if not items:
            raise ValueError("no support utterance given")
        if len(items) != len(transcripts):
            raise ValueError(
                f"{len(items)} support utterances but {len(transcripts)} transcripts"
            )
        if ids is not None and len(ids) != len(items):
            raise ValueError(f"{len(items)} support utterances but {len(ids)} ids")
        wavs, names, records = [], [], []
        for i, item in enumerate(items):
            uid = str(ids[i]) if ids is not None else None
            label = f"support utterance {uid if uid is not None else i}"
            if isinstance(item, (str, os.PathLike)):
                name = f"{label} ({item})"
                wav = self.load_audio(item, what=f"audio file of {label}")
                audio = str(item)
            else:
                name = label
                wav = torch.as_tensor(item, dtype=torch.float32)
                if wav.dim() == 2:
                    wav = wav.mean(dim=-1)
                if wav.dim() != 1 or wav.numel() == 0:
                    raise ValueError(
                        f"{name}: expected a non-empty 1-D waveform, got shape {tuple(wav.shape)}"
                    )
                audio = f"<waveform, {wav.numel()} samples>"
            wavs.append(wav)
            names.append(name)
            records.append({"id": uid, "audio": audio, "transcript": transcripts[i]})
        tokens = [self.encode_transcript(t, name) for t, name in zip(transcripts, names)]
        return wavs, tokens, names, records

    def _copy_state(self):
        """Deep copies of the model's modules (shared structure kept) and loadables."""
        memo = {}

        def cp(value):
            if isinstance(value, torch.nn.Module):
                return copy.deepcopy(value, memo)
            if isinstance(value, dict) and any(isinstance(v, torch.nn.Module) for v in value.values()):
                return {k: cp(v) for k, v in value.items()}
            return value

        hparams = {k: cp(v) for k, v in vars(self.asr.hparams).items()}
        loadables = {n: memo.get(id(obj), obj) for n, obj in self._loadables.items()}
        return hparams, loadables

    def adapt(self, wavs_or_paths, transcripts, strategy=None, steps=3, lr=None,
              adapt_params=None, batch_size=None, ids=None, addons=None, peft=None,
              addon_config=None):
        """A new model adapted to the support utterances (this one is unchanged).

        Arguments
        ---------
        wavs_or_paths : list
            Audio files, or 1-D waveforms at :attr:`sample_rate`.
        transcripts : list of str
            One per utterance.
        strategy : str, optional
            A registered gradient strategy; default :attr:`default_strategy`
            (``metasgd`` when the model has meta-learned step sizes).
        steps : int
            Gradient steps (cycling over the support batches).
        lr : float, optional
            Step size; default: the meta-learned step sizes for ``metasgd``,
            else the model's ``inner_lr`` (0.01 for plain SpeechBrain models).
            Given with ``metasgd`` it replaces the step sizes.
        adapt_params : list of str, optional
            Parameter name patterns to adapt (``["ctc_lin.*"]``); default the
            strategy's (everything, or the output layer for ``anil``).
        batch_size : int, optional
            Support utterances per batch; default all in one batch.
        ids : list of str, optional
            Utterance ids, used in messages and in the provenance record.
        addons : list of str, optional
            Add-ons applied to the adapted copy, e.g. ``["lora"]`` (the
            parameter-efficient ones of :mod:`sb_meta_plugins.peft`: ``lora``,
            ``houlsby``, ``lhuc``): their module surgery is done on the copy
            and only their adapter parameters adapt. The result carries the
            adapters (:meth:`export_adapters` writes them alone). The default
            strategy is then ``finetune``. A model that already carries
            adapters adapts those adapters further (no ``addons`` then).
        peft : str, optional
            Shorthand for ``addons=[peft]``.
        addon_config : dict, optional
            Add-on settings, e.g. ``{"peft_rank": 4, "peft_targets": ["ctc_lin"]}``.

        Returns
        -------
        AdaptableASR
        """
        from speechbrain.dataio.batch import PaddedBatch
        from speechbrain.inference.ASR import EncoderASR

        from sb_meta.functional import select_params
        from sb_meta.strategy import MetaConfig, Strategy

        addons, addon_config = self._check_addons(addons, peft, addon_config)
        carried = self.adapters
        if addons or carried:
            strategy = strategy or "finetune"
        strategy = strategy or self.default_strategy
        cls = self.check_strategy(strategy)
        if (addons or carried) and cls.meta_modules is not Strategy.meta_modules:
            raise ValueError(
                f"strategy {strategy!r} adapts with meta-learned state of the model's own "
                "parameters and cannot adapt add-on adapters; use finetune, fomaml or anil"
            )
        base_model = self._base_model_record() if addons else None
        if isinstance(adapt_params, str):
            adapt_params = [adapt_params]
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        if lr is not None and not float(lr) > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        wavs, tokens, names, records = self._support(wavs_or_paths, transcripts, ids)

        hparams, loadables = self._copy_state()
        encoder = hparams["encoder"]
        if not isinstance(encoder, sb.nnet.containers.Sequential):
            raise ValueError(
                f"cannot adapt {self.source}: its encoder is a {type(encoder).__name__}; "
                "test-time adaptation runs the layers of a (LengthsCapable)Sequential encoder"
            )
        layers = list(encoder.named_children())
        lengths_args = list(getattr(encoder, "lengths_arg_names", [None] * len(layers)))
        for p in encoder.parameters():
            p.requires_grad_(True)
        saved_cfg = self.meta_config
        uses_state = cls.meta_modules is not Strategy.meta_modules
        default_lr = float(saved_cfg.get("inner_lr") or 0.01)
        brain_hparams = {
            "meta_strategy": strategy,
            "inner_steps": steps,
            "inner_lr": default_lr,
            "first_order": True,
            "adapt_params": saved_cfg.get("adapt_params") if uses_state else adapt_params,
            "plugins": saved_cfg.get("plugins") or [],
            "meta_addons": list(addons),
            "ctc_cost": _ctc_cost(self.blank_index),
            "layer_names": [n for n, _ in layers],
            "lengths_args": lengths_args,
        }
        brain_hparams.update(addon_config)
        MetaConfig.from_hparams(brain_hparams)
        with _quiet("speechbrain.core"):  # no per-adaptation "model statistics" logs
            brain = _AdaptBrain(
                modules=dict(layers),
                hparams=brain_hparams,
                run_opts={"device": str(self.device), "noprogressbar": True},
                registry=self.registry,
            )
        _sync_encoder(encoder, brain)  # add-ons may have replaced whole layers
        brain.modules.eval()
        names_to_adapt = None
        if uses_state:
            names_to_adapt = self._load_meta_state(brain)
        if adapt_params:
            chosen = select_params(brain.base_param_names(), adapt_params)
            if names_to_adapt is not None:
                extra = [n for n in chosen if n not in set(names_to_adapt)]
                if extra:
                    raise ValueError(
                        f"adapt_params selects parameters without meta-learned step sizes: "
                        f"{extra[:5]}; they exist for {len(names_to_adapt)} parameters such as "
                        f"{names_to_adapt[:3]}"
                    )
            names_to_adapt = chosen
            if addons:  # explicit names bypass adapt_names(): let the add-ons narrow them
                for narrowed in brain.addon_hook("sbmeta_adapt_params", names=names_to_adapt):
                    if narrowed is not None:
                        names_to_adapt = [n for n in names_to_adapt if n in set(narrowed)]
                if not names_to_adapt:
                    raise ValueError(
                        f"adapt_params {adapt_params} selects no adapter parameter of "
                        f"the add-ons {addons}"
                    )
        if carried:  # adapt the adapters this model carries, nothing else
            pool = names_to_adapt if names_to_adapt is not None else brain.base_param_names()
            names_to_adapt = [n for n in pool if n in set(carried["names"])]
            if not names_to_adapt:
                raise ValueError(
                    f"adapt_params {adapt_params} selects none of the model's adapter parameters "
                    f"(such as {carried['names'][:3]})"
                )

        size = len(wavs) if not batch_size else int(batch_size)
        batches = []
        for start in range(0, len(wavs), size):
            batches.append(PaddedBatch([
                {"id": names[i], "sig": wavs[i], "tokens": torch.LongTensor(tokens[i])}
                for i in range(start, min(start + size, len(wavs)))
            ]))
        with torch.no_grad():  # every utterance long enough for its transcript?
            for start, batch in zip(range(0, len(wavs), size), batches):
                log_probs, lens = brain.compute_forward(batch, sb.Stage.TEST)
                frames = torch.round(lens.cpu() * log_probs.shape[1]).long().tolist()
                for i, n in enumerate(frames, start):
                    if n < _ctc_min_frames(tokens[i]):
                        raise ValueError(
                            f"{names[i]} is too short for its transcript {records[i]['transcript']!r}: "
                            f"{n} output frames, CTC needs {_ctc_min_frames(tokens[i])}"
                        )

        cudnn_off = (
            torch.backends.cudnn.flags(enabled=False)
            if str(self.device).startswith("cuda") else contextlib.nullcontext()
        )
        with torch.enable_grad(), cudnn_off:
            fast = (
                brain.strategy.adapt(batches, steps=steps, lr=lr, names=names_to_adapt)
                if steps > 0 else {}
            )
        base = brain.base_params()
        with torch.no_grad():
            for n, w in fast.items():
                if not torch.isfinite(w).all():
                    raise AdaptationError(
                        f"adaptation diverged (non-finite values in {n}); lower the step size"
                    )
                base[n].copy_(w.detach())
        for p in encoder.parameters():
            p.requires_grad_(False)
        encoder.eval()

        new_asr = EncoderASR(
            modules=hparams["modules"], hparams=hparams, run_opts={"device": str(self.device)}
        )
        final_loss = getattr(brain.strategy, "last_inner_loss", None)
        record = {
            "time": _now(),
            "source": self.source,
            "strategy": strategy,
            "steps": steps,
            "lr": float(lr) if lr is not None else ("meta-learned" if uses_state else default_lr),
            "adapt_params": list(adapt_params) if adapt_params else None,
            "adapted_parameters": len(fast),
            "support": records,
            "last_inner_loss": float(final_loss) if final_loss is not None else None,
        }
        adapters = copy.deepcopy(carried) if carried else None
        if addons:
            record["addons"] = list(addons)
            adapters = _adapters_record(brain, base_model)
        if adapters is not None:
            record["adapter_config"] = adapters["config"]
            adapters["adaptations"] = list(adapters.get("adaptations") or []) + [record]
        info = copy.deepcopy(self.info) if self.info is not None else None
        if info is not None:
            info["adaptations"] = list(info.get("adaptations") or []) + [record]
        adapted = AdaptableASR(
            new_asr, yaml_text=self.yaml_text, info=info, source=self.source,
            loadables=loadables, files=self._files, meta_state=self.meta_state,
            adapters=adapters,
        )
        adapted._registry = self._registry
        adapted.last_adaptation = record
        return adapted

    def _load_meta_state(self, brain):
        """Load the strategy's meta-learned state; returns the names it covers."""
        modules = torch.nn.ModuleDict(brain.strategy.meta_modules())
        try:
            result = modules.load_state_dict(self.meta_state, strict=False)
        except RuntimeError as exc:  # shape mismatch
            raise ValueError(
                f"the meta-learned state of {self.source} does not match the model: {exc}"
            ) from exc
        if result.unexpected_keys:
            raise ValueError(
                f"the meta-learned state of {self.source} does not match the model's "
                f"parameters: unexpected {result.unexpected_keys[:5]}"
            )
        names = brain.strategy.adapt_names()
        if not result.missing_keys:
            return names
        # e.g. an add-on narrowed the adapted parameters in training: adapt only
        # those that have learned state
        missing = {k.split(".", 1)[1] for k in result.missing_keys}
        names = [n for n in names if n.replace(".", "__") not in missing]
        if not names:
            raise ValueError(f"the meta-learned state of {self.source} covers no parameter")
        return names

    # ------------------------------------------------------------ export
    def export(self, folder, verify=True):
        """Write this model as a SpeechBrain pretrained folder (atomically).

        Only models exported by sb-meta (with ``sbmeta.json``) can be exported
        again; the adaptation history goes into ``sbmeta.json``.

        Returns
        -------
        pathlib.Path
        """
        if self.info is None or self.yaml_text is None:
            raise ValueError(
                f"{self.source} is not an sb-meta export (no {META_FILE}); only those can be "
                "exported again"
            )
        if self.adapters:
            raise ValueError(
                f"this model carries {'+'.join(self.adapters['addons'])} adapters, which a "
                "SpeechBrain pretrained folder cannot hold: write them alone with "
                "export_adapters(folder) (loaded with load_model(base, adapters=folder)), or "
                "export merge_adapters() (LoRA and LHUC only)"
            )
        info = copy.deepcopy(self.info)
        info["created"] = _now()
        info["versions"] = _versions()
        with atomic_folder(folder) as tmp:
            (tmp / HPARAMS_FILE).write_text(self.yaml_text, encoding="utf-8")
            for name, obj in self._loadables.items():
                path = tmp / f"{name}.ckpt"
                if name in self._files:
                    path.write_bytes(self._files[name])
                else:
                    _save_loadable(obj, path)
            if self.meta_state is not None and info.get("meta_state"):
                torch.save(self.meta_state, tmp / info["meta_state"]["file"])
            _write_json(tmp / META_FILE, _jsonable(info))
            if verify:
                _verify_export(
                    tmp, lambda w, l: self.log_probs(w, l), self.sample_rate, self.device
                )
        return pathlib.Path(folder)

    # ------------------------------------------------------------ adapters
    def _check_addons(self, addons, peft, addon_config):
        """(add-on names, their hparams) for :meth:`adapt`, validated."""
        if peft is not None:
            if addons:
                raise ValueError("give addons= or peft=, not both")
            addons = [peft]
        if isinstance(addons, str):
            addons = [addons]
        addons = list(addons or [])
        for name in addons:
            self.registry.get_addon(name)  # UnknownPluginError listing the valid ones
        if len(set(addons)) != len(addons):
            raise ValueError(f"add-on listed twice: {addons}")
        if addons and self.adapters:
            raise ValueError(
                f"this model already carries {'+'.join(self.adapters['addons'])} adapters; "
                "adapt them further without addons=, or adapt the base model"
            )
        addon_config = dict(addon_config or {})
        if addon_config and not addons:
            raise ValueError("addon_config is given but no add-on (addons=[...])")
        from sb_meta.strategy import META_KEYS

        reserved = set(META_KEYS) | {"ctc_cost", "layer_names", "lengths_args"}
        clash = sorted(set(addon_config) & reserved)
        if clash:
            raise ValueError(f"addon_config cannot set {clash}; pass them to adapt() itself")
        return addons, addon_config

    def _base_model_record(self):
        """Identity of this model as the base of adapters."""
        return {
            "source": self.source,
            "weights_sha256": base_model_sha256(self),
            "strategy": self.trained_strategy,
            "adaptations": len(self.adaptations),
        }

    @property
    def has_adapters(self):
        """Whether this model carries add-on adapters (see :meth:`export_adapters`)."""
        return bool(self.adapters)

    def _adapter_tensors(self):
        """The current values of the adapters (CPU copies), by parameter name."""
        params = dict(self.asr.hparams.encoder.named_parameters())
        return {n: params[n].detach().cpu().clone() for n in self.adapters["names"]}

    def export_adapters(self, folder):
        """Write only the adapters of this model (atomically).

        The folder holds ``adapters.ckpt`` (the adapter tensors, by parameter
        name) and ``adapters.json`` (format, add-ons and their configuration,
        the base model's identity: the SHA-256 of its weights and
        normalisation statistics, :func:`base_model_sha256`, and where it was
        loaded from, plus the adaptation records). Load them on top of the
        same base model with ``load_model(base, adapters=folder)`` or
        :meth:`with_adapters`.

        Returns
        -------
        pathlib.Path

        Raises
        ------
        ValueError
            When the model carries no adapters.

        Example
        -------
        >>> adapted = load_model("pretrained").adapt(wavs, texts, addons=["lora"])  # doctest: +SKIP
        >>> adapted.export_adapters("speaker42_lora")  # doctest: +SKIP
        """
        if not self.adapters:
            raise ValueError(
                "this model carries no adapters; make some with adapt(..., addons=['lora'])"
            )
        state = self._adapter_tensors()
        meta = {
            "format": ADAPTERS_FORMAT,
            "created": _now(),
            "versions": _versions(),
            "addons": list(self.adapters["addons"]),
            "config": self.adapters["config"],
            "base_model": self.adapters["base_model"],
            "parameters": int(sum(t.numel() for t in state.values())),
            "tensors": {n: list(t.shape) for n, t in state.items()},
            "files": [ADAPTERS_FILE, ADAPTERS_META_FILE],
            "adaptations": self.adapters.get("adaptations") or [],
        }
        with atomic_folder(folder) as tmp:
            torch.save(state, tmp / ADAPTERS_FILE)
            _write_json(tmp / ADAPTERS_META_FILE, _jsonable(meta))
        return pathlib.Path(folder)

    def with_adapters(self, folder):
        """A new model: this (base) model with the adapters of ``folder`` applied.

        Arguments
        ---------
        folder : str or pathlib.Path
            Written by :meth:`export_adapters`.

        Returns
        -------
        AdaptableASR
            It transcribes exactly as the model whose adapters were exported.

        Raises
        ------
        FileNotFoundError
            When ``folder`` holds no adapters.
        ValueError
            When the adapters were made for another base model (its weights
            differ from this model's), or do not fit this model.
        """
        from speechbrain.inference.ASR import EncoderASR

        folder = pathlib.Path(folder)
        meta_path = folder / ADAPTERS_META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} holds no adapters: no {ADAPTERS_META_FILE}")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{meta_path} is corrupt: {exc}") from exc
        if meta.get("format") != ADAPTERS_FORMAT:
            raise ValueError(
                f"{meta_path} has format {meta.get('format')!r}, expected {ADAPTERS_FORMAT!r}"
            )
        if self.adapters:
            raise ValueError(
                f"this model already carries {'+'.join(self.adapters['addons'])} adapters; "
                "load the adapters on top of the base model"
            )
        base = meta.get("base_model") or {}
        mine = base_model_sha256(self)
        if base.get("weights_sha256") != mine:
            raise ValueError(
                f"the adapters in {folder} were made for another base model: they expect "
                f"weights with SHA-256 {str(base.get('weights_sha256'))[:16]}... (the model "
                f"loaded from {base.get('source')}), but {self.source} has {mine[:16]}...; "
                "load them on top of the model they were adapted from"
            )
        try:
            state = torch.load(folder / ADAPTERS_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"cannot read the adapters {folder / ADAPTERS_FILE}: {exc}") from exc

        hparams, loadables = self._copy_state()
        encoder = hparams["encoder"]
        if not isinstance(encoder, sb.nnet.containers.Sequential):
            raise ValueError(
                f"cannot apply adapters to {self.source}: its encoder is a "
                f"{type(encoder).__name__}, not a (LengthsCapable)Sequential"
            )
        layers = list(encoder.named_children())
        brain_hparams = {
            "meta_strategy": "finetune",
            "inner_steps": 0,
            "meta_addons": list(meta["addons"]),
            "plugins": self.meta_config.get("plugins") or [],
            "ctc_cost": _ctc_cost(self.blank_index),
            "layer_names": [n for n, _ in layers],
            "lengths_args": list(getattr(encoder, "lengths_arg_names", [None] * len(layers))),
        }
        brain_hparams.update(meta.get("config") or {})
        for p in encoder.parameters():
            p.requires_grad_(True)
        with _quiet("speechbrain.core"):
            brain = _AdaptBrain(
                modules=dict(layers),
                hparams=brain_hparams,
                run_opts={"device": str(self.device), "noprogressbar": True},
                registry=self.registry,
            )
        _sync_encoder(encoder, brain)
        expected = {n for a in brain.addons for n in a.adapter_state_dict(brain)}
        if set(state) != expected:
            raise ValueError(
                f"the adapters in {folder} do not fit this model: missing "
                f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}"
            )
        for addon in brain.addons:
            own = addon.adapter_state_dict(brain)
            addon.load_adapter_state_dict(brain, {n: state[n] for n in own})
        for p in encoder.parameters():
            p.requires_grad_(False)
        encoder.eval()
        new_asr = EncoderASR(
            modules=hparams["modules"], hparams=hparams, run_opts={"device": str(self.device)}
        )
        adapters = _adapters_record(brain, base)
        adapters["adaptations"] = list(meta.get("adaptations") or [])
        adapters["loaded_from"] = str(folder)
        model = AdaptableASR(
            new_asr, yaml_text=self.yaml_text, info=copy.deepcopy(self.info), source=self.source,
            loadables=loadables, files=self._files, meta_state=self.meta_state,
            adapters=adapters,
        )
        model._registry = self._registry
        return model

    def merge_adapters(self):
        """A new model with LoRA / LHUC adapters folded into the layers they wrap.

        The result is a plain model (no adapters) computing the same function
        up to rounding, which :meth:`export` writes as a SpeechBrain
        pretrained folder. Houlsby adapters are non-linear and cannot be merged.

        Returns
        -------
        AdaptableASR
        """
        from speechbrain.inference.ASR import EncoderASR
        from speechbrain.nnet.adapters import replace_module

        from sb_meta_plugins.peft import _PRETRAINED_CHILD, merge_wrapper

        if not self.adapters:
            raise ValueError("this model carries no adapters to merge")
        hparams, loadables = self._copy_state()
        encoder = hparams["encoder"]
        outermost = []
        for name, module in encoder.named_modules():
            if type(module) in _PRETRAINED_CHILD and not any(
                name.startswith(o + ".") for o, _ in outermost
            ):
                outermost.append((name, module))
        replaced = {}  # top-level layers: id(what other containers hold) -> merged
        for name, module in outermost:
            merged_layer = merge_wrapper(module)
            replace_module(encoder, name, merged_layer)
            if "." not in name:
                inner = module
                while type(inner) in _PRETRAINED_CHILD:
                    inner = getattr(inner, _PRETRAINED_CHILD[type(inner)])
                replaced[id(module)] = replaced[id(inner)] = merged_layer
        for obj in loadables.values():  # e.g. the pretrainer's ModuleList([enc, ctc_lin])
            if isinstance(obj, torch.nn.Module) and replaced:
                for parent in list(obj.modules()):
                    for cname, child in list(parent.named_children()):
                        if id(child) in replaced:
                            setattr(parent, cname, replaced[id(child)])
        for p in encoder.parameters():
            p.requires_grad_(False)
        encoder.eval()
        new_asr = EncoderASR(
            modules=hparams["modules"], hparams=hparams, run_opts={"device": str(self.device)}
        )
        info = copy.deepcopy(self.info) if self.info is not None else None
        if info is not None:
            info["adaptations"] = list(info.get("adaptations") or []) + [
                {"time": _now(), "merged_adapters": list(self.adapters["addons"]),
                 "adapter_config": self.adapters["config"]}
            ]
        merged = AdaptableASR(
            new_asr, yaml_text=self.yaml_text, info=info, source=self.source,
            loadables=loadables, files=self._files, meta_state=self.meta_state,
        )
        merged._registry = self._registry
        return merged


def base_model_sha256(model):
    """SHA-256 of a model's weights and normalisation statistics.

    It identifies the base model adapters were made for: every module the
    model's pretrainer loads (``model``, ``normalizer``...), state dict and
    statistics (e.g. ``InputNormalization``'s), in a fixed order, by name,
    dtype, shape and bytes. Files and devices do not matter.

    Arguments
    ---------
    model : AdaptableASR or dict of str to torch.nn.Module

    Returns
    -------
    str
        Hex digest.

    Example
    -------
    >>> torch.manual_seed(0) is not None
    True
    >>> a = {"model": torch.nn.Linear(2, 2)}
    >>> b = {"model": torch.nn.Linear(2, 2)}
    >>> base_model_sha256(a) == base_model_sha256({"model": a["model"]})
    True
    >>> base_model_sha256(a) == base_model_sha256(b)
    False
    """
    import hashlib

    if isinstance(model, AdaptableASR):
        modules = {n: m for n, m in model._loadables.items() if isinstance(m, torch.nn.Module)}
        if not modules:
            modules = {"mods": model.asr.mods}
    else:
        modules = dict(model)
    h = hashlib.sha256()
    for lname in sorted(modules):
        module = modules[lname]
        items = list(module.state_dict().items())
        for sub_name, sub in module.named_modules():
            if hasattr(sub, "_statistics_dict"):
                items += [(f"{sub_name}#{k}", v) for k, v in sub._statistics_dict().items()]
        for key, value in sorted(items, key=lambda kv: kv[0]):
            h.update(f"{lname}.{key}\0".encode())
            if torch.is_tensor(value):
                t = value.detach().to("cpu").contiguous()
                h.update(f"{t.dtype}{tuple(t.shape)}\0".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            else:
                h.update(f"{value!r}\0".encode())
    return h.hexdigest()


def _sync_encoder(encoder, brain):
    """Put layers an add-on replaced in ``brain.modules`` back into ``encoder``."""
    for name, module in brain.modules.items():
        if getattr(encoder, name, None) is not module and name in dict(encoder.named_children()):
            setattr(encoder, name, module)


def _adapters_record(brain, base_model):
    """What an :class:`AdaptableASR` remembers of the add-ons applied by ``brain``."""
    names, config = [], {}
    for addon in brain.addons:
        if not hasattr(addon, "adapter_state_dict"):
            raise ValueError(
                f"add-on {addon.name!r} has no adapters (no adapter_state_dict); test-time "
                "add-ons must be adapter add-ons such as lora, houlsby or lhuc"
            )
        names += list(addon.adapter_state_dict(brain))
        config.update(getattr(addon, "settings", {}) or {})
    return {
        "addons": [a.name for a in brain.addons],
        "config": config,
        "names": names,
        "base_model": base_model,
        "adaptations": [],
    }
