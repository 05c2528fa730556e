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
            args=(world, str(tmp_path / f"init{world}"), str(out), hp, 1, None, True),
            nprocs=world,
            join=True,
            start_method="spawn",
        )
        outs[world] = torch.load(out)
    for name, value in outs[1].items():
        torch.testing.assert_close(outs[2][name], value, rtol=1e-9, atol=1e-12, msg=name)


def _spawn(tmp_path, hp, world=2, module_kwargs=None):
    out = tmp_path / "w.pt"
    mp.start_processes(
        ddp_toy_worker,
        args=(world, str(tmp_path / "init"), str(out), hp, 1, module_kwargs, True),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    return [torch.load(f"{out}.rank{r}") for r in range(world)]


def test_an_odd_number_of_tasks_per_episode_is_a_clear_error_on_every_rank(tmp_path):
    """3 tasks on 2 ranks used to abort with "Received data size doesn't match
    expected size" (ranks ran different numbers of collectives)."""
    hp = dict(HP, meta_strategy="fomaml", meta_batch_tasks=3, episodes_per_epoch=2)
    hp.pop("ckpt_interval_steps")
    states = _spawn(tmp_path, hp)
    for state in states:
        assert "meta_batch_tasks=3 cannot be shared evenly by 2 processes" in state["error"]


def test_normalisation_statistics_agree_across_ranks_after_a_step(tmp_path):
    hp = dict(HP, meta_strategy="fomaml", meta_batch_tasks=4, episodes_per_epoch=2)
    hp.pop("ckpt_interval_steps")
    states = _spawn(tmp_path, hp, module_kwargs={"batchnorm": True})
    a, b = states[0]["buffers"], states[1]["buffers"]
    assert "bn.running_mean" in a and a["bn.running_mean"].abs().sum() > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)


KILL_TRAINING = """
import math, sys, time, torch
from speechbrain.utils import checkpoints
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter
from sb_meta.testing import ToyBrain, toy_dataset, toy_modules
HP = dict(meta_strategy="metasgd", inner_steps=2, inner_lr=0.1, k_support=3, k_query=3,
          meta_batch_tasks=2, episodes_per_epoch=3, max_grad_norm=math.inf, ckpt_interval_steps=1, seed=0)
folder, kill = sys.argv[1], sys.argv[2] == "kill"
torch.manual_seed(123)
mods = toy_modules(0, dropout=0.3)
counter = EpochCounter(limit=3)
ckpt = Checkpointer(folder, recoverables={"model": torch.nn.ModuleDict(mods), "counter": counter})
if kill:
    real = checkpoints.torch_save
    saves = {"n": 0}
    def slow_save(obj, path):
        saves["n"] += 1
        if saves["n"] == 13:  # the third checkpoint, half written
            with open(path, "wb") as f:
                f.write(b"PK")
            print("KILL ME", flush=True)
            time.sleep(120)
        return real(obj, path)
    checkpoints.DEFAULT_SAVE_HOOKS[torch.nn.Module] = slow_save
brain = ToyBrain(mods, lambda p: torch.optim.Adam(p, 0.01), hparams=HP,
                 run_opts={"device": "cpu", "noprogressbar": True}, checkpointer=ckpt)
brain.fit(counter, brain.make_episode_loader(toy_dataset(n_tasks=6, utts_per_task=8)))
torch.save({n: p.detach() for n, p in brain.modules.named_parameters()}, folder + "/final.pt")
"""


def test_a_kill_while_saving_a_checkpoint_resumes_from_the_last_complete_one(tmp_path):
    """kill -9 in the middle of a checkpoint write: the next run sets the
    half-written checkpoint aside and resumes from the previous one."""
    import os
    import signal
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = tmp_path / "train.py"
    script.write_text(KILL_TRAINING)
    ref = subprocess.run([sys.executable, str(script), str(tmp_path / "ref"), "plain"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), "kill"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "KILL ME" in proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    resumed = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), "plain"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "is incomplete" in resumed.stderr + resumed.stdout
    assert len(list((tmp_path / "run").glob("BROKEN+CKPT*"))) == 1
    want, got = torch.load(tmp_path / "ref" / "final.pt"), torch.load(tmp_path / "run" / "final.pt")
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, msg=name)
