"""The export plan of a loaded (and possibly adapted) model.

The exported ``hyperparams.yaml`` is the model's own, round-tripped with
ruamel.yaml; the pretrainer's ``paths`` and ``collect_in`` are dropped so the
loadables are fetched from the new folder. Module loadables are saved from
copies of the model's modules; file loadables (tokenizers) are copied as
they were loaded.
"""

import copy
import logging

import torch

from sb_meta.export.plan import (
    HPARAMS_FILE,
    META_STATE_FILE,
    ExportPlan,
    copy_loadables,
    now,
    state_bytes,
    versions,
)

__all__ = ["adapted_plan", "model_yaml"]

logger = logging.getLogger(__name__)


def model_yaml(text, source="the model's hyperparams.yaml"):
    """The model's ``hyperparams.yaml`` as a ruamel document, pretrainer paths dropped,
    and the keys that name code sb-meta does not trust but the model does not need
    (:func:`sb_meta.trust.unneeded_untrusted_keys`; a folder loaded with ``trust=True``)."""
    from ruamel.yaml import YAML

    from sb_meta.trust import unneeded_untrusted_keys

    doc = YAML().load(text)
    for key in unneeded_untrusted_keys(text) if hasattr(doc, "pop") else []:
        logger.warning("the export leaves out %s's key %r: it names code sb-meta does not trust "
                       "and the model does not use it", source, key)
        doc.pop(key)
    pretrainer = doc.get("pretrainer") if hasattr(doc, "get") else None
    if not isinstance(pretrainer, dict) or "loadables" not in pretrainer:
        raise ValueError(f"{source} has no `pretrainer:` with `loadables:`; it cannot be exported")
    for key in ("paths", "collect_in"):
        pretrainer.pop(key, None)
    return doc


def adapted_plan(model):
    """An :class:`~sb_meta.export.ExportPlan` writing ``model`` (an ``AdaptableASR``)."""
    pretrainer = model.asr.hparams.pretrainer
    loadables = dict(pretrainer.loadables)
    modules = {n: o for n, o in loadables.items() if isinstance(o, torch.nn.Module)}
    missing = [n for n in loadables if n not in modules and n not in model._files]
    if missing:
        raise ValueError(f"cannot export {model.source}: the loadables {missing} were not loaded from files")
    info = copy.deepcopy(model.info) if model.info else {}
    info.setdefault("strategy", None)
    info.setdefault("meta_config", {})
    info.setdefault("base_model", {"kind": "loaded", "source": model.source})
    info["created"] = now()
    info["versions"] = versions()
    info["sample_rate"] = model.sample_rate
    if model.module_names:
        info["module_names"] = model.module_names
    plan = ExportPlan(
        interface=model.interface,
        yaml=model_yaml(model.yaml_text, f"{model.source}/{HPARAMS_FILE}"),
        loadables=copy_loadables(modules),
        info=info,
        reference=lambda wavs, lens: model.asr.encode_batch(wavs, lens),
        files={f"{n}.ckpt": model._files[n] for n in loadables if n not in modules},
    )
    if model.meta_state is not None and (model.info or {}).get("meta_state"):
        plan.files[META_STATE_FILE] = state_bytes(model.meta_state)
    return plan
