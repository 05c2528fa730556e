"""Episodes per second of ``MetaBrain.fit`` with 1 and 2 processes (gloo).

Each process (``torch.multiprocessing`` spawn, a gloo group initialised from a
file) builds the same brain and runs ``MetaBrain.fit`` for one epoch over the
same episode stream (same seed): ``meta_batch_tasks=4`` FOMAML episodes with
one inner step, so each of 2 ranks does 2 tasks and the meta-gradients are
all-reduced by ``MetaBrain``. The time of every ``fit_batch`` end is recorded;
the rate is taken from the end of the first (warm-up) episode to the end of
the last, so start-up and set-up are not counted.

On a machine with fewer cores than processes x threads, the processes compete
for the same cores: the speed-up measured there says little about a machine
with a core per process.
"""

import pathlib
import tempfile
import time

import torch

import common

META = dict(meta_strategy="fomaml", inner_steps=1, meta_batch_tasks=4, k_support=4, k_query=4)


def worker(rank, world_size, init_file, out_path, setup_kind, workdir, episodes, threads):
    import json
    import logging

    import torch.distributed as dist

    logging.disable(logging.WARNING)
    if threads:
        torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        setup = common.make_setup(setup_kind, workdir)
        brain = setup.brain(**META, episodes_per_epoch=episodes)
        loader = setup.loader(brain, seed=0)
        assert loader.sampler.world_size == world_size
        ends = []
        fit_batch = brain.fit_batch

        def timed_fit_batch(episode):
            loss = fit_batch(episode)
            ends.append(time.perf_counter())
            return loss

        brain.fit_batch = timed_fit_batch
        dist.barrier()
        t0 = time.perf_counter()
        brain.fit(range(1, 2), loader, progressbar=False)
        t_fit = time.perf_counter() - t0
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(
                    {"ends": ends, "fit_s": t_fit, "torch_threads": torch.get_num_threads(),
                     "tasks_per_rank": len(next(iter(loader)).tasks)},
                    f,
                )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def measure(world_size, setup_kind, workdir, episodes, threads=None):
    import json

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "out.json"
        t0 = time.perf_counter()
        mp.start_processes(
            worker,
            args=(world_size, str(pathlib.Path(tmp) / "init"), str(out), setup_kind,
                  str(workdir) if workdir else None, episodes, threads),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        wall = time.perf_counter() - t0
        data = json.loads(out.read_text())
    ends = data["ends"]
    steps = [b - a for a, b in zip(ends, ends[1:])]
    timed = len(ends) - 1
    rate = timed / (ends[-1] - ends[0]) if timed > 0 else None
    return {
        "processes": world_size,
        "torch_threads_per_process": data["torch_threads"],
        "tasks_per_rank": data["tasks_per_rank"],
        "episodes": len(ends),
        "episodes_timed": timed,
        "episodes_per_s": rate,
        "episode_s": common.summarize(steps) if steps else None,
        "fit_s": data["fit_s"],
        "wall_s_with_startup": wall,
    }


def run(quick, setup_kind=None, workdir=None, episodes=None):
    """The ``ddp`` section: quick mode uses the toy model, full mode AN4."""
    if setup_kind is None:
        setup_kind = "toy" if quick else "an4"
    if setup_kind == "an4":
        reason = common.an4_missing_reason()
        if reason:
            raise common.SkipSection(reason)
        common.make_setup("an4", workdir)  # prepare once, before the workers
    episodes = episodes or (100 if setup_kind == "toy" else (4 if quick else 8))
    cores = common.machine_info()["usable_cores"] or 1
    configs = [(1, None), (2, None)]
    if cores >= 2:
        configs.append((2, max(1, cores // 2)))  # 2 processes sharing the cores
    runs = []
    for world, threads in configs:
        runs.append(measure(world, setup_kind, workdir, episodes, threads))
    base = runs[0]["episodes_per_s"]
    for r in runs:
        r["speedup_vs_1_process"] = (r["episodes_per_s"] / base) if base else None
    model = common.AN4Setup.name if setup_kind == "an4" else common.ToySetup.name
    t2 = runs[1]["torch_threads_per_process"]
    note = (
        f"{cores} usable cores. The 2 processes compete for the same cores: with torch's "
        f"default {t2} threads each, {2 * t2} threads share {cores} cores (oversubscribed); "
        f"the last row gives each process {max(1, cores // 2)} thread(s). These numbers "
        "measure the all-reduce overhead and the contention, not the scaling on a machine "
        "with a core (or a GPU) per process."
    )
    if cores >= 2 * t2:
        note = f"{cores} usable cores: no oversubscription with 2 processes of {t2} threads."
    return {
        "status": "ok",
        "model": model,
        "strategy": "fomaml, inner_steps=1",
        "meta_batch_tasks": META["meta_batch_tasks"],
        "k_support": META["k_support"],
        "k_query": META["k_query"],
        "backend": "gloo (torch.multiprocessing spawn), MetaBrain.fit, all-reduced meta-gradients",
        "note": note,
        "results": runs,
    }


if __name__ == "__main__":  # pragma: no cover - manual use
    import json
    import sys

    print(json.dumps(run("--full" not in sys.argv), indent=1))
