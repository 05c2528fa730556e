"""Tiny brains and task data for testing strategies and plugins.

Plugin authors can check a new strategy on the same toy problem the built-in
strategies are tested on: each task is a random non-linear regression
function, so adapting to a task from a few examples matters.

Example
-------
>>> ds = toy_dataset(n_tasks=3, utts_per_task=4)
>>> brain = make_toy_brain({"meta_strategy": "fomaml", "k_support": 2, "k_query": 2,
...                         "meta_batch_tasks": 3})
>>> episode = next(iter(brain.make_episode_loader(ds)))
>>> float(brain.fit_batch(episode)) > 0
True
"""

import os
import sys

import torch

from sb_meta.brain import MetaBrain

__all__ = ["ToyBrain", "toy_modules", "toy_dataset", "make_toy_brain"]


class ToyBrain(MetaBrain):
    """``y = lin2(drop(bn(tanh(lin1(x)))))`` with a mean-squared error."""

    def compute_forward(self, batch, stage):
        x = batch.x.data.to(self.device)
        h = torch.tanh(self.modules.lin1(x))
        if "bn" in self.modules:
            h = self.modules.bn(h)
        if "drop" in self.modules:
            h = self.modules.drop(h)
        return self.modules.lin2(h)

    def compute_objectives(self, predictions, batch, stage):
        return ((predictions - batch.y.data.to(self.device)) ** 2).mean()


def toy_modules(seed=0, hidden=8, batchnorm=False, dropout=0.0, dtype=torch.float64):
    """Freshly initialised toy modules (deterministic for ``seed``)."""
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        mods = {"lin1": torch.nn.Linear(3, hidden), "lin2": torch.nn.Linear(hidden, 1)}
        if batchnorm:
            mods["bn"] = torch.nn.BatchNorm1d(hidden)
        if dropout:
            mods["drop"] = torch.nn.Dropout(dropout)
        return {k: v.to(dtype) for k, v in mods.items()}


def toy_dataset(n_tasks=6, utts_per_task=8, seed=0, dtype=torch.float64):
    """A ``DynamicItemDataset`` with ``x``, ``y`` and ``spk_id`` (the task)."""
    from speechbrain.dataio.dataset import DynamicItemDataset

    g = torch.Generator().manual_seed(seed)
    data = {}
    for t in range(n_tasks):
        w = torch.randn(3, generator=g, dtype=dtype)
        b = torch.randn(1, generator=g, dtype=dtype)
        for i in range(utts_per_task):
            x = torch.randn(3, generator=g, dtype=dtype)
            y = torch.sin(x @ w + b) + 0.5 * (x @ w)
            data[f"t{t}_{i:03d}"] = {"spk_id": f"t{t}", "x": x, "y": y.reshape(1), "duration": 1.0}
    return DynamicItemDataset(data, output_keys=["id", "x", "y"])


def make_toy_brain(hparams, seed=0, lr=0.1, opt="sgd", checkpointer=None, **module_kwargs):
    """A :class:`ToyBrain` on CPU with SGD (or Adam) over all its parameters,
    its optimizer already created."""
    opt_cls = torch.optim.SGD if opt == "sgd" else torch.optim.Adam
    hp = {"max_grad_norm": float("inf"), "seed": seed}
    hp.update(hparams)
    brain = ToyBrain(
        toy_modules(seed, **module_kwargs),
        lambda params: opt_cls(params, lr=lr),
        hparams=hp,
        run_opts={"device": "cpu", "noprogressbar": True},
        checkpointer=checkpointer,
    )
    brain.init_optimizers()  # so fit_batch works without fit(); fit() re-creates it
    return brain


def ddp_toy_worker(rank, world_size, init_file, out_path, hparams, epochs=1, module_kwargs=None,
                   exit_when_done=False):
    """Meta-train the toy brain in one process of a gloo group and save the
    parameters (rank 0, ``out_path``) and every rank's buffers and error, if
    any (``<out_path>.rank<r>``). Used to check that N processes match 1 process.

    ``exit_when_done`` (only in a process spawned for it) ends the process with
    ``os._exit(0)`` once everything is saved and the group is destroyed: torch's
    gloo threads can abort the interpreter's teardown ("terminate called without
    an active exception", SIGABRT) after the work is done; it failed a spawning test
    once in a CI run although every rank had saved its results."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    state = {"error": None, "buffers": {}}
    try:
        torch.manual_seed(0)
        brain = make_toy_brain(hparams, **(module_kwargs or {}))
        try:
            loader = brain.make_episode_loader(toy_dataset(n_tasks=8, utts_per_task=8))
        except ValueError as exc:  # every rank refuses the same way: no collective mismatch
            state["error"] = str(exc)
        else:
            assert loader.sampler.world_size == world_size
            brain.fit(range(1, epochs + 1), loader, progressbar=False)
            state["buffers"] = {n: b.detach().clone() for n, b in brain.modules.named_buffers()}
            if rank == 0:
                torch.save({n: p.detach() for n, p in brain.modules.named_parameters()}, out_path)
        torch.save(state, f"{out_path}.rank{rank}")
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()
    if exit_when_done:  # reached only without an exception, which the spawner must see
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
