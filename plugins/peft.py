"""Parameter-efficient adaptation add-ons: LoRA, Houlsby adapters and LHUC.

Each add-on wraps the target **linear layers** (``torch.nn.Linear``; LSTM/GRU
and convolution layers are never wrapped) of ``brain.modules`` with a small
adapter and narrows what the inner loop (and test-time adaptation) adapts to
the adapter parameters alone. It composes with any strategy::

    meta_strategy: fomaml
    meta_addons: [lora]
    peft_targets: ["*DNN*", "*ctc_lin*"]   # module name patterns (fnmatch)
    peft_rank: 8
    peft_alpha: 8

``lora``
    SpeechBrain's :class:`speechbrain.nnet.adapters.LoRA`:
    ``y = W x + b + (alpha / rank) * U D x`` with the up-projection ``U``
    zero-initialised.
``houlsby``
    SpeechBrain's :class:`speechbrain.nnet.adapters.HoulsbyAdapterLinear`
    (bottleneck of ``peft_rank`` units after the layer, residual), with its
    up-projection zero-initialised.
``lhuc``
    Learning Hidden Unit Contributions: ``y = (W x + b) * 2 sigmoid(r)``, one
    ``r`` per output unit, initialised to 0 (scale 1).

Every adapter starts as the identity, so the surgery does not change what the
model computes. The surgery replaces each target ``nn.Linear`` in place
(``ctc_lin.w`` becomes a wrapper whose ``pretrained_module`` /
``pretrained_linear`` is the original layer, so a base parameter
``ctc_lin.w.weight`` is then named ``ctc_lin.w.pretrained_module.weight``).
The wrappers are ordinary modules: ``torch.func.functional_call`` swaps their
parameters like any other, the outer optimizer (created later, in
``on_fit_start``) sees the adapter parameters, and checkpoints of the brain's
modules hold them; the add-on also registers the adapter tensors with the
brain's checkpointer (``peft_<name>``), so they are checkpointed even when a
recipe's recoverables hold a different container of the modules.

Configuration (read from the recipe's hparams, all optional)
------------------------------------------------------------
``peft_targets``
    Shell-style patterns over module names. A linear layer is wrapped when
    its name or the name of one of its enclosing modules matches (``ctc_lin``
    selects ``ctc_lin.w``). A pattern that matches no module, or only modules
    without a linear layer (``enc.RNN``), is an error. Default: by model
    family (:func:`sb_meta.adapt.families.default_adapter_targets`): the
    attention and feed-forward projections and the CTC head of Transformer,
    Conformer, wav2vec2 / HuBERT / WavLM and Whisper models;
    ``["*DNN*", "*ctc_lin*"]`` (the CRDNN's DNN linear layer(s) and the CTC
    output layer) otherwise.
``peft_rank``
    LoRA rank / Houlsby bottleneck size (default 8; unused by ``lhuc``).
``peft_alpha``
    LoRA scaling numerator (scale ``alpha / rank``); default ``peft_rank``,
    i.e. a scale of 1.
``peft_freeze_base``
    ``True``: every non-adapter parameter is frozen (``requires_grad=False``),
    so the outer optimizer trains only the adapters (classic PEFT
    fine-tuning). Default ``False``: the outer loop trains the model and the
    adapters' initialisation; only the inner loop is restricted to adapters.

Example
-------
>>> import torch
>>> from sb_meta.testing import make_toy_brain
>>> brain = make_toy_brain({"meta_strategy": "fomaml", "meta_addons": ["lora"],
...                         "peft_targets": ["lin*"], "peft_rank": 2})
>>> brain.strategy.adapt_names()
['lin1.adapter_down_proj.weight', 'lin1.adapter_up_proj.weight', 'lin2.adapter_down_proj.weight', 'lin2.adapter_up_proj.weight']
>>> sorted(brain.addons[0].adapter_state_dict(brain))[:2]
['lin1.adapter_down_proj.weight', 'lin1.adapter_up_proj.weight']
"""

import fnmatch

import torch
from speechbrain.nnet.adapters import HoulsbyAdapterLinear, LoRA, replace_module

from sb_meta.adapt.families import CRDNN_TARGETS, default_adapter_targets
from sb_meta.contract import CommandOption
from sb_meta.plugins import hookimpl
from sb_meta.strategy import AddOn

__all__ = [
    "DEFAULT_TARGETS",
    "LHUC",
    "LoRAAddOn",
    "HoulsbyAddOn",
    "LHUCAddOn",
    "PEFTAddOn",
    "adapter_param_names",
    "merge_wrapper",
    "select_linear_layers",
]

#: ``peft_targets`` of the CRDNN family: its DNN linear layer(s) and the CTC head.
DEFAULT_TARGETS = CRDNN_TARGETS


class LHUC(torch.nn.Module):
    """Learning Hidden Unit Contributions around a linear layer.

    ``y = pretrained_module(x) * 2 * sigmoid(lhuc_r)`` with one amplitude
    parameter per output unit, initialised to 0 (scale exactly 1).

    Arguments
    ---------
    target_module : torch.nn.Linear
        The layer whose outputs are re-scaled.

    Example
    -------
    >>> lin = torch.nn.Linear(4, 3)
    >>> x = torch.randn(2, 4)
    >>> wrapped = LHUC(lin)
    >>> torch.equal(wrapped(x), lin(x))
    True
    >>> [n for n, _ in wrapped.named_parameters()]
    ['lhuc_r', 'pretrained_module.weight', 'pretrained_module.bias']
    """

    def __init__(self, target_module):
        super().__init__()
        if not isinstance(target_module, torch.nn.Linear):
            raise ValueError(f"LHUC wraps torch.nn.Linear layers, got {type(target_module).__name__}")
        w = target_module.weight
        self.lhuc_r = torch.nn.Parameter(
            torch.zeros(target_module.out_features, device=w.device, dtype=w.dtype)
        )
        self.pretrained_module = target_module

    def forward(self, x):
        """The wrapped layer's outputs, scaled per unit."""
        return self.pretrained_module(x) * (2.0 * torch.sigmoid(self.lhuc_r))


#: wrapper type -> name of its child holding the original layer
_PRETRAINED_CHILD = {LoRA: "pretrained_module", HoulsbyAdapterLinear: "pretrained_linear", LHUC: "pretrained_module"}


def _is_wrapper(module, types=None):
    return type(module) in (types or _PRETRAINED_CHILD)


def adapter_param_names(modules, types=None):
    """Names (as in ``modules.named_parameters()``) of the adapter parameters.

    Arguments
    ---------
    modules : torch.nn.Module
        Usually ``brain.modules``.
    types : sequence of type, optional
        Wrapper types to consider (default: LoRA, Houlsby, LHUC).

    Returns
    -------
    list of str

    Example
    -------
    >>> mods = torch.nn.ModuleDict({"out": LHUC(torch.nn.Linear(2, 2))})
    >>> adapter_param_names(mods)
    ['out.lhuc_r']
    """
    found = set()
    for wname, wrapper in modules.named_modules():
        if not _is_wrapper(wrapper, types):
            continue
        keep = _PRETRAINED_CHILD[type(wrapper)]
        prefix = f"{wname}." if wname else ""
        for pname, _ in wrapper.named_parameters():
            if pname.split(".", 1)[0] != keep:
                found.add(prefix + pname)
    return [n for n, _ in modules.named_parameters() if n in found]


def _adapter_parts(modules):
    """Names of modules that are parts of adapters (not to be wrapped themselves)."""
    parts = set()
    for wname, wrapper in modules.named_modules():
        if _is_wrapper(wrapper):
            keep = _PRETRAINED_CHILD[type(wrapper)]
            for cname, child in wrapper.named_children():
                if cname != keep:
                    base = f"{wname}.{cname}" if wname else cname
                    parts.update(f"{base}.{n}" if n else base for n, _ in child.named_modules())
    return parts


def select_linear_layers(modules, patterns=None, strict=None):
    """Names of the ``torch.nn.Linear`` layers of ``modules`` that ``patterns`` select.

    A linear layer is selected when its name, or the name of a module that
    encloses it, matches one of the shell-style ``patterns``. Layers inside
    existing adapters are never selected.

    Arguments
    ---------
    modules : torch.nn.Module
        Usually ``brain.modules``.
    patterns : str or list of str, optional
        ``peft_targets``; default :data:`DEFAULT_TARGETS`.
    strict : bool, optional
        Whether every pattern must select a linear layer (default: when
        ``patterns`` are given); otherwise one selecting any is enough.

    Returns
    -------
    list of str
        In module order.

    Raises
    ------
    ValueError
        When a given pattern matches no module, or only modules without a
        linear layer; or when nothing at all is selected.

    Example
    -------
    >>> mods = torch.nn.ModuleDict({"rnn": torch.nn.LSTM(2, 2),
    ...                             "head": torch.nn.Sequential(torch.nn.Linear(2, 2))})
    >>> select_linear_layers(mods, ["head"])
    ['head.0']
    >>> select_linear_layers(mods, ["rnn"])
    Traceback (most recent call last):
    ...
    ValueError: peft_targets pattern 'rnn' matches rnn (LSTM) but no linear layer; ...
    """
    strict = patterns is not None if strict is None else strict
    if patterns is None:
        patterns = DEFAULT_TARGETS
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    if not patterns:
        raise ValueError("peft_targets is empty; give module name patterns such as ['*ctc_lin*']")
    named = {n: m for n, m in modules.named_modules() if n}
    inside = _adapter_parts(modules)
    linears = [n for n, m in named.items() if isinstance(m, torch.nn.Linear) and n not in inside]

    def enclosing(name):
        parts = name.split(".")
        return [".".join(parts[: i + 1]) for i in range(len(parts))]

    shown = ", ".join(linears[:20]) or "none"
    chosen = set()
    for pat in patterns:
        hits = [n for n in named if n not in inside and fnmatch.fnmatchcase(n, pat)]
        lin_hits = [n for n in linears if any(fnmatch.fnmatchcase(a, pat) for a in enclosing(n))]
        if strict and not hits:
            raise ValueError(
                f"peft_targets pattern {pat!r} matches no module; linear layers are: {shown}"
            )
        if strict and not lin_hits:
            what = ", ".join(f"{n} ({type(named[n]).__name__})" for n in hits[:3])
            raise ValueError(
                f"peft_targets pattern {pat!r} matches {what} but no linear layer; the PEFT "
                f"add-ons wrap torch.nn.Linear layers only (not LSTM/GRU or convolutions); "
                f"linear layers are: {shown}"
            )
        chosen.update(lin_hits)
    if not chosen:
        raise ValueError(
            f"peft_targets {patterns} select no linear layer; set peft_targets to patterns "
            f"over these linear layers: {shown}"
        )
    return [n for n in linears if n in chosen]


def merge_wrapper(wrapper):
    """A plain ``torch.nn.Linear`` computing what a LoRA or LHUC wrapper computes.

    Houlsby adapters (non-linear) cannot be merged.

    Example
    -------
    >>> lin = torch.nn.Linear(4, 3)
    >>> wrapped = LHUC(lin)
    >>> with torch.no_grad():
    ...     _ = wrapped.lhuc_r.uniform_(-1, 1)
    >>> x = torch.randn(2, 4)
    >>> torch.allclose(merge_wrapper(wrapped)(x), wrapped(x), atol=1e-6)
    True
    """
    if isinstance(wrapper, HoulsbyAdapterLinear):
        raise ValueError("Houlsby adapters are non-linear and cannot be merged into the layer")
    inner = wrapper.pretrained_module
    if _is_wrapper(inner):
        inner = merge_wrapper(inner)
    if not isinstance(inner, torch.nn.Linear):
        raise ValueError(f"cannot merge an adapter around a {type(inner).__name__}")
    merged = torch.nn.Linear(
        inner.in_features, inner.out_features, bias=inner.bias is not None,
        device=inner.weight.device, dtype=inner.weight.dtype,
    )
    with torch.no_grad():
        weight = inner.weight.detach().clone()
        bias = inner.bias.detach().clone() if inner.bias is not None else None
        if isinstance(wrapper, LHUC):
            scale = 2.0 * torch.sigmoid(wrapper.lhuc_r.detach())
            weight = weight * scale[:, None]
            bias = bias * scale if bias is not None else None
        elif isinstance(wrapper, LoRA):
            delta = wrapper.adapter_up_proj.weight @ wrapper.adapter_down_proj.weight
            weight = weight + wrapper.scaling * delta
        else:
            raise TypeError(f"not a PEFT wrapper: {type(wrapper).__name__}")
        merged.weight.copy_(weight)
        if bias is not None:
            merged.bias.copy_(bias)
    merged.weight.requires_grad_(inner.weight.requires_grad)
    if bias is not None:
        merged.bias.requires_grad_(inner.bias.requires_grad)
    return merged


class _AdapterTensors(torch.nn.Module):
    """The adapter parameters of one add-on under flat names (shared, not copied),
    registered with the brain's checkpointer."""

    def __init__(self, named):
        super().__init__()
        for name, param in named.items():
            self.register_parameter(name.replace(".", "__"), param)


def _name_list(text):
    """Comma-separated names, as ``--peft-targets`` takes them."""
    return [x.strip() for x in text.split(",") if x.strip()]


class PEFTAddOn(AddOn):
    """Base of the PEFT add-ons: module surgery at construction, adapter-only
    inner loop, adapter state access.

    Subclasses set ``name`` and implement :meth:`make_wrapper`.

    Attributes
    ----------
    wrapped : list of str
        Names of the linear layers that were wrapped (their names before the
        surgery, which the wrappers now have).
    settings : dict
        The resolved ``peft_*`` configuration (stored with exported adapters).
    """

    kind = "adapter"
    wrapper_type = None
    options = {"peft_targets": None, "peft_rank": 8, "peft_alpha": None, "peft_freeze_base": False}
    option_prefix = "peft_"
    command_options = (
        CommandOption("--peft", selects=True,
                      help="adapt only parameter-efficient adapters added to the model; lora and "
                           "lhuc are merged into the exported weights unless --adapters-only"),
        CommandOption("--peft-rank", key="peft_rank", parse=int, help="adapter rank (default 8)"),
        CommandOption("--peft-targets", key="peft_targets", parse=_name_list,
                      help="comma-separated module name patterns to adapt with --peft (default by model "
                           "family: attention and feed-forward projections and the CTC head of Transformer, "
                           "Conformer, wav2vec2/HuBERT/WavLM and Whisper models; the DNN and CTC output "
                           "layers of a CRDNN)"),
    )

    def __init__(self, brain, config):
        super().__init__(brain, config)
        given = self.option("peft_targets")
        targets = default_adapter_targets(brain.modules) if given is None else given
        self.rank = self.option("peft_rank")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"peft_rank must be a positive integer, got {self.rank!r}")
        alpha = self.option("peft_alpha")
        self.alpha = float(self.rank if alpha is None else alpha)
        self.freeze_base = bool(self.option("peft_freeze_base"))
        self.wrapped = self.apply(brain.modules, targets, strict=given is not None)
        self.settings = {
            "peft_targets": [targets] if isinstance(targets, str) else list(targets),
            "peft_rank": self.rank,
            "peft_alpha": self.alpha,
            "peft_freeze_base": self.freeze_base,
        }
        if self.freeze_base:
            adapters = set(adapter_param_names(brain.modules))
            for n, p in brain.modules.named_parameters():
                if n not in adapters:
                    p.requires_grad_(False)
        checkpointer = getattr(brain, "checkpointer", None)
        key = f"peft_{self.name}"
        if checkpointer is not None and key not in checkpointer.recoverables:
            own = dict(brain.modules.named_parameters())
            checkpointer.add_recoverable(
                key, _AdapterTensors({n: own[n] for n in self.adapter_names(brain)})
            )

    # ---------------------------------------------------------------- surgery
    def make_wrapper(self, linear):
        """The adapter module wrapping ``linear`` (an ``nn.Linear``)."""
        raise NotImplementedError

    def apply(self, modules, targets=None, strict=None):
        """Wrap the selected linear layers of ``modules`` in place
        (``targets``, ``strict``: see :func:`select_linear_layers`).

        New parameters get the device and dtype of the layer they wrap; the
        wrapped layer's parameters keep their ``requires_grad``.

        Returns
        -------
        list of str
            The names of the wrapped layers.
        """
        names = select_linear_layers(modules, targets, strict)
        for name in names:
            linear = modules.get_submodule(name)
            flags = [(p, p.requires_grad) for p in linear.parameters()]
            wrapper = self.make_wrapper(linear)
            keep = _PRETRAINED_CHILD[type(wrapper)]
            for cname, child in wrapper.named_children():
                if cname != keep:
                    child.to(device=linear.weight.device, dtype=linear.weight.dtype)
            for p, flag in flags:  # SpeechBrain's LoRA freezes the layer; we decide that
                p.requires_grad_(flag)
            replace_module(modules, name, wrapper)
        return names

    # ---------------------------------------------------------------- state
    def adapter_names(self, brain):
        """Names of this add-on's adapter parameters in ``brain.modules``."""
        return adapter_param_names(brain.modules, [self.wrapper_type])

    def adapter_state_dict(self, brain):
        """This add-on's adapter tensors (detached), keyed as in
        ``brain.modules.named_parameters()``."""
        params = dict(brain.modules.named_parameters())
        return {n: params[n].detach() for n in self.adapter_names(brain)}

    def load_adapter_state_dict(self, brain, state):
        """Copy ``state`` (as returned by :meth:`adapter_state_dict`) into the adapters.

        Raises
        ------
        ValueError
            When the names or shapes differ from this brain's adapters.
        """
        own = self.adapter_state_dict(brain)
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{self.name} adapter state does not match the model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        params = dict(brain.modules.named_parameters())
        with torch.no_grad():
            for n, value in state.items():
                if tuple(value.shape) != tuple(own[n].shape):
                    raise ValueError(
                        f"{self.name} adapter {n} has shape {tuple(value.shape)}, the model's "
                        f"is {tuple(own[n].shape)} (different peft_rank or base model?)"
                    )
                params[n].copy_(value.to(params[n].device, params[n].dtype))

    def merge_into(self, root):
        """Replace this add-on's wrappers inside module ``root`` by plain linear
        layers computing the same function (outermost first); returns their names."""
        merged = []
        for name, module in list(root.named_modules()):
            if type(module) is not self.wrapper_type or any(name.startswith(m + ".") for m in merged):
                continue
            if not name:
                raise ValueError(f"cannot merge a {self.name} adapter that is the exported module itself")
            replace_module(root, name, merge_wrapper(module))
            merged.append(name)
        return merged

    # ---------------------------------------------------------------- hooks
    @hookimpl
    def sbmeta_adapt_params(self, brain, names):
        """Only adapter parameters (of any PEFT add-on, so that they stack) adapt."""
        adapters = set(adapter_param_names(brain.modules))
        return [n for n in names if n in adapters]

    @hookimpl
    def sbmeta_adapter_state(self, brain):
        """This add-on's adapter tensors travel without the model."""
        return self.adapter_state_dict(brain)

    @hookimpl
    def sbmeta_load_adapter_state(self, brain, state):
        """Take this add-on's entries of an adapter-only export."""
        own = self.adapter_state_dict(brain)
        self.load_adapter_state_dict(brain, {n: state[n] for n in own if n in state})
        return list(own)

    @hookimpl
    def sbmeta_before_export(self, brain, plan):
        """A SpeechBrain pretrained folder holds plain layers: fold the adapters in."""
        for obj in plan.loadables.values():
            if isinstance(obj, torch.nn.Module):
                self.merge_into(obj)
        plan.info.setdefault("merged_adapters", []).append(self.name)


class LoRAAddOn(PEFTAddOn):
    """LoRA adapters on linear layers; only the adapters adapt (peft_targets, peft_rank, peft_alpha)."""

    name = "lora"
    wrapper_type = LoRA

    def make_wrapper(self, linear):
        return LoRA(linear, rank=self.rank, alpha=self.alpha)


class HoulsbyAddOn(PEFTAddOn):
    """Houlsby bottleneck adapters after linear layers; only the adapters adapt (peft_targets, peft_rank)."""

    name = "houlsby"
    wrapper_type = HoulsbyAdapterLinear
    folds_into_export = False

    def make_wrapper(self, linear):
        wrapper = HoulsbyAdapterLinear(linear, self.rank)
        with torch.no_grad():  # identity at initialisation
            wrapper.adapter_up_proj.weight.zero_()
        return wrapper

    def merge_into(self, root):
        raise ValueError(
            "Houlsby adapters are non-linear and cannot be merged into a SpeechBrain "
            "pretrained folder; export them alone (AdaptableASR.export_adapters, "
            "`sb-meta adapt --adapters-only`)"
        )


class LHUCAddOn(PEFTAddOn):
    """LHUC per-unit output scales 2*sigmoid(r) on linear layers; only the scales adapt (peft_targets)."""

    name = "lhuc"
    wrapper_type = LHUC

    def make_wrapper(self, linear):
        return LHUC(linear)


@hookimpl
def sbmeta_addons():
    return [LoRAAddOn, HoulsbyAddOn, LHUCAddOn]
