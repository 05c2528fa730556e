"""Export plans: what a SpeechBrain pretrained folder will hold, and writing it.

An :class:`ExportPlan` is assembled from a trained brain (:func:`export_brain`)
or an adapted model (:meth:`sb_meta.adapt.AdaptableASR.export`), handed to
every plugin's ``sbmeta_before_export`` hook, then written atomically by
:func:`write_export` and verified by loading it back with the SpeechBrain
interface it declares.
"""

import copy
import datetime
import io
import json
import logging
import pathlib
from dataclasses import dataclass, field

import speechbrain as sb
import torch

from sb_meta.contract import ASRPredictions
from sb_meta.export.folder import META_FILE, atomic_folder
from sb_meta.export.yaml import dump
from sb_meta.utils import safe_name
from sb_meta.version import __version__

logger = logging.getLogger(__name__)

__all__ = ["ExportPlan", "write_export", "verify_export", "save_loadable", "probe_batch",
           "HPARAMS_FILE", "META_STATE_FILE", "FORMAT", "copy_loadables", "load_interface"]

HPARAMS_FILE = "hyperparams.yaml"
META_STATE_FILE = "meta_strategy.ckpt"
FORMAT = "sb-meta-pretrained/1"


@dataclass
class ExportPlan:
    """Everything an export writes; plugins change it in ``sbmeta_before_export``.

    Attributes
    ----------
    interface : str
        The SpeechBrain class that loads the folder
        (``speechbrain.inference.ASR.EncoderASR`` or ``EncoderDecoderASR``).
    yaml : ruamel.yaml.comments.CommentedMap
        The ``hyperparams.yaml`` document (:mod:`sb_meta.export.yaml`). Keys
        may be added or changed (e.g. an ``!apply:`` that quantizes the model
        after it is built and before the pretrainer loads the weights); keep
        the order objects must be built in.
    loadables : dict
        ``name -> object`` saved as ``<name>.ckpt`` (the pretrainer's
        loadables). Modules are *copies* of the model's: change them freely
        (prune, quantize, fold adapters in); the trained model is untouched.
    files : dict
        ``name -> bytes``: more files written verbatim.
    info : dict
        The content of ``sbmeta.json`` (format, strategy, configuration,
        provenance, adaptation records); plugins may record what they did.
    tolerance : tuple or None
        ``(rtol, atol)`` within which the reloaded folder must reproduce
        :attr:`reference`; None checks only that it loads and transcribes
        (set it after lossy changes such as quantization).
    reference : callable
        ``f(wavs, wav_lens) -> tensor``: what ``encode_batch`` of the
        exported interface must return.
    header : str
        Comment at the top of ``hyperparams.yaml``.
    verify_device : str or None
        Where the reloaded folder is checked (default: the model's device);
        e.g. ``"cpu"`` for int8 layers, which run on the CPU only.
    """

    interface: str
    yaml: object
    loadables: dict
    info: dict
    reference: object = None
    files: dict = field(default_factory=dict)
    tolerance: tuple = (1e-4, 1e-4)
    header: str = ""
    verify_device: str = None

    @property
    def modules(self):
        """The loadables that are ``torch.nn.Module`` s."""
        return {k: v for k, v in self.loadables.items() if isinstance(v, torch.nn.Module)}


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def versions():
    return {"sb_meta": __version__, "speechbrain": sb.__version__, "torch": torch.__version__}


def jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def detach_cached_tensors(module):
    """Detach tensors that modules cached from their last forward (e.g. an attention
    decoder's precomputed encoder projection): ``deepcopy`` refuses non-leaf tensors."""
    for m in module.modules():
        for key, value in list(vars(m).items()):
            if torch.is_tensor(value) and value.grad_fn is not None:
                setattr(m, key, value.detach())


def copy_loadables(loadables):
    """Copies of the module loadables (structure shared between them kept), on the CPU;
    other loadables (tokenizers) as they are."""
    memo = {}
    out = {}
    for name, obj in loadables.items():
        if isinstance(obj, torch.nn.Module):
            detach_cached_tensors(obj)
            out[name] = copy.deepcopy(obj, memo).to("cpu")
        else:
            out[name] = obj
    return out


def save_loadable(obj, path):
    """Save ``obj`` as SpeechBrain's pretrainer will load it."""
    from speechbrain.utils.checkpoints import (
        DEFAULT_SAVE_HOOKS,
        get_default_hook,
        torch_save,
        torch_save_once_per_node,
    )

    if hasattr(obj, "serialized_model_proto"):  # sentencepiece.SentencePieceProcessor
        pathlib.Path(path).write_bytes(obj.serialized_model_proto())
        return
    hook = get_default_hook(obj, DEFAULT_SAVE_HOOKS)
    if hook is not None and hook not in (torch_save, torch_save_once_per_node):
        hook(obj, path)
    elif isinstance(obj, torch.nn.Module):
        # torch_save is main-process-only; exports are written by whoever calls.
        # The state dict's _metadata (module versions) is kept: quantized modules need it.
        sd = obj.state_dict()
        out = type(sd)((k, v.detach().cpu() if torch.is_tensor(v) else v) for k, v in sd.items())
        if getattr(sd, "_metadata", None) is not None:
            out._metadata = sd._metadata
        torch.save(out, path)
    else:
        raise TypeError(f"don't know how to save {type(obj).__name__} to {path}")


def probe_batch(sample_rate):
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


def interface_class(name):
    """The SpeechBrain interface class named ``name``."""
    import importlib

    module, _, cls = name.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def load_interface(interface, source, savedir=None, device=None):
    """``interface.from_hparams(source)``, offline."""
    from speechbrain.utils.fetching import FetchConfig

    kwargs = {"fetch_config": FetchConfig(allow_network=False)}
    if savedir is not None:
        kwargs["savedir"] = str(savedir)
    if device is not None:
        kwargs["run_opts"] = {"device": str(device)}
    cls = interface_class(interface) if isinstance(interface, str) else interface
    return cls.from_hparams(source=str(source), **kwargs)


def verify_export(folder, plan, device=None):
    """Load ``folder`` with its interface; it must reproduce ``plan.reference`` and transcribe."""
    try:
        asr = load_interface(plan.interface, folder, savedir=folder, device=device)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(
            f"the export does not load with SpeechBrain's {plan.interface.rsplit('.', 1)[-1]}"
            f".from_hparams: {type(exc).__name__}: {exc}"
        ) from exc
    sample_rate = int(plan.info.get("sample_rate", 16000))
    wavs, lens = probe_batch(sample_rate)
    with torch.no_grad():
        got = asr.encode_batch(wavs, lens).detach().cpu()
        asr.transcribe_batch(wavs, lens)  # decoding and tokenizer work
        if plan.tolerance is None or plan.reference is None:
            return
        want = plan.reference(wavs, lens).detach().cpu()
    rtol, atol = plan.tolerance
    if got.shape != want.shape or not torch.allclose(got, want, rtol=rtol, atol=atol):
        detail = (
            f"shapes {tuple(got.shape)} vs {tuple(want.shape)}"
            if got.shape != want.shape
            else f"max difference {float((got - want).abs().max()):.3g}"
        )
        raise RuntimeError(
            "the exported model does not reproduce the model's outputs "
            f"({detail}); does the YAML's inference section describe the model compute_forward runs?"
        )


def write_export(plan, folder, force=False, verify=True, device=None):
    """Write ``plan`` to ``folder`` atomically (see :mod:`sb_meta.export.folder`).

    Returns the folder as a ``pathlib.Path``.
    """
    with atomic_folder(folder, force=force) as tmp:
        text = dump(plan.yaml)
        if plan.header:
            text = "".join(f"# {line}".rstrip() + "\n" for line in plan.header.splitlines()) + "\n" + text
        (tmp / HPARAMS_FILE).write_text(text, encoding="utf-8")
        written = [HPARAMS_FILE, META_FILE]
        for name, obj in plan.loadables.items():
            file = safe_name(name, "loadable", suffix=".ckpt")  # names from a model's YAML
            save_loadable(obj, tmp / file)
            written.append(file)
        for name, data in plan.files.items():
            (tmp / safe_name(name, "file")).write_bytes(data)
            written.append(name)
        info = dict(plan.info, files=sorted(set(written)), format=FORMAT, interface=plan.interface)
        (tmp / META_FILE).write_text(json.dumps(jsonable(info), indent=2) + "\n", encoding="utf-8")
        if verify:
            verify_export(tmp, plan, plan.verify_device or device)
    logger.info("exported the model to %s", folder)
    return pathlib.Path(folder)


def state_bytes(state):
    """``torch.save`` of ``state`` as bytes (for :attr:`ExportPlan.files`)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def predictions_reference(brain, interface):
    """``f(wavs, lens)`` through the brain's own ``compute_forward``: the CTC
    log-probabilities for ``EncoderASR``, the encoder output for ``EncoderDecoderASR``."""
    from speechbrain.dataio.batch import PaddedBatch

    field_name = "log_probs" if interface.endswith("EncoderASR") and "Decoder" not in interface else "encoder_out"

    def reference(wavs, lens):
        items = []
        for i, (w, rel) in enumerate(zip(wavs, lens)):
            n = int(round(float(rel) * wavs.shape[1]))
            one = torch.LongTensor([1])
            items.append({"id": f"probe{i}", "sig": w[:n], "tokens": one, "tokens_bos": one,
                          "tokens_eos": one, "wrd": "A"})
        batch = PaddedBatch(items)
        saved = [(m, m.training) for m in brain.modules.modules()]
        try:
            brain.modules.eval()
            with torch.no_grad():
                out = brain.compute_forward(batch, sb.Stage.TEST)
        finally:
            for m, training in saved:
                m.training = training
        return ASRPredictions.coerce(out).require(field_name, "the export's check")

    return reference
