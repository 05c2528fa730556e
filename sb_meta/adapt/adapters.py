"""Adapter-only exports: the few tensors an adapter add-on adapted, without the model.

A model adapted with an adapter add-on (``lora``, ``houlsby``, ``lhuc``...:
any add-on whose ``sbmeta_adapter_state`` hook returns tensors) can be written
alone::

    speaker42/
        adapters.ckpt    the adapter tensors, by parameter name
        adapters.json    format, add-ons and their configuration, the base
                         model's identity (SHA-256 of its weights and
                         statistics, see base_model_sha256) and provenance

``load_model(base, adapters="speaker42")`` (or
``load_model(base).with_adapters("speaker42")``) rebuilds the add-ons on the
same base model (another base model is refused) and hands the tensors back
through ``sbmeta_load_adapter_state``. The core never needs to know what an
adapter is.
"""

import hashlib
import json
import pathlib

import torch

from sb_meta.export.folder import ADAPTERS_META_FILE, atomic_folder
from sb_meta.export.plan import jsonable, now, versions

__all__ = ["export_adapters", "with_adapters", "base_model_sha256", "adapters_record",
           "ADAPTERS_FILE", "ADAPTERS_FORMAT"]

ADAPTERS_FILE = "adapters.ckpt"
ADAPTERS_FORMAT = "sb-meta-adapters/1"


def _adapter_state(brain):
    state = {}
    for plugin, tensors in brain.call_hook("sbmeta_adapter_state"):
        for name, value in (tensors or {}).items():
            if name in state:
                raise ValueError(f"adapter tensor {name!r} is claimed by two add-ons")
            state[name] = value
    return state


def adapters_record(brain, base, addons, config):
    """What an adapted model remembers of the adapters its add-ons made (None: none)."""
    names = list(_adapter_state(brain))
    if not names:
        return None
    return {
        "addons": list(addons),
        "config": dict(config),
        "names": names,
        "base_model": {
            "source": base.source,
            "weights_sha256": base_model_sha256(base),
            "strategy": base.trained_strategy,
            "adaptations": len(base.adaptations),
        },
        "adaptations": [],
    }


def export_adapters(model, folder, force=False):
    """Write only the adapters of ``model`` (an ``AdaptableASR``), atomically.

    Raises
    ------
    ValueError
        When the model carries no adapters.
    """
    if not model.adapters or model._brain is None:
        raise ValueError("this model carries no adapters; make some with an adapter add-on, adapt(..., addons=[...])")
    state = {n: t.detach().cpu().clone() for n, t in _adapter_state(model._brain).items()}
    meta = {
        "format": ADAPTERS_FORMAT,
        "created": now(),
        "versions": versions(),
        "addons": list(model.adapters["addons"]),
        "config": model.adapters["config"],
        "base_model": model.adapters["base_model"],
        "parameters": int(sum(t.numel() for t in state.values())),
        "tensors": {n: list(t.shape) for n, t in state.items()},
        "files": [ADAPTERS_FILE, ADAPTERS_META_FILE],
        "adaptations": model.adapters.get("adaptations") or [],
    }
    with atomic_folder(folder, force=force) as tmp:
        torch.save(state, tmp / ADAPTERS_FILE)
        (tmp / ADAPTERS_META_FILE).write_text(json.dumps(jsonable(meta), indent=2) + "\n", encoding="utf-8")
    return pathlib.Path(folder)


def with_adapters(model, folder):
    """A new model: ``model`` (the base) with the adapters of ``folder`` applied.

    Raises
    ------
    FileNotFoundError
        When ``folder`` holds no adapters.
    ValueError
        When the adapters were made for another base model, or do not fit.
    """
    folder = pathlib.Path(folder)
    meta_path = folder / ADAPTERS_META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} holds no adapters: no {ADAPTERS_META_FILE}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{meta_path} is corrupt: {exc}") from exc
    if meta.get("format") != ADAPTERS_FORMAT:
        raise ValueError(f"{meta_path} has format {meta.get('format')!r}, expected {ADAPTERS_FORMAT!r}")
    if model.adapters:
        raise ValueError(
            f"this model already carries {'+'.join(model.adapters['addons'])} adapters; "
            "load the adapters on top of the base model"
        )
    base = meta.get("base_model") or {}
    mine = base_model_sha256(model)
    if base.get("weights_sha256") != mine:
        raise ValueError(
            f"the adapters in {folder} were made for another base model: they expect "
            f"weights with SHA-256 {str(base.get('weights_sha256'))[:16]}... (the model "
            f"loaded from {base.get('source')}), but {model.source} has {mine[:16]}...; "
            "load them on top of the model they were adapted from"
        )
    try:
        state = torch.load(folder / ADAPTERS_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read the adapters {folder / ADAPTERS_FILE}: {exc}") from exc
    from sb_meta.adapt.method import Method
    from sb_meta.adapt.plan import build_brain, plan

    new_asr = model.copy_interface()
    brain = build_brain(model, new_asr, plan(model, Method(strategy="finetune", steps=1, addons=meta["addons"],
                                                           addon_config=meta.get("config") or {})))
    expected = set(_adapter_state(brain))
    if set(state) != expected:
        raise ValueError(
            f"the adapters in {folder} do not fit this model: missing "
            f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}"
        )
    taken = set()
    for _, names in brain.call_hook("sbmeta_load_adapter_state", state=state):
        taken.update(names or [])
    if taken != expected:
        raise ValueError(f"no add-on took the adapter tensors {sorted(expected - taken)[:5]}")
    adapters = adapters_record(brain, model, meta["addons"], meta.get("config") or {})
    adapters["adaptations"] = list(meta.get("adaptations") or [])
    adapters["loaded_from"] = str(folder)
    return model.derived(new_asr, adapters=adapters, brain=brain)


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
    if isinstance(model, dict):
        modules = dict(model)
    else:
        loadables = model.asr.hparams.pretrainer.loadables
        modules = {n: m for n, m in loadables.items() if isinstance(m, torch.nn.Module)}
        if not modules:
            modules = {"mods": model.asr.mods}
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
