"""Base classes for strategies (learning algorithms) and add-ons, and the meta keys.

A :class:`Strategy` has one obvious verb, :meth:`Strategy.adapt` (support set
-> :class:`~sb_meta.contract.FastWeights`), runs its tasks' forward passes
through :meth:`Strategy.forward` and contributes the meta-gradient of a task
with :meth:`Strategy.task_backward`, which accumulates into the ``.grad`` of
the brain's parameters. :class:`sb_meta.MetaBrain` then steps the optimizer
through SpeechBrain's own ``optimizers_step``.

Writing a new strategy means subclassing :class:`Strategy` (usually
:class:`GradientStrategy`), giving it a ``name`` and returning it from a
plugin's ``sbmeta_strategies`` hook. What a strategy may override:

``adapt``            the whole inner loop (returns FastWeights: weights + task state)
``inner_update``     one inner step of :class:`GradientStrategy` (learned optimizers)
``forward``          the forward pass and objective used for its tasks
``task_backward``    the meta-gradient of one task; ``episode_backward``: of an episode
``meta_modules``     meta-learned modules (optimized, checkpointed, exported)
``export_state`` / ``load_state``   how that state travels with an export

An :class:`AddOn` implements hooks of :mod:`sb_meta.hookspecs` as methods.
Both declare their YAML keys in ``options`` and read them one way
(:class:`sb_meta.options.Configurable`). The meta keys themselves
(:data:`META_KEYS`, :class:`MetaConfig`) live in :mod:`sb_meta.meta_config`
and are importable from here.
"""

import contextlib
import logging

import torch

from sb_meta.contract import FastWeights, Phase
from sb_meta.episodes import Task
from sb_meta.functional import frozen_statistics, functional_objective, select_params
from sb_meta.meta_config import META_KEY_HELP, META_KEYS, MetaConfig, meta_keys_table
from sb_meta.options import Configurable

logger = logging.getLogger(__name__)

__all__ = [
    "MetaConfig",
    "Strategy",
    "GradientStrategy",
    "AddOn",
    "META_KEYS",
    "META_KEY_HELP",
    "meta_keys_table",
]

class Strategy(Configurable):
    """A learning algorithm: inner loop (``adapt``), task forward and outer objective.

    Subclasses set ``name`` and implement :meth:`adapt` and
    :meth:`task_backward` (or override :meth:`episode_backward` entirely, as
    the joint baseline does). A strategy may also implement any hook of
    :mod:`sb_meta.hookspecs` as a method; it is called before the add-ons'.
    Its own YAML keys it declares in ``options`` and reads with
    :meth:`~sb_meta.options.Configurable.option`, as an add-on does.

    Arguments
    ---------
    brain : sb_meta.MetaBrain
        The brain whose modules are meta-trained / adapted.
    config : MetaConfig
        The meta configuration.
    """

    role = "strategy"
    #: default ``adapt_params`` patterns
    default_adapt_params = ("*",)
    #: default ``first_order``
    default_first_order = True
    #: whether ``sb-meta adapt`` can use it on a loaded model
    adapts_at_test_time = True
    #: whether it adds ``outer_joint_weight`` x the joint loss to its meta-gradient
    supports_outer_joint = False

    def __init__(self, brain, config):
        super().__init__(brain, config)
        if config.get("outer_joint_weight") and not self.supports_outer_joint:
            raise ValueError(
                f"outer_joint_weight is for strategies that adapt by gradient steps "
                f"(maml, fomaml, reptile, ...); strategy {self.name!r} does not use it"
            )
        self.first_order = (
            self.default_first_order if config.get("first_order") is None else bool(config["first_order"])
        )

    # ---------------------------------------------------------------- state
    def meta_modules(self):
        """Extra ``nn.Module`` s holding meta-learned state (checkpointed, optimized, exported)."""
        return {}

    def export_state(self):
        """The meta-learned state an export carries (``meta_strategy.ckpt``), or None."""
        modules = self.meta_modules()
        if not modules:
            return None
        return {k: v.detach().cpu() for k, v in torch.nn.ModuleDict(modules).state_dict().items()}

    def load_state(self, state):
        """Load exported meta-learned state before test-time adaptation.

        Returns the names of the parameters it covers (None: no restriction).
        """
        modules = torch.nn.ModuleDict(self.meta_modules())
        try:
            modules.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"the meta-learned state of strategy {self.name!r} does not fit: {exc}") from None
        return None

    # ---------------------------------------------------------------- helpers
    def adapt_names(self, phase=Phase.INNER):
        """Names of the parameters the inner loop (or test-time adaptation) adapts."""
        patterns = self.config.get("adapt_params")
        base = self.brain.base_param_names()
        if patterns:
            names = select_params(base, patterns)
        else:  # the strategy's defaults: lenient per pattern, but not empty
            names = select_params(base, self.default_adapt_params, strict=False)
        names = self.brain.choose_adapted(names, phase)
        if not names:
            raise ValueError(f"strategy {self.name!r}: no parameter left to adapt")
        return names

    def forward(self, params, batch, phase, task=None):
        """``(loss, predictions)`` of ``batch`` with ``params`` swapped in.

        The recipe's ``compute_forward`` / ``compute_objectives`` through
        :func:`sb_meta.functional.functional_objective`, with the plugins'
        batch transforms and loss terms. Strategies with another forward
        (distances to prototypes, ...) override this.
        """
        return functional_objective(self.brain, params, batch, self.brain.meta_stage, task=task, phase=phase)

    def loss(self, params, batch, phase=Phase.INNER, task=None):
        """The first element of :meth:`forward`."""
        return self.forward(params, batch, phase, task)[0]

    # ------------------------------------------------------------ the verbs
    def adapt(self, support, steps=None, lr=None, create_graph=False, names=None,
              task=None, phase=Phase.INNER, update_statistics=False):
        """Fast weights (and task state) adapted to ``support`` (a batch or list of batches)."""
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

    def _accumulate(self, loss, fast, weight):
        """Add ``weight * d loss / d theta`` to the ``.grad`` of the brain's parameters.

        Second order: a plain backward through the inner loop. First order:
        the gradient w.r.t. the fast weights is applied to the initial
        weights, and every other trainable parameter (not adapted, meta-learned,
        add-on modules) gets its ordinary gradient.
        """
        if not self.first_order:
            (loss * weight).backward()
            return
        all_params = self.brain.trainable_params()
        fast_items = [(n, w) for n, w in fast.items() if n in all_params]
        others = [p for n, p in all_params.items() if n not in fast]
        grads = torch.autograd.grad(
            loss * weight, [w for _, w in fast_items] + others, allow_unused=True
        )
        for p, g in zip([all_params[n] for n, _ in fast_items] + others, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g


class GradientStrategy(Strategy):
    """Inner loop of gradient steps on the support set (the MAML family).

    ``adapt`` takes ``inner_steps`` steps of :meth:`inner_update` (by default
    ``fast <- fast - lr * grad``) over the parameters selected by
    ``adapt_params``; with ``create_graph=True`` the steps stay differentiable
    w.r.t. the initial weights (second order).

    With ``outer_joint_weight: w > 0`` the meta-gradient of each episode gets
    ``w`` x the gradient of the joint objective (the unadapted model's loss on
    every task's support and query utterances, :meth:`pooled_backward`)
    added, pulling meta-training toward a model that is good *before*
    adaptation too rather than trading unadapted accuracy for adaptability.
    Reptile's
    pseudo-gradient is about ``inner_lr x inner_steps`` gradients, so the same
    balance needs a weight that much smaller there.
    """

    supports_outer_joint = True
    #: ``joint_pooled``: :meth:`pooled_backward` forwards one pooled batch (joint,
    #: finetune and ``outer_joint_weight`` use it)
    options = {"joint_pooled": False}

    def episode_backward(self, episode, scale=1.0):
        loss = super().episode_backward(episode, scale)
        weight = self.config.get("outer_joint_weight") or 0.0
        if weight:
            self.pooled_backward(episode, scale * weight)
        return loss

    def pooled_backward(self, episode, scale=1.0):
        """Accumulate the joint objective of this rank's share of ``episode``.

        The mean loss of the unadapted model over the pooled support and query
        utterances of the episode's tasks, as plain SpeechBrain training
        would compute it (phase ``OUTER``, through the plugins' hooks). The
        pool is processed one task at a time (each task's support + query as
        one batch, gradients accumulated with weight ``utterances of the task
        / pooled utterances``): for a per-utterance mean loss (CTC, MSE) this
        is the objective and gradient of the single pooled batch, on the same
        speaker-sized batches the meta-learners see, and on CPU it is faster
        (a large padded batch costs more than the same utterances in small
        ones: padding and cache misses; see the benchmarks). Layers that
        couple the utterances of a batch (BatchNorm statistics) see per-task
        batches; the option ``joint_pooled: True`` forwards the whole pool as
        one batch instead. Returns the pooled loss (detached).
        """
        if not episode.tasks:
            return torch.tensor(0.0)
        groups = [(t, t.support_ids + t.query_ids) for t in episode.tasks]
        if bool(self.option("joint_pooled")):
            ids = [i for _, g in groups for i in g]
            rows = {k: v for t in episode.tasks for k, v in t.rows.items()}
            groups = [(Task("pooled", ids, [], column=episode.tasks[0].column, rows=rows), ids)]
        total = sum(len(g) for _, g in groups)
        collate = episode.tasks[0].collate
        weight = scale * len(episode.tasks) / episode.n_global_tasks
        value = 0.0
        for task, ids in groups:
            loss = self.forward(FastWeights(), collate(ids), Phase.OUTER, task)[0]
            self.brain.check_loss_isfinite(loss)
            share = len(ids) / total
            (loss * (share * weight)).backward()
            value = value + loss.detach() * share
        return value

    def inner_lrs(self, names):
        """Step size per adapted parameter (a float, or tensors for Meta-SGD)."""
        lr = float(self.config["inner_lr"])
        return {n: lr for n in names}

    def inner_update(self, params, grads, step, state):
        """One inner step: the new fast weights.

        Override it for a learned update rule (a learned optimizer). In a
        first-order loop ``params`` and ``grads`` arrive detached, so only the
        update rule's own parameters (Meta-SGD's step sizes, an optimizer
        network) stay in the graph.

        Arguments
        ---------
        params : dict of str to torch.Tensor
            The current fast weights.
        grads : dict of str to torch.Tensor or None
            Their gradients (None where the loss does not depend on them).
        step : int
            The inner step, from 0.
        state : dict
            Kept across the steps of one adaptation: ``state["lrs"]`` holds
            the step sizes (:meth:`inner_lrs`, or the test-time ``lr``); an
            update rule may keep its memory there.

        Returns
        -------
        dict of str to torch.Tensor
        """
        lrs = state["lrs"]
        return {n: w if grads[n] is None else w - lrs[n] * grads[n] for n, w in params.items()}

    def adapt(self, support, steps=None, lr=None, create_graph=False, names=None,
              task=None, phase=Phase.INNER, update_statistics=False):
        """Adapt to ``support``; returns :class:`~sb_meta.contract.FastWeights`.

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
        task : sb_meta.episodes.Task, optional
            Handed to the hooks.
        phase : sb_meta.contract.Phase
            ``INNER`` (meta-training) or ``ADAPT`` (test time).
        update_statistics : bool
            Let the first inner forward update normalisation statistics (once
            per task), for strategies with no outer forward such as Reptile;
            otherwise every statistic is restored after the loop.
        """
        batches = support if isinstance(support, (list, tuple)) else [support]
        steps = self.config["inner_steps"] if steps is None else steps
        names = names or self.adapt_names(phase)
        params = self.brain.trainable_params()
        state = {"lrs": self.inner_lrs(names) if lr is None else {n: float(lr) for n in names}}
        if create_graph:
            fast = {n: params[n] for n in names}
        else:
            fast = {n: params[n].detach().requires_grad_() for n in names}
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.brain.inner_loop_context(create_graph))
            if not update_statistics:
                stack.enter_context(frozen_statistics(self.brain.modules))
            self.inner_losses = []  # the support loss before each step, for divergence checks
            for step in range(steps):
                loss = self.loss(fast, batches[step % len(batches)], phase, task)
                self.last_inner_loss = loss.detach()
                self.inner_losses.append(self.last_inner_loss)
                if update_statistics and step == 0:
                    # snapshot after the first forward: its update is kept
                    stack.enter_context(frozen_statistics(self.brain.modules))
                grads = torch.autograd.grad(
                    loss, list(fast.values()), create_graph=create_graph, allow_unused=True
                )
                grads = dict(zip(fast, grads))
                if not create_graph:
                    fast = {n: w.detach() for n, w in fast.items()}
                    grads = {n: None if g is None else g.detach() for n, g in grads.items()}
                new = self.inner_update(fast, grads, step, state)
                if not create_graph:
                    new = {n: w if w.requires_grad else w.requires_grad_() for n, w in new.items()}
                fast = new
        return self.brain.after_adapt(FastWeights(fast), task, phase)

    def task_backward(self, task, weight):
        query = task.query if task.query is not None else task.support
        fast = self.adapt(task.support, create_graph=not self.first_order, task=task)
        loss = self.forward(fast, query, Phase.OUTER, task)[0]
        self.brain.check_loss_isfinite(loss)
        self._accumulate(loss, fast, weight)
        return loss.detach()


class AddOn(Configurable):
    """Composes with any strategy through hooks (see :mod:`sb_meta.hookspecs`).

    Subclasses set ``name``, declare their YAML keys with defaults in
    ``options`` (:class:`sb_meta.options.Configurable`: validated, a misspelt
    key is an error listing them; read with :meth:`~sb_meta.options.Configurable.option`)
    and implement hooks as methods named ``sbmeta_<hook>``. What an add-on is
    (``kind``) and the options it adds to ``sb-meta adapt``
    (``command_options``) are declared here too, so the commands and
    :class:`sb_meta.evaluation.Method` treat third-party add-ons as they treat
    the built-ins, naming none of them.

    Arguments
    ---------
    brain : sb_meta.MetaBrain
    config : MetaConfig
    """

    role = "add-on"
    #: what the add-on is (one of :data:`sb_meta.contract.ADDON_KINDS`, or None):
    #: ``"adapter"`` adds adapter layers and only they adapt (a method of its own
    #: name in ``sb-meta evaluate`` and :class:`~sb_meta.evaluation.Method`,
    #: activated before the others by ``sb-meta adapt``, exported alone with
    #: ``--adapters-only``); ``"compressor"`` changes the exported model
    #: (``sb-meta adapt`` runs it after every other add-on)
    kind = None
    #: for an adapter: whether its layers fold into the exported weights (a plain
    #: SpeechBrain folder); if not, it can only be exported alone
    folds_into_export = True
    #: options this add-on adds to ``sb-meta adapt`` (:class:`sb_meta.contract.CommandOption`)
    command_options = ()

    @classmethod
    def describe_export(cls, info):
        """Lines ``sb-meta adapt`` prints about what this add-on did to an
        export, read from its ``sbmeta.json`` (``info``); none by default."""
        return []
