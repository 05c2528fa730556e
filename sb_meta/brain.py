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
import random

import numpy as np
import pluggy
import speechbrain as sb
import torch

from sb_meta import hookspecs
from sb_meta.episodes import Episode, EpisodeLoader, EpisodeSampler
from sb_meta.functional import check_functional_compatible
from sb_meta.plugins import PluginRegistry
from sb_meta.strategy import MetaConfig
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

logger = logging.getLogger(__name__)

__all__ = ["MetaBrain", "RNGState"]

META_PREFIX = "sbmeta_"


@register_checkpoint_hooks
class RNGState:
    """Checkpoints the Python, NumPy and torch random generators, so that a
    resumed run draws the same dropout masks as an uninterrupted one."""

    @mark_as_saver
    def _save(self, path):
        torch.save(
            {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            path,
        )

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        state = torch.load(path, weights_only=False)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


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


class MetaBrain(sb.Brain):
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
        self.registry = registry or PluginRegistry(extra=self.meta_config["plugins"] or ())
        strategy_cls = self.registry.get_strategy(self.meta_config["meta_strategy"])
        self._addon_pm = pluggy.PluginManager("sb_meta")
        self._addon_pm.add_hookspecs(hookspecs)
        self.addons = []
        for name in self.meta_config["meta_addons"] or []:
            addon = self.registry.get_addon(name)(self, self.meta_config)
            self._addon_pm.register(addon, name=name)
            self.addons.append(addon)
        self.strategy = strategy_cls(self, self.meta_config)
        for key, module in self.strategy.meta_modules().items():
            self.modules[META_PREFIX + key] = module.to(self.device)
        if self.checkpointer is not None:
            if self.strategy.meta_modules():
                self.checkpointer.add_recoverable(
                    "meta_strategy",
                    torch.nn.ModuleDict(self.strategy.meta_modules()),
                )
            self.checkpointer.add_recoverable("rng", RNGState())
        self.meta_stage = sb.Stage.TRAIN

    # ------------------------------------------------------------ parameters
    def base_params(self):
        """The model's own trainable parameters (meta-learned state excluded)."""
        return {
            n: p
            for n, p in self.modules.named_parameters()
            if p.requires_grad and not n.startswith(META_PREFIX)
        }

    def base_param_names(self):
        return list(self.base_params())

    # ------------------------------------------------------------ add-ons
    def addon_hook(self, name, **kwargs):
        """Results of hook ``name`` over the active add-ons."""
        return getattr(self._addon_pm.hook, name)(brain=self, **kwargs)

    def addon_loss_hook(self, name):
        """A loss hook for :func:`sb_meta.functional.functional_objective`, or None."""
        if not self.addons:
            return None

        def hook(batch, predictions, loss):
            terms = self.addon_hook(name, batch=batch, predictions=predictions, loss=loss)
            terms = [t for t in terms if t is not None]
            return sum(terms) if terms else None

        return hook

    def inner_loop_context(self, create_graph, modules=None):
        """Kernel choices for an inner loop.

        Second-order inner loops run with cuDNN disabled on GPU (cuDNN RNNs
        have no double backward) and with oneDNN (mkldnn) disabled on CPU:
        differentiating oneDNN's LSTM backward measured 10-20x slower than
        the composite LSTM on the AN4 CRDNN (see benchmarks/RESULTS.md).
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
        return EpisodeLoader(dataset, EpisodeSampler(dataset, **kwargs))

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        if isinstance(dataset, EpisodeLoader):
            if stage != sb.Stage.TRAIN:
                raise ValueError("episode loaders are for training; evaluate with a dataset")
            self.train_sampler = dataset
            if self.checkpointer is not None and ckpt_prefix is not None:
                key = "episodes-" + stage.name
                if key not in self.checkpointer.recoverables:
                    self.checkpointer.add_recoverable(key, dataset.recoverable)
            return dataset
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)

    # ------------------------------------------------------------ training
    def on_fit_start(self):
        self._compile()
        check_functional_compatible(self.modules)
        # no DDP wrapping: meta-gradients are all-reduced in fit_batch
        self.init_optimizers()
        if self.checkpointer is not None:
            self.checkpointer.recover_if_possible()

    def fit_batch(self, batch):
        """One outer step on an episode.

        Each task's meta-gradient (weighted by 1 / tasks per episode, over all
        ranks) is accumulated by the strategy; gradients are all-reduced over
        ranks; then SpeechBrain's ``optimizers_step`` applies them every
        ``grad_accumulation_factor`` episodes.
        """
        if not isinstance(batch, Episode):
            raise TypeError(
                "MetaBrain.fit_batch expects an Episode; pass "
                "brain.make_episode_loader(train_data) to fit() as train_set"
            )
        if self.precision == "fp16":
            raise NotImplementedError(
                "sb-meta meta-training supports fp32 and bf16 precision, not fp16"
            )
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)
        with self.training_ctx:
            loss = self.strategy.episode_backward(batch, scale=1.0 / self.grad_accumulation_factor)
        self._all_reduce_gradients(batch)
        if should_step:
            self.optimizers_step()
        self.on_fit_batch_end(batch, None, loss, should_step)
        return loss.detach().cpu()

    def _all_reduce_gradients(self, episode):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        params = [p for p in self.modules.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p))
            offset += n

    def _wrap_distributed(self):
        """Never wrap in DDP (see the module docstring)."""
