"""What a meta-training run checkpoints besides the models, and checkpoint safety.

:class:`RNGState` (the random generators) and :class:`TrainClock` (the
training time a budget counts) are SpeechBrain recoverables that
:class:`sb_meta.brain.MetaBrain` registers;
:func:`set_aside_incomplete_checkpoints` keeps a run killed while saving from
crashing the next resume.
"""

import logging
import random
import time

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

logger = logging.getLogger(__name__)

__all__ = ["RNGState", "TrainClock", "set_aside_incomplete_checkpoints"]


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


@register_checkpoint_hooks
class TrainClock:
    """Seconds spent training (validation excluded), on the wall clock and in CPU
    time of the process, checkpointed so that ``train_budget_minutes`` and
    learning curves survive a resume.

    ``train_budget_clock: cpu`` budgets CPU time instead of wall-clock time: on
    a machine other jobs share, a one-thread run then gets the same amount of
    computation as on a free core (its CPU time is what the wall clock would
    be there); with N threads it is N times the wall clock.

    Example
    -------
    >>> clock = TrainClock()
    >>> clock.start(); _ = sum(range(100000)); clock.stop()
    >>> clock.seconds > 0 and clock.cpu_seconds > 0
    True
    >>> before = clock.seconds
    >>> clock.start(); clock.discard(); clock.stop()
    >>> clock.seconds == before and not clock.running()
    True
    """

    def __init__(self):
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._t0 = None

    def start(self):
        self._t0 = (time.time(), time.process_time())

    def stop(self):
        if self._t0 is not None:
            self.seconds += time.time() - self._t0[0]
            self.cpu_seconds += time.process_time() - self._t0[1]
            self._t0 = None

    def running(self):
        return self._t0 is not None

    def discard(self):
        """Stop timing without counting the interval since :meth:`start`."""
        self._t0 = None

    @mark_as_saver
    def _save(self, path):
        with open(path, "w") as f:
            f.write(f"{self.seconds!r} {self.cpu_seconds!r}\n")

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        with open(path) as f:
            values = [float(x) for x in f.read().split()]
        self.seconds = values[0]
        self.cpu_seconds = values[1] if len(values) > 1 else values[0]


def _checkpoint_problem(folder, recoverables):
    """``(problem, missing)`` of the checkpoint in ``folder``: the first file found empty or
    truncated (None when none is), and the recoverables that have no file."""
    import pathlib
    import zipfile

    missing = [name for name in recoverables if not (pathlib.Path(folder) / f"{name}.ckpt").is_file()]
    for name in recoverables:
        path = pathlib.Path(folder) / f"{name}.ckpt"
        if name in missing:
            continue
        if path.stat().st_size == 0:
            return f"{path.name} is empty", missing
        with open(path, "rb") as f:
            zipped = f.read(2) == b"PK"
        if zipped and not zipfile.is_zipfile(path):
            return f"{path.name} is truncated", missing
    return None, missing


def set_aside_incomplete_checkpoints(checkpointer):
    """Rename checkpoints a killed run left half-written to ``BROKEN+<name>``.

    SpeechBrain writes a checkpoint's ``CKPT.yaml`` first and its files after,
    so a run killed while saving leaves a checkpoint that looks complete and
    would be recovered (and fail). A checkpoint is complete when every
    recoverable has its file, no file is empty and every torch file is a
    whole zip archive; incomplete ones are set aside (never deleted), so the
    run resumes from the last complete one. Returns the renamed folders.

    When no complete checkpoint is left and one only lacks files (saved by a
    run whose YAML had fewer recoverables, e.g. no scheduler yet), it is an
    error naming them: training from scratch over it would silently discard
    that run.

    Example
    -------
    >>> import tempfile, pathlib
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), recoverables={"m": torch.nn.Linear(1, 1)})
    >>> good = ckpt.save_checkpoint()
    >>> bad = ckpt.save_checkpoint(name="later")
    >>> _ = (bad.path / "m.ckpt").write_bytes(b"PK")  # truncated by a kill
    >>> [p.name for p in set_aside_incomplete_checkpoints(ckpt)]
    ['BROKEN+CKPT+later']
    >>> ckpt.find_checkpoint().path == good.path
    True
    >>> older = Checkpointer(tempfile.mkdtemp(), recoverables={"m": torch.nn.Linear(1, 1)})
    >>> _ = older.save_checkpoint()
    >>> older.add_recoverable("scheduler", torch.nn.Linear(1, 1))  # the YAML grew one
    >>> set_aside_incomplete_checkpoints(older)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    RuntimeError: checkpoint ... has no scheduler.ckpt: it was saved by a run whose YAML had no scheduler ...
    """
    import pathlib

    from speechbrain.utils.distributed import if_main_process

    moved = []
    if not if_main_process():
        return moved
    checkpoints = checkpointer.list_checkpoints()
    problems = {}
    for ckpt in checkpoints:
        problem, missing = _checkpoint_problem(ckpt.path, checkpointer.recoverables)
        if problem or missing:
            problems[ckpt.path] = (problem, missing)
    if checkpoints and len(problems) == len(checkpoints):
        # nothing complete to resume from: a checkpoint that only lacks files may be an
        # older configuration's (a recoverable added to the YAML since), and training
        # silently from scratch over it would throw that run away
        older = {path: missing for path, (problem, missing) in problems.items() if missing and not problem}
        if older:
            path, missing = max(older.items())
            raise RuntimeError(
                f"checkpoint {path} has no {', '.join(m + '.ckpt' for m in missing)}: it was saved "
                f"by a run whose YAML had no {', '.join(missing)} (put the YAML back as it was to "
                "resume) or killed while saving. There is no complete checkpoint to resume from; "
                "move it out of the save folder to train from scratch")
    for ckpt in checkpoints:
        if ckpt.path in problems:
            problem, missing = problems[ckpt.path]
            problem = problem or f"{', '.join(m + '.ckpt' for m in missing)} missing"
            target = pathlib.Path(ckpt.path).with_name(f"BROKEN+{pathlib.Path(ckpt.path).name}")
            pathlib.Path(ckpt.path).rename(target)
            logger.warning("checkpoint %s is incomplete (%s; a run was killed while saving it): "
                           "set aside as %s, resuming from the previous one", ckpt.path, problem, target)
            moved.append(target)
    return moved
