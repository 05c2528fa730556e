"""Checkpoint/resume mid-epoch and distributed (gloo) equivalence."""

import math

import pytest
import torch
import torch.multiprocessing as mp
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter

from sb_meta.testing import ToyBrain, ddp_toy_worker, toy_dataset, toy_modules

HP = dict(meta_strategy="metasgd", inner_steps=2, inner_lr=0.1, k_support=3, k_query=3,
          meta_batch_tasks=2, episodes_per_epoch=3, max_grad_norm=math.inf,
          ckpt_interval_steps=1, seed=0)


class Crash(Exception):
    pass


def build(folder, init_seed):
    mods = toy_modules(init_seed, dropout=0.3)
    counter = EpochCounter(limit=3)
    ckpt = Checkpointer(folder, recoverables={"model": torch.nn.ModuleDict(mods), "counter": counter})
    brain = ToyBrain(mods, lambda p: torch.optim.Adam(p, 0.01), hparams=HP,
                     run_opts={"device": "cpu", "noprogressbar": True}, checkpointer=ckpt)
    return brain, counter


def final_state(brain):
    return {n: p.detach().clone() for n, p in brain.modules.named_parameters()}


def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path):
    data = toy_dataset(n_tasks=6, utts_per_task=8)

    torch.manual_seed(123)
    brain, counter = build(tmp_path / "a", init_seed=0)
    brain.fit(counter, brain.make_episode_loader(data))
    expected = final_state(brain)

    torch.manual_seed(123)
    brain, counter = build(tmp_path / "b", init_seed=0)
    calls = {"n": 0}
    fit_batch = brain.fit_batch

    def crashing(episode):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, second episode
            raise Crash()
        return fit_batch(episode)

    brain.fit_batch = crashing
    with pytest.raises(Crash):
        brain.fit(counter, brain.make_episode_loader(data))

    # a new process: other RNG state, other initial weights; all must come back
    torch.manual_seed(999)
    brain, counter = build(tmp_path / "b", init_seed=7)
    brain.fit(counter, brain.make_episode_loader(data))
    resumed = final_state(brain)
    assert "sbmeta_metasgd_lr.lin1__weight" in resumed
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, msg=name)


def test_resume_does_not_replay_the_start_of_the_epoch(tmp_path):
    data = toy_dataset(n_tasks=6, utts_per_task=8)
    brain, _ = build(tmp_path, 0)
    loader = brain.make_episode_loader(data)
    loader.set_epoch(2)
    it = iter(loader.sampler)
    first = next(it)
    path = tmp_path / "sampler.ckpt"
    loader.sampler._save(path)
    fresh = brain.make_episode_loader(data)
    fresh.sampler._recover(path, end_of_epoch=False)
    fresh.set_epoch(2)
    resumed = [e.index for e in fresh.sampler]
    assert resumed == [1, 2] and first.index == 0


@pytest.mark.parametrize("strategy", ["maml", "reptile", "joint"])
def test_two_processes_match_one_process(tmp_path, strategy):
    hp = dict(HP, meta_strategy=strategy, meta_batch_tasks=4, episodes_per_epoch=2)
    hp.pop("ckpt_interval_steps")
    outs = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}.pt"
        mp.start_processes(
            ddp_toy_worker,
            args=(world, str(tmp_path / f"init{world}"), str(out), hp),
            nprocs=world,
            join=True,
            start_method="spawn",
        )
        outs[world] = torch.load(out)
    for name, value in outs[1].items():
        torch.testing.assert_close(outs[2][name], value, rtol=1e-9, atol=1e-12, msg=name)
