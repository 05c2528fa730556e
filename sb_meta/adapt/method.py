"""What :meth:`~sb_meta.adapt.AdaptableASR.adapt` takes: a :class:`Support` set and a :class:`Method`.

A :class:`Method` is one way of adapting a loaded model to a task's support
utterances: a strategy (``finetune``, ``anil``, ``metasgd``, ``meta_lstm``...),
its steps and step size, the parameters it adapts (``ctc_lin.*`` for a head
only), and add-ons with their settings. Add-ons are of any kind: adapters
(only their layers adapt), test-time methods (which may adapt from the audio
alone: :class:`sb_meta.adapt.testtime.TestTimeMethod`), compressors...
The k-shot protocol (:func:`sb_meta.evaluation.evaluate_kshot`) adapts every
method on the same support draws.

The name of an adapter add-on (one declaring ``kind = "adapter"``) is a
method of its own: that add-on applied with ``finetune``; the name of a
test-time method (``kind = "test_time"``) is that add-on applied with the
model's default strategy. Which names those are comes from the registered
plugins.

Example
-------
>>> import numpy as np
>>> support = Support([np.zeros(16000, dtype="float32")], ["YES"], ids=["u1"], task="spk1")
>>> support.transcripts, support.task
(['YES'], 'spk1')
>>> m = Method.parse("head:finetune:ctc_lin.*")
>>> m.name, m.strategy, m.adapt_params
('head', 'finetune', ['ctc_lin.*'])
>>> Method(strategy="finetune", steps=5).name
'finetune'
"""

import dataclasses
import os
from dataclasses import asdict, dataclass, field

__all__ = ["Support", "Method", "methods_from"]


@dataclass
class Support:
    """The support utterances a model adapts to.

    Attributes
    ----------
    audio : list
        Audio files, or 1-D waveforms (numpy arrays or tensors) at the model's sample rate.
    transcripts : list of str, optional
        One per utterance; None when only the audio is known (a test-time method
        that reads no transcript, e.g. ``entropy``, adapts from it).
    ids : list of str, optional
        Utterance IDs, used in messages and in the provenance record.
    task : str, optional
        The task's name (speaker, channel...), handed to the hooks.
    """

    audio: list
    transcripts: list = None
    ids: list = None
    task: str = None

    @classmethod
    def coerce(cls, support):
        """A :class:`Support` from itself or a ``(audio, transcripts)`` pair.

        Example
        -------
        >>> Support.coerce((["a.wav"], ["YES"])).transcripts
        ['YES']
        >>> Support.coerce("a.wav")
        Traceback (most recent call last):
        ...
        TypeError: the support is a Support or an (audio, transcripts) pair, got a str
        """
        if isinstance(support, cls):
            return support
        if isinstance(support, tuple) and len(support) == 2:
            return cls(*support)
        if isinstance(support, (str, os.PathLike)) or not isinstance(support, tuple):
            raise TypeError(f"the support is a Support or an (audio, transcripts) pair, "
                            f"got a {type(support).__name__}")
        raise TypeError(f"the support pair has {len(support)} items: give (audio, transcripts)")


@dataclass
class Method:
    """One test-time adaptation method.

    Attributes
    ----------
    name : str, optional
        How reports name it; default the strategy's name, else the add-ons'.
    strategy : str, optional
        Default: the model's (``metasgd`` when it has learned step sizes),
        ``finetune`` with adapter add-ons.
    steps : int, optional
        Gradient steps (>= 1), cycling over the support batches; default 3
        (in an evaluation: its ``steps``).
    lr : float, optional
        Step size; default the meta-learned step sizes for ``metasgd``, else
        the model's ``inner_lr`` (0.05 for models sb-meta did not train).
    adapt_params : list of str, optional
        Parameter name patterns to adapt (``["ctc_lin.*"]``); default the
        strategy's (everything, or the output layer for ``anil``).
    addons : list of str
        Add-ons active during adaptation and at export, e.g. ``["lora"]``
        (only its adapters adapt), ``["entropy"]`` (adapts from the audio
        alone), ``["compress"]``.
    addon_config : dict
        Their settings, e.g. ``{"peft_rank": 4}``.
    guard : bool
        Keep a supervised adaptation only when it lowers the word errors of
        support utterances held out of it in turn (:mod:`sb_meta.adapt.safeguard`).
    batch_size : int, optional
        Support utterances per batch; default all in one batch.
    ctc_weight : float, optional
        Weight of CTC against attention for models with both.
    """

    name: str = None
    strategy: str = None
    steps: int = None
    lr: float = None
    adapt_params: list = None
    addons: list = field(default_factory=list)
    addon_config: dict = field(default_factory=dict)
    guard: bool = False
    batch_size: int = None
    ctc_weight: float = None

    def __post_init__(self):
        if isinstance(self.addons, str):
            self.addons = [a.strip() for a in self.addons.split(",") if a.strip()]
        self.addons = list(self.addons or [])
        self.addon_config = dict(self.addon_config or {})
        if isinstance(self.adapt_params, str):
            self.adapt_params = [self.adapt_params]
        if self.name is None:
            self.name = self.strategy or "+".join(self.addons) or "default"

    @classmethod
    def parse(cls, text, registry=None):
        """A method from ``name[:strategy[:pattern+pattern]]`` (``sb-meta evaluate --methods``)
        or the name of an adapter add-on or a test-time method.

        ``registry``: the plugins whose add-on names may stand for a method
        (default: the installed ones, looked up only when a bare name needs it).
        """
        parts = text.split(":")
        name = parts[0]
        if len(parts) == 1:
            if registry is None:
                from sb_meta.plugins import PluginRegistry

                registry = PluginRegistry(strict=False)
            if name in registry.addon_names("adapter"):
                return cls(name=name, strategy="finetune", addons=[name])
            if name in registry.addon_names("test_time"):
                return cls(name=name, addons=[name])
            return cls(name=name, strategy=name)
        adapt = [p for p in parts[2].replace(",", "+").split("+") if p] if len(parts) > 2 else None
        return cls(name=name, strategy=parts[1] or None, adapt_params=adapt)

    @classmethod
    def coerce(cls, method, registry=None):
        """A :class:`Method` from itself, its string form (:meth:`parse`), a dict of its fields or None
        (the model's default adaptation)."""
        if method is None:
            return cls()
        if isinstance(method, cls):
            return method
        if isinstance(method, dict):
            return cls(**method)
        return cls.parse(str(method).strip(), registry)

    def as_dict(self):
        return asdict(self)

    def with_defaults(self, **defaults):
        """This method with its unset (None) fields of ``defaults`` filled (an evaluation's
        ``steps``, ``lr``, ``adapt_params``).

        Example
        -------
        >>> Method(strategy="finetune", lr=0.1).with_defaults(steps=3, lr=0.05).lr
        0.1
        """
        return dataclasses.replace(
            self, **{k: v for k, v in defaults.items() if getattr(self, k) is None and v is not None})


def methods_from(items, registry=None):
    """:class:`Method` s from names, ``name:strategy:patterns`` strings, dicts or methods.

    ``registry``: the plugins whose add-on names may stand for a method (see :meth:`Method.parse`).

    Raises
    ------
    ValueError
        When two methods have the same name.
    """
    out = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        if isinstance(item, str) and ":" not in item and registry is None:
            from sb_meta.plugins import PluginRegistry

            registry = PluginRegistry(strict=False)
        out.append(Method.coerce(item, registry))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"methods are repeated: {names}")
    return out
