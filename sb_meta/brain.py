"""``MetaBrain``: episodic meta-training around a SpeechBrain recipe.

A recipe subclasses :class:`MetaBrain` exactly as it would subclass
``sb.Brain`` and keeps its ``compute_forward`` / ``compute_objectives``.
``fit`` then receives an :class:`sb_meta.episodes.EpisodeLoader` instead of a
dataset: every "batch" is an episode, and :meth:`MetaBrain.fit_batch` lets the
active strategy accumulate the meta-gradient of each task before the outer
update goes through SpeechBrain's own ``optimizers_step`` (clipping,
accumulation, non-finite checks), ``on_fit_batch_start/end`` hooks and
checkpointer.

Distributed training (``torchrun``) shards each episode's tasks across ranks
and all-reduces the meta-gradients here: modules are never wrapped in DDP,
which does not work with ``torch.autograd.grad``.
"""

import contextlib
import logging

import speechbrain as sb
import torch

from sb_meta.checkpointing import RNGState, TrainClock, set_aside_incomplete_checkpoints
from sb_meta.brain_hooks import PluginHookCalls
from sb_meta.contract import Phase
from sb_meta.episodes import Episode, EpisodeLoader, EpisodeSampler
from sb_meta.functional import check_functional_compatible
from sb_meta.options import check_options
from sb_meta.plugins import PluginManager, PluginRegistry
from sb_meta.ranks import RankSync
from sb_meta.strategy import GradientStrategy, MetaConfig

logger = logging.getLogger(__name__)

__all__ = ["MetaBrain", "RNGState", "TrainClock", "TrainingDivergedError"]


class TrainingDivergedError(ValueError):
    """Training reached a non-finite loss or weight; it stops there, before anything is saved."""

META_PREFIX = "sbmeta_"
#: where plugin-owned modules live in ``brain.modules``
ADDON_MODULES = "sbmeta_addons"


@contextlib.contextmanager
def onednn_off_in_rnns(modules):
    """oneDNN (mkldnn) disabled while the recurrent layers of ``modules`` run.

    The kernel an RNN's backward uses is fixed by its forward, so switching
    oneDNN off around each ``torch.nn.RNNBase`` forward (hooks, removed on
    exit) makes only those layers use the composite, cheaply
    twice-differentiable implementation; everything else keeps oneDNN.
    Without recurrent layers this changes nothing.

    Example
    -------
    >>> rnn = torch.nn.LSTM(3, 4, batch_first=True)
    >>> seen = []
    >>> _ = rnn.register_forward_hook(lambda m, a, o: seen.append(torch._C._get_mkldnn_enabled()))
    >>> with onednn_off_in_rnns(torch.nn.ModuleList([rnn])):
    ...     _ = rnn(torch.randn(2, 5, 3))
    >>> seen, torch._C._get_mkldnn_enabled() == torch.backends.mkldnn.enabled
    ([False], True)
    """
    rnns = [m for m in modules.modules() if isinstance(m, torch.nn.RNNBase)]
    outer = torch._C._get_mkldnn_enabled()
    saved = []

    def pre(module, args):
        saved.append(torch._C._get_mkldnn_enabled())
        torch._C._set_mkldnn_enabled(False)

    def post(module, args, output):
        torch._C._set_mkldnn_enabled(saved.pop())

    handles = []
    try:
        for m in rnns:
            # prepend: run before any user hook, so theirs see our setting consistently
            handles.append(m.register_forward_pre_hook(pre, prepend=True))
            handles.append(m.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()
        torch._C._set_mkldnn_enabled(outer)  # also after an exception inside an RNN


class MetaBrain(PluginHookCalls, RankSync, sb.Brain):
    """``sb.Brain`` whose training batches are episodes of tasks.

    Arguments are those of ``sb.Brain``; the meta configuration is read from
    ``hparams`` (keys of :data:`sb_meta.strategy.META_KEYS`).

    Arguments
    ---------
    modules, opt_class, hparams, run_opts, checkpointer
        As for ``speechbrain.Brain``.
    registry : sb_meta.plugins.PluginRegistry, optional
        Where strategies and add-ons are looked up; by default entry-point
        plugins plus those listed under ``plugins`` in ``hparams``.

    Example
    -------
    >>> import torch, speechbrain as sb
    >>> from sb_meta.episodes import EpisodeLoader, EpisodeSampler
    >>> from speechbrain.dataio.dataset import DynamicItemDataset
    >>> class Toy(MetaBrain):
    ...     def compute_forward(self, batch, stage):
    ...         return self.modules.lin(batch.x.data)
    ...     def compute_objectives(self, pred, batch, stage):
    ...         return ((pred - batch.y.data) ** 2).mean()
    >>> data = {f"{s}_{i}": {"spk_id": s, "x": torch.randn(2), "y": torch.randn(1)}
    ...         for s in "abcd" for i in range(4)}
    >>> ds = DynamicItemDataset(data, output_keys=["x", "y"])
    >>> brain = Toy({"lin": torch.nn.Linear(2, 1)}, lambda p: torch.optim.SGD(p, 0.1),
    ...             hparams={"meta_strategy": "maml", "inner_steps": 2, "k_support": 2,
    ...                      "k_query": 2, "meta_batch_tasks": 2})
    >>> loader = brain.make_episode_loader(ds)
    >>> brain.fit(range(1), loader, progressbar=False)
    >>> type(brain.strategy).__name__
    'MAML'
    """

    def __init__(
        self,
        modules=None,
        opt_class=None,
        hparams=None,
        run_opts=None,
        checkpointer=None,
        registry=None,
    ):
        self.meta_config = MetaConfig.from_hparams(hparams or {})
        super().__init__(modules, opt_class, hparams, run_opts, checkpointer)
        check_functional_compatible(self.modules)
        cfg = self.meta_config
        self.registry = registry or PluginRegistry(extra=cfg["plugins"])
        strategy_cls = self.registry.get_strategy(cfg["meta_strategy"])
        addon_classes = [self.registry.get_addon(name) for name in cfg["meta_addons"]]
        if len(set(cfg["meta_addons"])) != len(cfg["meta_addons"]):
            raise ValueError(f"meta_addons lists an add-on twice: {cfg['meta_addons']}")
        check_options(hparams or {}, self.registry.configurables(), [cfg["meta_strategy"], *cfg["meta_addons"]])
        # hooks run on the strategy first, then the add-ons in meta_addons order
        self._pm = PluginManager(per_brain=True)
        self._plugins = []
        self.addons = []
        for name, cls in zip(cfg["meta_addons"], addon_classes):
            addon = cls(self, cfg)
            self._pm.register(addon, name=f"addon:{name}")
            self._plugins.append(addon)
            self.addons.append(addon)
        self.strategy = strategy_cls(self, cfg)
        self._pm.register(self.strategy, name=f"strategy:{strategy_cls.name}")
        self._plugins.insert(0, self.strategy)
        for key, module in self.strategy.meta_modules().items():
            self.modules[META_PREFIX + key] = module.to(self.device)
        owned = {plugin.name: torch.nn.ModuleDict(dict(mods))
                 for plugin, mods in self.call_hook("sbmeta_modules") if mods}
        if owned:
            self.modules[ADDON_MODULES] = torch.nn.ModuleDict(owned).to(self.device)
        self.train_clock = TrainClock()
        if self.checkpointer is not None:
            if self.strategy.meta_modules():
                self.checkpointer.add_recoverable("meta_strategy", torch.nn.ModuleDict(self.strategy.meta_modules()))
            if owned:
                self.checkpointer.add_recoverable(ADDON_MODULES, self.modules[ADDON_MODULES])
            self.checkpointer.add_recoverable("rng", RNGState())
            self.checkpointer.add_recoverable("train_clock", self.train_clock)
        self.meta_stage = sb.Stage.TRAIN
        self._term_sums = {}
        if cfg["valid_adapt"] and not isinstance(self.strategy, GradientStrategy):
            raise ValueError(
                f"valid_adapt: strategy {strategy_cls.name!r} has no gradient inner loop to adapt "
                "validation tasks with (the gradient strategies and joint/finetune have one)"
            )

    # ------------------------------------------------------------ parameters
    def base_params(self):
        """The model's own trainable parameters (meta-learned and plugin-owned state excluded)."""
        return {n: p for n, p in self.modules.named_parameters()
                if p.requires_grad and not n.startswith(META_PREFIX)}

    def base_param_names(self):
        return list(self.base_params())

    def trainable_params(self):
        """Every trainable parameter of ``self.modules`` (model, meta-learned, plugin-owned)."""
        return {n: p for n, p in self.modules.named_parameters() if p.requires_grad}

    def inner_loop_context(self, create_graph, modules=None):
        """Kernel choices for an inner loop.

        Second-order inner loops run with cuDNN disabled on GPU (cuDNN RNNs
        have no double backward) and with oneDNN (mkldnn) disabled on CPU:
        differentiating oneDNN's fused LSTM backward is far slower than the
        composite LSTM's (the benchmarks measure by how much).
        oneDNN is switched off only while recurrent layers run
        (:func:`onednn_off_in_rnns`): convolutions keep oneDNN, whose double
        backward is made of ordinary (fast) convolutions. First-order loops
        keep the fast fused kernels everywhere.

        ``modules`` (default the brain's own) are those whose RNN layers the
        choice applies to: other code running copies of them (``higher``'s
        patched modules) passes the copies.
        """
        stack = contextlib.ExitStack()
        if create_graph:
            if self.device_type == "cuda":
                stack.enter_context(torch.backends.cudnn.flags(enabled=False))
            stack.enter_context(onednn_off_in_rnns(self.modules if modules is None else modules))
        return stack

    # ------------------------------------------------------------ data
    def make_episode_loader(self, dataset, **overrides):
        """An :class:`EpisodeLoader` over ``dataset`` shaped by the meta config.

        ``overrides`` replace sampler arguments (``k_support``, ``seed``...).
        """
        cfg = self.meta_config
        kwargs = dict(
            task_column=cfg["task_column"],
            k_support=cfg["k_support"],
            k_query=cfg["k_query"],
            meta_batch_tasks=cfg["meta_batch_tasks"],
            episodes_per_epoch=cfg["episodes_per_epoch"],
            support_seconds=cfg["support_seconds"],
            seed=getattr(self.hparams, "seed", 0),
        )
        kwargs.update(overrides)
        world = kwargs.get("world_size") or self._world()  # an override shards (or not) itself
        if kwargs["meta_batch_tasks"] % world:
            raise ValueError(
                f"meta_batch_tasks={kwargs['meta_batch_tasks']} cannot be shared evenly by "
                f"{world} processes (every rank must run as many tasks, and as many "
                f"collectives, as the others); use a multiple of {world}"
            )
        return EpisodeLoader(dataset, EpisodeSampler(dataset, **kwargs))

    def validation_episodes(self, dataset):
        """The validation tasks of ``valid_adapt``: every task of ``dataset`` once, one per
        episode, ``k_support`` (or ``support_seconds``) support utterances and the rest as
        query, the same draw at every validation (checkpoints are compared on the same
        utterances) and on every rank.

        Example
        -------
        >>> from sb_meta.testing import make_toy_brain, toy_dataset
        >>> brain = make_toy_brain({"meta_strategy": "fomaml", "k_support": 2, "valid_adapt": True})
        >>> episodes = list(brain.validation_episodes(toy_dataset(n_tasks=3, utts_per_task=5)))
        >>> sorted((e.tasks[0].name, len(e.tasks[0].support_ids), len(e.tasks[0].query_ids)) for e in episodes)
        [('t0', 2, 3), ('t1', 2, 3), ('t2', 2, 3)]
        """
        # one task per episode, every task once; its epoch stays 0: the same draws every time
        return self.make_episode_loader(dataset, k_query=None, meta_batch_tasks=1, episodes_per_epoch=None,
                                        rank=0, world_size=1)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        if stage == sb.Stage.VALID and self.meta_config["valid_adapt"] and not isinstance(dataset, EpisodeLoader):
            return self.validation_episodes(dataset)
        if isinstance(dataset, EpisodeLoader):
            if stage != sb.Stage.TRAIN:
                raise ValueError("episode loaders are for training; evaluate with a dataset")
            self.train_sampler = dataset
            if self.checkpointer is not None and ckpt_prefix is not None:
                key = "episodes-" + stage.name
                if key not in self.checkpointer.recoverables:
                    self.checkpointer.add_recoverable(key, dataset.recoverable)
            return dataset
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN and hasattr(dataset, "data") and hasattr(dataset, "data_ids"):
            self._train_rows = dataset.data  # manifest rows of plain batches' utterances
            self._plain_batches_per_epoch = len(loader) if hasattr(loader, "__len__") else None
        return loader

    # ------------------------------------------------------------ training
    def on_fit_start(self):
        self._compile()
        check_functional_compatible(self.modules)
        # no DDP wrapping: meta-gradients are all-reduced in fit_batch
        self.init_optimizers()
        if self.checkpointer is not None:
            set_aside_incomplete_checkpoints(self.checkpointer)
            self.checkpointer.recover_if_possible()
        self._check_budget()

    @property
    def planned_steps(self):
        """Outer steps training will take if it runs all its epochs (None when
        unknown: no training loader yet, or no epoch limit); add-ons with
        schedules (e.g. ``dann``'s reversal weight) and the recipes' learning-rate
        schedules read it."""
        counter = getattr(self.hparams, "epoch_counter", None) if self.hparams is not None else None
        sampler = getattr(self, "train_sampler", None)
        per_epoch = len(sampler) if sampler is not None else getattr(self, "_plain_batches_per_epoch", None)
        limit = getattr(counter, "limit", None)
        if limit is None or not per_epoch:
            return None
        return int(limit) * per_epoch

    @property
    def train_minutes(self):
        """Minutes spent training so far (validation excluded; resumed runs included),
        on the clock ``train_budget_clock`` names (wall clock, or CPU time)."""
        cpu = self.meta_config["train_budget_clock"] == "cpu"
        return (self.train_clock.cpu_seconds if cpu else self.train_clock.seconds) / 60.0

    def _check_budget(self):
        budget = self.meta_config["train_budget_minutes"]
        if budget is not None and self.train_minutes >= budget:
            if self.optimizer_step_limit is None or self.optimizer_step_limit > self.optimizer_step:
                logger.info(
                    "train_budget_minutes=%s reached (%.1f min of training): stopping", budget,
                    self.train_minutes,
                )
            # SpeechBrain's own stop: the epoch ends, validation runs, fit() returns
            self.optimizer_step_limit = self.optimizer_step

    def fit_batch(self, batch):
        """One outer step on an episode (or, for strategies that train on them,
        such as ``joint`` and ``finetune``, on a plain SpeechBrain batch).

        Each task's meta-gradient (weighted by 1 / tasks per episode, over all
        ranks) is accumulated by the strategy; gradients are all-reduced over
        ranks; then SpeechBrain's ``optimizers_step`` applies them every
        ``grad_accumulation_factor`` episodes, and normalisation statistics
        are averaged over ranks.
        """
        plain = not isinstance(batch, Episode)
        if plain and not hasattr(self.strategy, "batch_backward"):
            raise TypeError(
                f"strategy {self.strategy.name!r} trains on episodes: pass "
                "brain.make_episode_loader(train_data) to fit() as train_set (the joint and "
                "finetune baselines also train on plain batches)"
            )
        if self.precision == "fp16":
            raise NotImplementedError(
                "sb-meta meta-training supports fp32 and bf16 precision, not fp16"
            )
        if not self.train_clock.running():  # the first batch of a stage (loading it not counted)
            self.train_clock.start()
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)
        scale = 1.0 / self.grad_accumulation_factor
        with self.training_ctx:
            if plain:
                loss = self.strategy.batch_backward(batch, self._plain_task(batch), scale=scale)
            else:
                loss = self.strategy.episode_backward(batch, scale=scale)
        self._all_reduce_gradients(batch)
        if should_step:
            self.optimizers_step()
            self._check_weights_finite()
            self._sync_statistics()
        self.on_fit_batch_end(batch, None, loss, should_step)
        self.train_clock.stop()
        self.train_clock.start()  # loading the next batch is training time too
        self._check_budget()
        return loss.detach().cpu()

    # ------------------------------------------------------------ divergence
    def check_loss_isfinite(self, loss):
        """Stop training at the first non-finite loss (SpeechBrain's own check skips up to
        ``nonfinite_patience`` of them and then stops without saying where or why)."""
        if not torch.isfinite(loss).all():
            self._diverged(f"the loss is {float(loss.detach().float().mean())}", self.optimizer_step + 1)

    def _check_weights_finite(self):
        """Stop training when the outer step left a non-finite weight (one reduction per step)."""
        params = [p for p in self.modules.parameters() if p.requires_grad]
        if not params:
            return
        total = torch.stack([p.detach().sum(dtype=torch.float64) for p in params]).sum()
        if not torch.isfinite(total):  # NaN or inf somewhere: find where, once
            bad = next(n for n, p in self.modules.named_parameters() if not torch.isfinite(p).all())
            self._diverged(f"the weights of {bad} are no longer finite", self.optimizer_step)

    def _diverged(self, what, step):
        """Raise :class:`TrainingDivergedError` naming the step, the learning rate and the
        last good checkpoint (every checkpoint is saved after these checks passed)."""
        optimizer = getattr(self, "optimizer", None)
        lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
        counter = getattr(self.hparams, "epoch_counter", None) if self.hparams is not None else None
        epoch = getattr(counter, "current", None)
        last = self.checkpointer.find_checkpoint() if self.checkpointer is not None else None
        kept = (f"the last good checkpoint is {last.path}" if last is not None
                else "no checkpoint was saved before it")
        where = f"outer step {step}" + (f" (epoch {epoch})" if epoch else "")
        rate = f", with learning rate {lr:g}" if lr is not None else ""
        raise TrainingDivergedError(
            f"training diverged at {where}: {what}{rate}; training stopped and {kept}: "
            "lower the learning rate and train again"
        )

    def update_average(self, loss, avg_loss):
        """SpeechBrain's running mean, except that a non-finite loss makes it NaN (SpeechBrain
        skips it, and a stage of nothing but NaN losses would be logged as 0.00)."""
        if not torch.isfinite(loss).all():
            return float("nan")
        return super().update_average(loss, avg_loss)

    def _plain_task(self, batch):
        """The task a plain batch's hooks see: its utterances and their manifest rows."""
        from sb_meta.episodes import Task

        ids = [str(i) for i in getattr(batch, "id", [])]
        rows = getattr(self, "_train_rows", None) or {}
        return Task("batch", ids, [], column=self.meta_config["task_column"],
                    rows={i: dict(rows[i], ID=i) for i in ids if i in rows})

    def evaluate_batch(self, batch, stage):
        self.train_clock.discard()  # validation time is not training time
        if isinstance(batch, Episode):
            return self.evaluate_adapted(batch, stage)
        if stage == sb.Stage.VALID and self.meta_config["valid_adapt"]:
            raise ValueError(
                "valid_adapt: the validation set arrived as plain batches (a DataLoader?); pass "
                "fit() the dataset itself, so that its tasks can be drawn and adapted to"
            )
        return super().evaluate_batch(batch, stage)

    def evaluate_adapted(self, episode, stage):
        """Validation after adaptation (``valid_adapt``): each task's model adapts on its
        support with the strategy's inner loop (as ``sb-meta adapt`` would, phase ``ADAPT``,
        modules in eval mode) and the recipe's ``compute_objectives`` scores its query
        utterances with the adapted weights, so the recipe's own metrics (WER...) and the
        checkpoint SpeechBrain keeps are those of adapted models. The modules' weights and
        statistics are left as they were. Returns the mean query loss over the tasks."""
        from sb_meta.functional import functional_objective

        losses = []
        for task in episode.tasks:
            with torch.enable_grad():
                fast = self.strategy.adapt(task.support, task=task, phase=Phase.ADAPT)
            with torch.no_grad():
                loss, _ = functional_objective(self, dict(fast), task.query, stage)
            losses.append(loss.detach())
        return torch.stack(losses).mean().cpu()
