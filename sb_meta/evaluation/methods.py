"""Test-time adaptation methods compared by the k-shot protocol.

A :class:`Method` is one way of adapting a loaded model to a task's support
utterances: a strategy (``finetune``, ``anil``, ``metasgd``, ``meta_lstm``...),
its steps and step size, the parameters it adapts (``ctc_lin.*`` for a head
only), add-ons (``lora``, ``lhuc``, ``augment``, ``distill``...) with their
settings, and whether it reads the transcripts at all (``unsupervised``).
Every method of an evaluation adapts on the same support draws.

The name of an adapter add-on (one declaring ``kind = "adapter"``, e.g.
``lora``) is a method of its own: that add-on applied with ``finetune``.
Which names those are comes from the registered plugins.

Example
-------
>>> m = Method.parse("head:finetune:ctc_lin.*")
>>> m.name, m.strategy, m.adapt_params
('head', 'finetune', ['ctc_lin.*'])
>>> Method.parse("lora").addons
['lora']
"""

from dataclasses import asdict, dataclass, field

__all__ = ["Method", "methods_from", "adapter_names"]


def adapter_names(registry=None):
    """Names of the adapter add-ons of ``registry`` (default: the installed plugins'),
    each of which stands for itself applied with ``finetune``."""
    if registry is None:
        from sb_meta.plugins import PluginRegistry

        registry = PluginRegistry(strict=False)
    return registry.addon_names("adapter")


@dataclass
class Method:
    """One test-time adaptation method.

    Attributes
    ----------
    name : str
        How reports name it.
    strategy : str, optional
        Default: the model's (``metasgd`` when it has learned step sizes).
    steps : int, optional
        Default: the evaluation's ``steps``.
    lr : float, optional
        Default: the evaluation's ``lr``, else the model's.
    adapt_params : list of str, optional
        Parameter name patterns.
    addons : list of str
        Add-ons active during adaptation.
    addon_config : dict
        Their settings.
    unsupervised : str, optional
        ``"entropy"``, ``"pseudo"`` or ``"cmvn"``: adapt without the transcripts.
    unsupervised_config : dict
        Its settings (:data:`sb_meta.adapt.unsupervised.DEFAULTS`).
    guard : bool
        Keep a supervised adaptation only when it lowers the word errors of
        support utterances held out of it in turn (:mod:`sb_meta.adapt.safeguard`).
    cmvn : float, optional
        Re-estimate the input statistics on the support with this weight
        before the update (feature-space, then model-space adaptation).
    """

    name: str
    strategy: str = None
    steps: int = None
    lr: float = None
    adapt_params: list = None
    addons: list = field(default_factory=list)
    addon_config: dict = field(default_factory=dict)
    unsupervised: str = None
    unsupervised_config: dict = field(default_factory=dict)
    guard: bool = False
    cmvn: float = None

    @classmethod
    def parse(cls, text, adapters=None):
        """A method from ``name[:strategy[:pattern+pattern]]`` (CLI) or an adapter add-on name.

        ``adapters``: the adapter add-on names (default :func:`adapter_names`).
        """
        parts = text.split(":")
        name = parts[0]
        if len(parts) == 1:
            if name in (adapter_names() if adapters is None else adapters):
                return cls(name=name, strategy="finetune", addons=[name])
            return cls(name=name, strategy=name)
        adapt = [p for p in parts[2].replace(",", "+").split("+") if p] if len(parts) > 2 else None
        return cls(name=name, strategy=parts[1] or None, adapt_params=adapt)

    def as_dict(self):
        return asdict(self)

    def adapt(self, model, wavs, transcripts, ids, task, steps=3, lr=None, adapt_params=None):
        """``model`` adapted to the support (a new model); transcripts are not
        read when the method is unsupervised."""
        kwargs = dict(
            strategy=self.strategy,
            steps=self.steps if self.steps is not None else steps,
            lr=self.lr if self.lr is not None else lr,
            adapt_params=self.adapt_params if self.adapt_params is not None else adapt_params,
            ids=ids,
            task=task,
            addons=list(self.addons) or None,
            addon_config=dict(self.addon_config) or None,
        )
        if self.cmvn is not None:
            kwargs["cmvn"] = self.cmvn
        if self.unsupervised:
            if self.guard:
                raise ValueError(f"method {self.name!r}: the guard checks transcripts of held-out support "
                                 "utterances, so it cannot guard unsupervised adaptation")
            return model.adapt(wavs, None, unsupervised=self.unsupervised,
                               unsupervised_config=dict(self.unsupervised_config) or None, **kwargs)
        if self.guard:
            from sb_meta.adapt.safeguard import guarded_adapt

            return guarded_adapt(model, wavs, transcripts, **kwargs)
        return model.adapt(wavs, transcripts, **kwargs)


def methods_from(items, adapters=None):
    """:class:`Method` s from names, ``name:strategy:patterns`` strings, dicts or methods.

    ``adapters``: the adapter add-on names a bare name may be (default
    :func:`adapter_names`, looked up only when a string needs it).

    Raises
    ------
    ValueError
        When two methods have the same name.
    """
    out = []
    for item in items:
        if isinstance(item, Method):
            out.append(item)
        elif isinstance(item, dict):
            out.append(Method(**item))
        else:
            text = str(item).strip()
            if text:
                if adapters is None and ":" not in text:
                    adapters = adapter_names()
                out.append(Method.parse(text, adapters))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"methods are repeated: {names}")
    return out
