"""Checking a :class:`~sb_meta.adapt.method.Method` against a model, and building its adaptation brain.

The first steps of :meth:`sb_meta.adapt.AdaptableASR.adapt` (see :mod:`sb_meta.adapt.run`):
:func:`plan` refuses in one line what cannot run, before any work;
:func:`build_brain` makes the :class:`~sb_meta.adapt.objective.AdaptBrain`
over a copy of the model's modules.
"""

import math
from dataclasses import dataclass

import speechbrain as sb

from sb_meta.adapt.hf import adaptable_hf_modules
from sb_meta.adapt.method import Method
from sb_meta.adapt.objective import AdaptBrain, trainable_view
from sb_meta.adapt.testtime import reads_transcripts
from sb_meta.utils import quiet

__all__ = ["Plan", "plan", "build_brain", "needs_state"]


@dataclass
class Plan:
    """A :class:`Method` checked against a model: what :func:`start` builds."""

    method: Method
    strategy: str
    uses_state: bool
    addons: list
    addon_config: dict
    reads_transcripts: bool


def needs_state(cls):
    """Whether the strategy class ``cls`` adapts with meta-learned state (e.g. Meta-SGD step sizes)."""
    from sb_meta.strategy import Strategy

    return cls.meta_modules is not Strategy.meta_modules


def plan(model, method):
    """The :class:`Plan` of ``method`` on ``model``, refusing in one line what cannot run."""
    from sb_meta.options import check_options
    from sb_meta.strategy import META_KEYS

    addons = list(method.addons)
    classes = [model.registry.get_addon(name) for name in addons]  # unknown: lists the valid ones
    if len(set(addons)) != len(addons):
        raise ValueError(f"add-on listed twice: {addons}")
    adapters = [c for c in classes if c.kind == "adapter"]
    if model.adapters and adapters:
        raise ValueError(
            f"this model already carries {'+'.join(model.adapters['addons'])} adapters; "
            "adapt them further without adapter add-ons, or adapt the base model")
    config = dict(method.addon_config)
    if config and not addons:
        raise ValueError("addon_config is given but no add-on (addons=[...])")
    clash = sorted(set(config) & (set(META_KEYS) | {"ctc_weight", "blank_index"}))
    if clash:
        raise ValueError(f"addon_config cannot set {clash}; set them in the Method itself")
    check_options(config, [i.cls for i in model.registry.addons.values()], addons)
    strategy = method.strategy or ("finetune" if adapters or model.adapters else model.default_strategy)
    uses_state = needs_state(model.check_strategy(strategy))
    if (adapters or model.adapters) and uses_state:
        raise ValueError(
            f"strategy {strategy!r} adapts with meta-learned state of the model's own "
            "parameters and cannot adapt add-on adapters; use finetune, fomaml or anil")
    steps = 3 if method.steps is None else method.steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if method.lr is not None and not (math.isfinite(float(method.lr)) and float(method.lr) > 0):
        raise ValueError(f"lr must be a finite number > 0, got {method.lr!r}")
    reads = reads_transcripts(classes, config)
    if method.guard and not reads:
        raise ValueError(f"method {method.name!r}: the guard checks the transcripts of held-out support "
                         "utterances, so it cannot guard adaptation from the audio alone")
    method = Method(**dict(method.as_dict(), steps=steps, strategy=strategy, addons=addons, addon_config=config))
    return Plan(method, strategy, uses_state, addons, config, reads)


def build_brain(model, asr, checked):
    """An :class:`AdaptBrain` over ``asr``'s modules (add-on surgery applied)."""
    view = trainable_view(asr, model.module_names)
    saved, method = model.meta_config, checked.method
    hparams = {
        "meta_strategy": checked.strategy,
        "inner_steps": max(int(method.steps), 1),
        "inner_lr": float(saved.get("inner_lr") or 0.05) if method.lr is None else float(method.lr),
        "first_order": True,
        "adapt_params": saved.get("adapt_params") if checked.uses_state else method.adapt_params,
        "plugins": saved.get("plugins") or [],
        "meta_addons": list(checked.addons),
        "blank_index": view.blank_index,
        "ctc_weight": float((model.info or {}).get("ctc_weight") or 0.5) if method.ctc_weight is None
        else float(method.ctc_weight),
    }
    hparams.update(checked.addon_config)
    for p in (p for m in view.modules.values() for p in m.parameters()):
        p.requires_grad_(True)
    adaptable_hf_modules(view.modules)
    with quiet("speechbrain.core"):  # no per-adaptation "model statistics" logs
        brain = AdaptBrain(view, modules=dict(view.modules), hparams=hparams,
                           run_opts={"device": str(model.device), "noprogressbar": True},
                           registry=model.registry)
    encoder = view.encoder
    for name, module in brain.modules.items():  # add-ons may have replaced whole layers
        if isinstance(encoder, sb.nnet.containers.Sequential) and name in encoder and encoder[name] is not module:
            encoder[name] = module
    brain.modules.eval()
    return brain
