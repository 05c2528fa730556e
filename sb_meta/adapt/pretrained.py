"""Reading a SpeechBrain pretrained ASR folder: its interface, checks, files and state.

:func:`read_pretrained` reads what :class:`~sb_meta.adapt.AdaptableASR` is built
from; :func:`sb_meta.adapt.load_model` (:mod:`sb_meta.adapt.loading`) builds it.
Any folder SpeechBrain's ``EncoderASR``, ``EncoderDecoderASR`` or ``WhisperASR`` loads works:
sb-meta's exports (their ``sbmeta.json`` names the interface, the trained
modules and the meta-learned state) and models sb-meta did not write, laid
out like SpeechBrain's published ones (the interface is then read from the
YAML: a ``whisper`` module means ``WhisperASR``, a ``decoder`` module
``EncoderDecoderASR``). Loading is offline. Models built on Hugging Face
``transformers`` (wav2vec2, HuBERT, WavLM, Whisper) need the ``hf`` extra;
their wrapper's ``source`` must be a local folder or in the local cache.
Every failure names the file at fault. A folder is code (hyperpyyaml builds
what its YAML names): one that names code outside what :mod:`sb_meta.trust`
allows is refused unless ``trust=True``.
"""

import json
import pathlib
import re

import torch

from sb_meta.adapt.hf import require_transformers, uses_transformers
from sb_meta.export.folder import META_FILE
from sb_meta.export.plan import HPARAMS_FILE, load_interface
from sb_meta.trust import check_model_folder

__all__ = ["read_pretrained", "detect_interface"]

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
ENCODER_ASR = "speechbrain.inference.ASR.EncoderASR"
ENCODER_DECODER_ASR = "speechbrain.inference.ASR.EncoderDecoderASR"
WHISPER_ASR = "speechbrain.inference.ASR.WhisperASR"


def detect_interface(yaml_text, where):
    """The interface a ``hyperparams.yaml`` is written for, checked for the keys it needs.

    Raises
    ------
    ValueError
        Naming the file and the missing keys.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML().load(yaml_text)
    except YAMLError as exc:
        raise ValueError(f"{where} is not valid YAML: {exc}") from None
    if not hasattr(doc, "get"):
        raise ValueError(f"{where} is not a YAML mapping of hyperparameters")
    modules = doc.get("modules") if hasattr(doc.get("modules"), "get") else {}
    pretrainer = hasattr(doc.get("pretrainer"), "get")
    if "whisper" in modules:  # SpeechBrain's Whisper fine-tunes
        interface = WHISPER_ASR
        needed = {"modules.decoder": "decoder" in modules, "language": "language" in doc,
                  "sample_rate": "sample_rate" in doc, "pretrainer": pretrainer}
    else:
        interface = ENCODER_DECODER_ASR if "decoder" in modules else ENCODER_ASR
        needed = {"modules.encoder": "encoder" in modules, "tokenizer": "tokenizer" in doc,
                  "pretrainer": pretrainer}
    if interface == ENCODER_ASR:
        needed["decoding_function"] = "decoding_function" in doc
    missing = [k for k, ok in needed.items() if not ok]
    if missing:
        raise ValueError(
            f"{where} is not a SpeechBrain ASR model's hyperparameters: it lacks {missing} "
            f"(EncoderASR needs modules.encoder, decoding_function, tokenizer and pretrainer; "
            f"EncoderDecoderASR modules.encoder, modules.decoder, tokenizer and pretrainer; "
            f"WhisperASR modules.whisper, modules.decoder, language, sample_rate and pretrainer)"
        )
    return interface


def _diagnose(folder, yaml_text, exc, yaml_path=HPARAMS_FILE):
    """A message naming the unreadable file behind a failed load, if one is: the path
    the YAML's ``pretrainer.paths`` names when it names one (SpeechBrain reads that file,
    unless ``<loadable>.ckpt`` is in the folder already), else ``<loadable>.ckpt``."""
    from hyperpyyaml import resolve_references
    from ruamel.yaml import YAML

    try:
        pretrainer = YAML().load(resolve_references(yaml_text).getvalue())["pretrainer"]
        loadables, paths = list(pretrainer["loadables"]), dict(pretrainer.get("paths") or {})
    except Exception:  # noqa: BLE001 - no better diagnosis
        loadables, paths = [], {}
    for name in loadables:
        path = pathlib.Path(folder) / f"{name}.ckpt"
        if not path.is_file() and name in paths:
            relative = not pathlib.Path(str(paths[name])).is_absolute()
            where = " (relative to the working directory)" if relative else ""
            return (f"{paths[name]}{where}, which {yaml_path} names as pretrainer.paths.{name}, "
                    f"is missing, and so is {path}")
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size == 0:
            return f"{path} is empty"
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as load_exc:  # noqa: BLE001 - reported
            text = str(load_exc).splitlines()[0] if str(load_exc) else type(load_exc).__name__
            if name != "tokenizer":
                return f"{path} is unreadable (truncated or corrupt?): {text}"
    return f"{type(exc).__name__}: {exc}"


def read_pretrained(source, savedir=None, device=None, trust=False):
    """Read a SpeechBrain pretrained ASR folder: the arguments of :class:`~sb_meta.adapt.AdaptableASR`.

    Arguments
    ---------
    source : str or pathlib.Path
        A model folder, or a model hub id (``org/name``) already in the local
        cache (see :func:`sb_meta.adapt.load_model`).
    savedir : str or pathlib.Path, optional
        Where SpeechBrain collects the files; defaults to the folder itself.
    device : str, optional
        ``"cpu"``, ``"cuda:0"``...; default SpeechBrain's choice.
    trust : bool
        Load the folder even when its ``hyperparams.yaml`` names code outside
        what :mod:`sb_meta.trust` allows.

    Returns
    -------
    dict
        ``asr`` (the SpeechBrain interface), ``yaml_text``, ``info`` (its
        ``sbmeta.json``, else ``None``), ``source``, ``files`` (the bytes of
        its loadables that are not modules, e.g. the tokenizer) and
        ``meta_state``.

    Raises
    ------
    FileNotFoundError, ValueError, sb_meta.trust.UntrustedModelError
        As :func:`sb_meta.adapt.load_model`.
    """
    from speechbrain.utils.fetching import FetchConfig, fetch

    src = str(source)
    local = pathlib.Path(src)
    info, hub = None, False
    if local.is_dir():
        info, yaml_text, interface = _read_folder(local, trust)
        savedir = savedir if savedir is not None else local
    elif local.exists():
        raise ValueError(f"{local} is a file; give the model's folder")
    elif _HUB_ID_RE.match(src) and not src.startswith((".", "/")):
        hub, yaml_text, interface = True, None, None
    else:
        raise FileNotFoundError(f"model folder {src} does not exist")
    if uses_transformers(yaml_text):
        require_transformers(f"the model in {src} (built on Hugging Face transformers)")
    offline = FetchConfig(allow_network=False)

    def fetched(name):
        return pathlib.Path(fetch(name, source=src, savedir=savedir, fetch_config=offline))

    if hub:
        info, yaml_text, interface = _read_hub(src, fetched, trust)
    try:
        asr = load_interface(interface, src, savedir=savedir, device=device)
    except Exception as exc:  # noqa: BLE001 - re-raised with the culprit named
        raise ValueError(f"cannot load the SpeechBrain model in {src}: "
                         f"{_diagnose(savedir or src, yaml_text, exc, f'{src}/{HPARAMS_FILE}')}") from exc
    meta_state = None
    if info and info.get("meta_state"):
        path = fetched(info["meta_state"]["file"])
        try:
            meta_state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"cannot read the meta-learned state {path}: {exc}") from exc
    pretrainer = asr.hparams.pretrainer
    files = {}
    for name, obj in dict(pretrainer.loadables).items():
        if not isinstance(obj, torch.nn.Module) and name in pretrainer.paths:
            files[name] = pathlib.Path(pretrainer.paths[name]).read_bytes()
    _check_tokenizer(asr.tokenizer, src)
    return dict(asr=asr, yaml_text=yaml_text, info=info, source=src, files=files, meta_state=meta_state)


def _read_folder(local, trust):
    """``(sbmeta.json or None, hyperparams.yaml text, interface)`` of a local model folder, checked."""
    hp = local / HPARAMS_FILE
    if not hp.is_file():
        raise FileNotFoundError(f"{local} is not a SpeechBrain pretrained folder: no {HPARAMS_FILE}")
    info = None
    if (local / META_FILE).is_file():
        try:
            info = json.loads((local / META_FILE).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{local / META_FILE} is corrupt: {exc}") from exc
        missing = [f for f in info.get("files", []) if not (local / f).is_file()]
        if missing:
            raise FileNotFoundError(f"the export in {local} is incomplete: missing {missing}")
        if info.get("kind") == "words":
            raise ValueError(f"{local} is a word model (few-shot spoken terms), not a speech "
                             "recognizer: use the sb-meta words commands, or "
                             "sb_meta.words.load_word_model in Python")
    yaml_text = hp.read_text(encoding="utf-8")
    interface = (info or {}).get("interface") or detect_interface(yaml_text, str(hp))
    if info is not None:
        detect_interface(yaml_text, str(hp))
    if not trust:
        check_model_folder(local, yaml_text, str(hp), info)
    return info, yaml_text, interface


def _read_hub(src, fetched, trust):
    """``(sbmeta.json or None, hyperparams.yaml text, interface)`` of a model in the local hub cache."""
    try:
        hub_yaml = fetched(HPARAMS_FILE)
        yaml_text = hub_yaml.read_text(encoding="utf-8")
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise FileNotFoundError(
            f"cannot load model {src!r}: it is not a local folder and not in the local "
            f"model-hub cache, and sb-meta loads models offline; download it first or "
            f"give the folder of an export ({type(exc).__name__}: {exc})"
        ) from exc
    interface = detect_interface(yaml_text, f"{src}/{HPARAMS_FILE}")
    if uses_transformers(yaml_text):
        require_transformers(f"the model {src} (built on Hugging Face transformers)")
    try:
        info = json.loads(fetched(META_FILE).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - a plain SpeechBrain model has none
        info = None
    if not trust:
        check_model_folder(hub_yaml.parent, yaml_text, f"{src}/{HPARAMS_FILE}", info)
    return info, yaml_text, interface


def _check_tokenizer(tok, source):
    from speechbrain.dataio.encoder import CTCTextEncoder

    if isinstance(tok, CTCTextEncoder) and not tok.lab2ind:
        raise ValueError(f"the tokenizer of {source} did not load (empty or corrupt tokenizer file)")
