"""Base classes for strategies (learning algorithms) and add-ons.

A :class:`Strategy` has one obvious verb, :meth:`Strategy.adapt` (support set
-> fast weights), and contributes the meta-gradient of a task with
:meth:`Strategy.task_backward`, which accumulates into the ``.grad`` of the
brain's parameters. :class:`sb_meta.MetaBrain` then steps the optimizer through
SpeechBrain's own ``optimizers_step``.

Writing a new strategy means subclassing :class:`Strategy` (usually
:class:`GradientStrategy`), giving it a ``name`` and returning it from a
plugin's ``sbmeta_strategies`` hook.
"""

import contextlib
import logging

import torch

from sb_meta.functional import (
    frozen_statistics,
    functional_objective,
    named_params,
    select_params,
)

logger = logging.getLogger(__name__)

__all__ = ["MetaConfig", "Strategy", "GradientStrategy", "AddOn", "META_KEYS"]

#: Configuration keys, identical in YAML and on the command line.
META_KEYS = {
    "meta_strategy": "fomaml",
    "inner_steps": 1,
    "inner_lr": 0.01,
    "first_order": None,  # None: the strategy's own default
    "meta_batch_tasks": 4,
    "k_support": 5,
    "k_query": 5,
    "task_column": "spk_id",
    "adapt_params": None,  # None: the strategy's own default
    "support_seconds": None,
    "episodes_per_epoch": None,
    "meta_addons": [],
    "plugins": [],
}


class MetaConfig(dict):
    """The meta-learning configuration read from a recipe's hparams.

    Missing keys take the defaults of :data:`META_KEYS`.

    Example
    -------
    >>> cfg = MetaConfig.from_hparams({"meta_strategy": "maml", "inner_steps": 3, "lr": 1.0})
    >>> cfg.meta_strategy, cfg.inner_steps, cfg.k_support
    ('maml', 3, 5)
    >>> MetaConfig.from_hparams({"inner_step": 3})
    Traceback (most recent call last):
    ...
    KeyError: "unknown key 'inner_step' (did you mean 'inner_steps'?); meta keys are: ..."
    """

    __getattr__ = dict.__getitem__

    @classmethod
    def from_hparams(cls, hparams):
        import difflib

        hp = hparams if isinstance(hparams, dict) else vars(hparams)
        for key in hp:
            if key in META_KEYS:
                continue
            close = difflib.get_close_matches(key, META_KEYS, n=1, cutoff=0.85)
            if close:
                raise KeyError(
                    f"unknown key {key!r} (did you mean {close[0]!r}?); "
                    f"meta keys are: {', '.join(META_KEYS)}"
                )
        cfg = cls({k: hp.get(k, v) for k, v in META_KEYS.items()})
        for key in ("inner_steps", "meta_batch_tasks", "k_support", "k_query"):
            if not isinstance(cfg[key], int) or cfg[key] < 0:
                raise ValueError(f"{key} must be a non-negative integer, got {cfg[key]!r}")
        if cfg["meta_batch_tasks"] < 1:
            raise ValueError("meta_batch_tasks must be >= 1")
        if float(cfg["inner_lr"]) <= 0:
            raise ValueError(f"inner_lr must be > 0, got {cfg['inner_lr']!r}")
        return cfg


class Strategy:
    """A learning algorithm: inner loop (``adapt``) and outer objective.

    Subclasses set ``name`` and implement :meth:`adapt` and
    :meth:`task_backward` (or override :meth:`episode_backward` entirely, as
    the joint baseline does).

    Arguments
    ---------
    brain : sb_meta.MetaBrain
        The brain whose modules are meta-trained / adapted.
    config : MetaConfig
        The meta configuration.
    """

    name = None
    #: default ``adapt_params`` patterns
    default_adapt_params = ("*",)
    #: default ``first_order``
    default_first_order = True

    def __init__(self, brain, config):
        self.brain = brain
        self.config = config
        self.first_order = (
            self.default_first_order if config.get("first_order") is None else bool(config["first_order"])
        )

    # ---------------------------------------------------------------- helpers
    def meta_modules(self):
        """Extra ``nn.Module`` s holding meta-learned state (checkpointed, optimized)."""
        return {}

    def adapt_names(self):
        """Names of the parameters the inner loop adapts."""
        patterns = self.config.get("adapt_params")
        if patterns:
            names = select_params(self.brain.base_param_names(), patterns)
        else:  # the strategy's defaults: lenient per pattern, but not empty
            names = select_params(
                self.brain.base_param_names(), self.default_adapt_params, strict=False
            )
        for narrowed in self.brain.addon_hook("sbmeta_adapt_params", names=names):
            if narrowed is not None:
                names = [n for n in names if n in set(narrowed)]
        if not names:
            raise ValueError(f"strategy {self.name!r}: no parameter left to adapt")
        return names

    def loss(self, params, batch, outer=False):
        """The recipe's training objective with ``params`` swapped in (plus add-on terms)."""
        hook_name = "sbmeta_outer_loss" if outer else "sbmeta_inner_loss"
        return functional_objective(
            self.brain,
            params,
            batch,
            self.brain.meta_stage,
            hook=self.brain.addon_loss_hook(hook_name),
        )[0]

    # ------------------------------------------------------------ the verbs
    def adapt(self, support, steps=None, lr=None, create_graph=False):
        """Fast weights adapted to ``support`` (a batch or list of batches)."""
        raise NotImplementedError

    def task_backward(self, task, weight):
        """Accumulate ``weight`` x this task's meta-gradient into ``.grad``.

        Returns the (detached) outer loss of the task for logging.
        """
        raise NotImplementedError

    def episode_backward(self, episode, scale=1.0):
        """Accumulate the meta-gradient of this rank's share of ``episode``.

        Each task is weighted ``scale / episode.n_global_tasks`` so that summing
        over ranks gives the mean over the episode's tasks. Returns the mean
        outer loss over the rank's tasks (detached).
        """
        weight = scale / episode.n_global_tasks
        losses = [self.task_backward(task, weight) for task in episode.tasks]
        return torch.stack(losses).mean() if losses else torch.tensor(0.0)


class GradientStrategy(Strategy):
    """Inner loop of plain gradient steps on the support set (MAML family).

    ``adapt`` takes ``inner_steps`` steps of ``fast <- fast - lr * grad`` over
    the parameters selected by ``adapt_params``; with ``create_graph=True``
    the steps stay differentiable w.r.t. the initial weights (second order).
    """

    def inner_lrs(self, names):
        """Step size per adapted parameter (a float, or tensors for Meta-SGD)."""
        lr = float(self.config["inner_lr"])
        return {n: lr for n in names}

    def adapt(
        self, support, steps=None, lr=None, create_graph=False, names=None,
        update_statistics=False,
    ):
        """Adapt to ``support``; returns ``{name: tensor}`` for the adapted names.

        Arguments
        ---------
        support : PaddedBatch or list of PaddedBatch
            Batches cycled over the inner steps.
        steps : int, optional
            Defaults to ``inner_steps``.
        lr : float, optional
            Overrides the step sizes (test-time adaptation).
        create_graph : bool
            Keep the graph through the updates (exact second-order MAML).
        names : list of str, optional
            Parameters to adapt; default :meth:`adapt_names`.
        update_statistics : bool
            Let the first inner forward update normalisation statistics (once
            per task), for strategies with no outer forward such as Reptile;
            otherwise every statistic is restored after the loop.
        """
        batches = support if isinstance(support, (list, tuple)) else [support]
        steps = self.config["inner_steps"] if steps is None else steps
        names = names or self.adapt_names()
        params = self.brain.base_params()
        lrs = self.inner_lrs(names) if lr is None else {n: float(lr) for n in names}
        if create_graph:
            fast = {n: params[n] for n in names}
        else:
            fast = {n: params[n].detach().requires_grad_() for n in names}
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.brain.inner_loop_context(create_graph))
            if not update_statistics:
                stack.enter_context(frozen_statistics(self.brain.modules))
            for step in range(steps):
                loss = self.loss(fast, batches[step % len(batches)])
                self.last_inner_loss = loss.detach()
                if update_statistics and step == 0:
                    # snapshot after the first forward: its update is kept
                    stack.enter_context(frozen_statistics(self.brain.modules))
                grads = torch.autograd.grad(
                    loss, list(fast.values()), create_graph=create_graph, allow_unused=True
                )
                new = {}
                for (n, w), g in zip(fast.items(), grads):
                    if g is None:
                        new[n] = w
                        continue
                    if not create_graph:
                        g = g.detach()
                    step_size = lrs[n]
                    if not create_graph and torch.is_tensor(step_size):
                        # first-order Meta-SGD: keep the step sizes in the graph
                        new[n] = w.detach() - step_size * g
                    else:
                        new[n] = w - step_size * g
                    if not create_graph and not torch.is_tensor(step_size):
                        new[n] = new[n].detach().requires_grad_()
                fast = new
        return fast

    def task_backward(self, task, weight):
        query = task.query if task.query is not None else task.support
        fast = self.adapt(task.support, create_graph=not self.first_order)
        loss = self.loss(fast, query, outer=True)
        self.brain.check_loss_isfinite(loss)
        if self.first_order:
            # d loss / d fast, applied to the initial weights (FOMAML); the
            # same call differentiates the non-adapted weights and any
            # meta-learned state upstream of the fast weights (Meta-SGD).
            base = self.brain.base_params()
            others = [p for n, p in base.items() if n not in fast and p.requires_grad]
            others += [p for m in self.meta_modules().values() for p in m.parameters()]
            grads = torch.autograd.grad(
                loss * weight, list(fast.values()) + others, allow_unused=True
            )
            for p, g in zip([base[n] for n in fast] + others, grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        else:
            (loss * weight).backward()
        return loss.detach()


class AddOn:
    """Composes with any strategy through hooks (see :mod:`sb_meta.hookspecs`).

    Subclasses set ``name`` and implement hooks as methods decorated with
    ``sb_meta.plugins.hookimpl``.

    Arguments
    ---------
    brain : sb_meta.MetaBrain
    config : MetaConfig
    """

    name = None

    def __init__(self, brain, config):
        self.brain = brain
        self.config = config
