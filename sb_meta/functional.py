"""Parameter selection and the functional forward over a brain's own modules.

Fast weights are plain ``dict`` s of tensors. They are fed through
``torch.func.functional_call`` over the brain's ``modules``, so a recipe's
``compute_forward`` / ``compute_objectives`` run unchanged and no module is
ever copied per task.

Normalisation-statistics policy (inner loops)
---------------------------------------------
Inside an inner loop the model runs in training mode, so BatchNorm normalises
with the support batch's statistics, but **no running statistic may drift**:
:func:`frozen_statistics` snapshots every buffer (BatchNorm running mean and
variance, ``num_batches_tracked``, SpeechBrain's ``GlobalNorm``) and the
statistics of SpeechBrain's ``InputNormalization`` and restores them when the
inner loop ends. The outer (query) forward then updates them once per task,
exactly as ordinary training would (Reptile, which has no outer forward, keeps
the update of its first inner forward instead). At test-time adaptation the same snapshot
is taken, so adapting to a speaker never changes the shared statistics.
"""

import contextlib
import fnmatch
import weakref

import torch

__all__ = [
    "select_params",
    "named_params",
    "functional_objective",
    "frozen_statistics",
    "check_functional_compatible",
    "UnsupportedModuleError",
]


class UnsupportedModuleError(TypeError):
    """A module that cannot be run functionally (JIT, compiled, DDP/DataParallel)."""


def named_params(modules, trainable_only=True):
    """Ordered dict of the parameters of ``modules`` (a ``ModuleDict``).

    Example
    -------
    >>> m = torch.nn.ModuleDict({"lin": torch.nn.Linear(2, 3)})
    >>> list(named_params(m))
    ['lin.weight', 'lin.bias']
    """
    return {
        n: p for n, p in modules.named_parameters() if p.requires_grad or not trainable_only
    }


def select_params(names, patterns, what="adapt_params", strict=True):
    """Names matching any of the shell-style ``patterns`` (``fnmatch``).

    Arguments
    ---------
    names : iterable of str
        Candidate parameter names.
    patterns : str or list of str
        Patterns such as ``"ctc_lin.*"``; ``"*"`` or ``"all"`` selects everything.
    what : str
        The configuration key, named in the error message.
    strict : bool
        Every pattern must match something; otherwise only the union must.

    Returns
    -------
    list of str
        The matching names, in their original order.

    Raises
    ------
    ValueError
        When a pattern matches nothing (naming the pattern and some names).

    Example
    -------
    >>> select_params(["enc.w", "enc.b", "ctc_lin.w"], ["ctc_lin.*"])
    ['ctc_lin.w']
    >>> select_params(["enc.w"], "nope.*")
    Traceback (most recent call last):
    ...
    ValueError: adapt_params pattern 'nope.*' matches no parameter; parameters are: enc.w
    """
    names = list(names)
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns or ["*"])
    if any(p in ("*", "all") for p in patterns):
        return names
    chosen = set()
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits and strict:
            shown = ", ".join(names[:25]) + (f", ... ({len(names)} in all)" if len(names) > 25 else "")
            raise ValueError(f"{what} pattern {pat!r} matches no parameter; parameters are: {shown}")
        chosen.update(hits)
    if not chosen:
        raise ValueError(f"{what} patterns {patterns} match no parameter; parameters are: {', '.join(names[:25])}")
    return [n for n in names if n in chosen]


class _Objective(torch.nn.Module):
    """Wraps a brain so that ``functional_call`` can reparametrize its modules."""

    def __init__(self, brain):
        super().__init__()
        self.m = brain.modules
        object.__setattr__(self, "_brain", weakref.ref(brain))  # not a submodule; the brain's life is its own

    def forward(self, batch, stage, task, phase):
        brain = self._brain()
        hooks = phase is not None and hasattr(brain, "transform_batch")
        if hooks:
            batch = brain.transform_batch(batch, task, phase)
        predictions = brain.compute_forward(batch, stage)
        loss = brain.compute_objectives(predictions, batch, stage)
        if hooks:
            loss = brain.add_loss_terms(batch, predictions, loss, task, phase)
        return loss, predictions


#: each brain's :class:`_Objective`, made on its first functional forward, gone with the brain
_OBJECTIVES = weakref.WeakKeyDictionary()


def functional_objective(brain, params, batch, stage, task=None, phase=None):
    """Run ``compute_forward`` + ``compute_objectives`` with ``params`` swapped in.

    Parameters not in ``params`` keep their module values (and their
    autograd connection to the module's own ``Parameter`` s).

    Arguments
    ---------
    brain : speechbrain.Brain
        Any brain with ``modules``, ``compute_forward`` and ``compute_objectives``.
    params : dict of str to torch.Tensor
        Fast weights keyed as in ``brain.modules.named_parameters()``.
    batch : object
        The batch handed to ``compute_forward``.
    stage : speechbrain.Stage
    task : sb_meta.episodes.Task, optional
    phase : sb_meta.contract.Phase, optional
        With a :class:`sb_meta.MetaBrain` and a phase, the plugins' batch
        transforms run before the forward and their loss terms are added
        (:meth:`sb_meta.MetaBrain.transform_batch`, :meth:`~sb_meta.MetaBrain.add_loss_terms`).

    Returns
    -------
    (torch.Tensor, object)
        The loss and the predictions.
    """
    objective = _OBJECTIVES.get(brain)
    if objective is None or objective.m is not brain.modules:
        objective = _OBJECTIVES[brain] = _Objective(brain)
    prefixed = {f"m.{k}": v for k, v in params.items()}
    return torch.func.functional_call(
        objective, prefixed, (batch, stage, task, phase), strict=False, tie_weights=True
    )


@contextlib.contextmanager
def frozen_statistics(modules):
    """Restore every buffer and normalisation statistic of ``modules`` on exit.

    Example
    -------
    >>> bn = torch.nn.BatchNorm1d(3)
    >>> with frozen_statistics(torch.nn.ModuleDict({"bn": bn})):
    ...     _ = bn(torch.randn(4, 3) + 5)
    >>> float(bn.running_mean.abs().sum())
    0.0
    """
    # Buffers are restored by swapping tensors, not in place: an in-place copy
    # would bump the version counter of tensors a second-order graph saved.
    buffers = [
        (m, name, b.detach().clone())
        for m in modules.modules()
        for name, b in m._buffers.items()
        if b is not None
    ]
    stats = [
        (m, dict(m._statistics_dict()))
        for m in modules.modules()
        if hasattr(m, "_statistics_dict") and hasattr(m, "_load_statistics_dict")
    ]
    try:
        yield
    finally:
        for m, name, saved in buffers:
            m._buffers[name] = saved
        for m, saved in stats:
            m._load_statistics_dict(dict(saved))


def check_functional_compatible(modules):
    """Raise :class:`UnsupportedModuleError` for modules ``functional_call`` cannot run.

    JIT-scripted modules refuse reparametrisation, ``torch.compile`` d ones
    cache parameters, and DataParallel/DDP wrappers hide the real module (and
    DDP does not work with ``torch.autograd.grad``).

    Example
    -------
    >>> check_functional_compatible(torch.nn.ModuleDict({"a": torch.nn.Linear(1, 1)}))
    >>> scripted = torch.jit.script(torch.nn.Linear(1, 1))
    >>> check_functional_compatible(torch.nn.ModuleDict({"enc": scripted}))
    Traceback (most recent call last):
    ...
    sb_meta.functional.UnsupportedModuleError: module 'enc' is a JIT-scripted module ...
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    compiled_cls = getattr(getattr(torch, "_dynamo", None), "eval_frame", None)
    compiled_cls = getattr(compiled_cls, "OptimizedModule", ())
    for key, mod in modules.named_modules():
        if not key:
            continue
        kind = None
        if isinstance(mod, (torch.jit.ScriptModule, torch.jit.RecursiveScriptModule)):
            kind = "a JIT-scripted module (sb-meta needs eager modules; drop jit_module_keys)"
        elif compiled_cls and isinstance(mod, compiled_cls):
            kind = "a torch.compile'd module (drop compile_module_keys / --compile for meta-training)"
        elif isinstance(mod, (DataParallel, DistributedDataParallel)):
            kind = (
                "wrapped in DataParallel/DistributedDataParallel (sb-meta all-reduces "
                "meta-gradients itself; run without data_parallel_backend)"
            )
        if kind:
            raise UnsupportedModuleError(f"module {key!r} is {kind}")
