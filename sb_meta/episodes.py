"""Tasks, episodes and the episode sampler.

A **task** is one value of a manifest column (a speaker for ``spk_id``, a
language for ``lang``...). It has a *support* set (``k_support`` utterances, or
utterances up to ``support_seconds`` of audio) and a disjoint *query* set
(``k_query`` utterances). An **episode** is a meta-batch of
``meta_batch_tasks`` tasks: one outer step of meta-training.

The stream of episodes is a pure function of ``(seed, epoch, index)``, so it is
reproducible, resumable mid-epoch (the loader is a SpeechBrain checkpoint
recoverable) and identical on every DDP rank; each rank then keeps a disjoint
share of every episode's tasks.

Example
-------
>>> rows = [dict(ID=f"{s}_{i}", duration=1.0, spk_id=s) for s in "abc" for i in range(4)]
>>> sampler = EpisodeSampler(rows, k_support=2, k_query=1, meta_batch_tasks=2, seed=3)
>>> len(sampler), sampler.task_names
(2, ['a', 'b', 'c'])
>>> episode = next(iter(sampler))
>>> task = episode.tasks[0]
>>> len(task.support_ids), len(task.query_ids), set(task.support_ids) & set(task.query_ids)
(2, 1, set())
"""

import hashlib
import logging
import math
import random
from dataclasses import dataclass, field

from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

logger = logging.getLogger(__name__)

__all__ = ["Task", "Episode", "EpisodeSampler", "EpisodeLoader", "NotEnoughDataError"]


class NotEnoughDataError(ValueError):
    """Too few tasks or utterances for the requested episode shape."""


@dataclass
class Task:
    """One task of an episode: a support set and a disjoint query set.

    ``support`` / ``query`` hold collated ``PaddedBatch`` es once an
    :class:`EpisodeLoader` has filled them; ``*_ids`` are manifest IDs.
    Plugins receive tasks in their hooks: ``column`` is the manifest column
    whose value ``name`` is (``spk_id``...), ``rows`` maps each utterance ID
    of the task to its manifest row (every column, e.g. ``accent`` or a
    channel column). ``collate`` (set by the loader) collates any utterance IDs
    of the loader's dataset as one batch.
    """

    name: str
    support_ids: list
    query_ids: list
    support: object = None
    query: object = None
    column: str = None
    rows: dict = field(default_factory=dict, repr=False)
    collate: object = field(default=None, repr=False)

    def value(self, uid, column):
        """The manifest value of ``column`` for utterance ``uid`` of this task."""
        try:
            return self.rows[uid][column]
        except KeyError:
            if uid not in self.rows:
                raise KeyError(f"utterance {uid!r} is not in task {self.name!r}") from None
            raise KeyError(
                f"column {column!r} is not in the manifest; columns are {sorted(self.rows[uid])}"
            ) from None

    def pooled(self):
        """Support and query utterances collated as one batch (for joint training)."""
        if self.collate is None:
            raise RuntimeError("task was not produced by an EpisodeLoader")
        return self.collate(self.support_ids + self.query_ids)


@dataclass
class Episode:
    """A meta-batch of tasks (this rank's share) and where it sits in the stream."""

    epoch: int
    index: int
    tasks: list
    n_global_tasks: int

    def __len__(self):
        return len(self.tasks)


def _rng(*keys):
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _rows_of(data):
    """Accept a list of dicts, a manifest path or a DynamicItemDataset."""
    if isinstance(data, (list, tuple)):
        return list(data)
    if hasattr(data, "data") and hasattr(data, "data_ids"):  # DynamicItemDataset
        return [dict(data.data[i], ID=i) for i in data.data_ids]
    from sb_meta.data.manifest import read_manifest

    return read_manifest(data)


def _rank_and_world(rank, world_size):
    """``(rank, world_size)`` as given, or of the ``torch.distributed`` group when either is None."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    return rank, world_size


@register_checkpoint_hooks
class EpisodeSampler:
    """Draws episodes of tasks grouped by any manifest column.

    Arguments
    ---------
    data : list of dict, str or DynamicItemDataset
        Utterances (with ``ID`` and ``task_column``), a manifest CSV path or a
        SpeechBrain dataset.
    task_column : str
        The column whose values are tasks (``spk_id``, ``lang``, ``accent``...).
    k_support : int
        Support utterances per task (ignored when ``support_seconds`` is set).
    k_query : int or None
        Query utterances per task; ``None``: every utterance of the task that
        is not in its support (at least one), as when validating on whole tasks.
    meta_batch_tasks : int
        Tasks per episode (over all ranks).
    episodes_per_epoch : int, optional
        Defaults to one pass over the tasks: ``ceil(n_tasks / meta_batch_tasks)``.
    support_seconds : float, optional
        Support by duration budget: utterances are added until their total
        duration reaches this many seconds.
    seed : int
        The stream is a function of ``(seed, epoch, index)``.
    rank, world_size : int, optional
        DDP sharding; default to the ``torch.distributed`` group when initialised.
    duration_column : str
        Column holding durations in seconds (used with ``support_seconds``).
    """

    def __init__(self, data, task_column="spk_id", k_support=5, k_query=5, meta_batch_tasks=4,
                 episodes_per_epoch=None, support_seconds=None, seed=0, rank=None, world_size=None,
                 duration_column="duration"):
        rows = _rows_of(data)
        if (k_query is not None and k_query < 0) or (support_seconds is None and k_support < 1):
            raise ValueError(f"need k_support >= 1 and k_query >= 0, got {k_support}, {k_query}")
        if meta_batch_tasks < 1:
            raise ValueError(f"meta_batch_tasks must be >= 1, got {meta_batch_tasks}")
        if rows and task_column not in rows[0]:
            raise KeyError(
                f"task_column {task_column!r} is not a column of the data; "
                f"columns are {sorted(rows[0])}"
            )
        self.task_column = task_column
        self.k_support = k_support
        self.k_query = k_query
        # a whole-rest query (k_query=None) still needs one utterance outside the support
        self.min_query = 1 if k_query is None else k_query
        self.support_seconds = support_seconds
        self.meta_batch_tasks = meta_batch_tasks
        self.seed = seed
        self.durations = {}
        self.rows = {}
        groups = {}
        for row in rows:
            self.rows[str(row["ID"])] = row
            groups.setdefault(str(row[task_column]), []).append(str(row["ID"]))
            if support_seconds is not None:
                self.durations[str(row["ID"])] = float(row[duration_column])
        need = (1 if support_seconds is not None else k_support) + self.min_query
        too_small = {t: len(ids) for t, ids in groups.items() if len(ids) < need}
        if too_small:
            listed = ", ".join(f"{t} ({n})" for t, n in sorted(too_small.items()))
            logger.warning(
                "%d %s task(s) have fewer than %d utterances (k_support + k_query) "
                "and are excluded: %s",
                len(too_small), task_column, need, listed,
            )
        self.excluded = too_small
        self.tasks = {t: sorted(ids) for t, ids in sorted(groups.items()) if t not in too_small}
        self.task_names = list(self.tasks)
        if len(self.tasks) < meta_batch_tasks:
            raise self._not_enough_tasks(groups, need, k_support, k_query)
        self.episodes_per_epoch = episodes_per_epoch or math.ceil(
            len(self.tasks) / meta_batch_tasks
        )
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.epoch = 0
        self._resume = None  # (epoch, position) recovered from a checkpoint
        self._position = 0

    def _not_enough_tasks(self, groups, need, k_support, k_query):
        """The :class:`NotEnoughDataError` of a sampler with fewer than ``meta_batch_tasks``
        tasks large enough (``groups``: every task's utterances, ``need``: utterances per task)."""
        meta_batch_tasks, task_column = self.meta_batch_tasks, self.task_column
        sizes = sorted((len(ids) for ids in groups.values()), reverse=True)
        what = (
            f"support_seconds + k_query ({k_query})" if self.support_seconds is not None
            else f"k_support + k_query = {k_support} + {k_query}"
        )
        if len(groups) >= meta_batch_tasks:
            # enough tasks exist: the per-task sizes are the problem
            fit = sizes[meta_batch_tasks - 1]
            return NotEnoughDataError(
                f"{what} = {need} utterances per task, but only {len(self.tasks)} of the "
                f"{len(groups)} {task_column} tasks have that many (largest: {sizes[0]}); "
                f"meta_batch_tasks={meta_batch_tasks} tasks per episode need "
                f"k_support + k_query <= {fit}"
            )
        return NotEnoughDataError(
            f"the data has {len(groups)} {task_column} task(s) but "
            f"meta_batch_tasks={meta_batch_tasks}; lower meta_batch_tasks or add tasks"
        )

    def __len__(self):
        return self.episodes_per_epoch

    def set_epoch(self, epoch):
        """Select the epoch whose episode stream is drawn (SpeechBrain calls this)."""
        self.epoch = epoch

    def task_order(self, epoch):
        """The tasks of ``epoch`` in episode order (reshuffled each pass).

        When a pass ends inside an episode, the next pass starts with tasks that
        episode does not hold yet: no episode has a task twice (with classes as
        tasks, twice would put the same class in two slots of an N-way episode).
        """
        needed = self.episodes_per_epoch * self.meta_batch_tasks
        order, rnd = [], 0
        while len(order) < needed:
            names = list(self.task_names)
            _rng(self.seed, "order", epoch, rnd).shuffle(names)
            begun = set(order[len(order) - len(order) % self.meta_batch_tasks:])
            names = [n for n in names if n not in begun] + [n for n in names if n in begun]
            order.extend(names)
            rnd += 1
        return order[:needed]

    def split(self, task, epoch, index):
        """Draw (support_ids, query_ids) for ``task`` in episode ``index``."""
        ids = list(self.tasks[task])
        _rng(self.seed, "split", epoch, index, task).shuffle(ids)
        if self.support_seconds is None:
            support = ids[: self.k_support]
        else:
            support, total = [], 0.0
            for i in ids[: len(ids) - self.min_query]:
                support.append(i)
                total += self.durations[i]
                if total >= self.support_seconds:
                    break
        rest = ids[len(support):]
        return support, rest[: self.k_query]  # None: the whole rest

    def episode(self, epoch, index):
        """Episode ``index`` of ``epoch``: all its tasks, before sharding."""
        names = self.task_order(epoch)[
            index * self.meta_batch_tasks : (index + 1) * self.meta_batch_tasks
        ]
        tasks = []
        for n in names:
            support, query = self.split(n, epoch, index)
            rows = {i: self.rows[i] for i in support + query}
            tasks.append(Task(n, support, query, column=self.task_column, rows=rows))
        return tasks

    def __iter__(self):
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        for index in range(start, self.episodes_per_epoch):
            tasks = self.episode(self.epoch, index)
            self._position = index + 1
            yield Episode(
                self.epoch, index, tasks[self.rank :: self.world_size], len(tasks)
            )
        self._position = 0

    @mark_as_saver
    def _save(self, path):
        with open(path, "w") as f:
            f.write(f"{self.epoch} {self._position}\n")

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        if end_of_epoch:
            return
        with open(path) as f:
            epoch, position = (int(x) for x in f.read().split())
        self._resume = (epoch, position)


class EpisodeLoader:
    """Collates the support and query sets of a sampler's episodes.

    Arguments
    ---------
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
        The dataset whose dynamic items (audio, tokens...) make the batches.
    sampler : EpisodeSampler
        Built on the same dataset (or its manifest).

    Example
    -------
    >>> from speechbrain.dataio.dataset import DynamicItemDataset
    >>> data = {f"{s}_{i}": {"spk_id": s, "x": i} for s in "ab" for i in range(3)}
    >>> ds = DynamicItemDataset(data, output_keys=["id", "x"])
    >>> loader = EpisodeLoader(ds, EpisodeSampler(ds, k_support=2, k_query=1, meta_batch_tasks=2))
    >>> episode = next(iter(loader))
    >>> episode.tasks[0].support.x.shape, episode.tasks[0].pooled().x.shape
    (torch.Size([2]), torch.Size([3]))
    """

    def __init__(self, dataset, sampler):
        self.dataset = dataset
        self.sampler = sampler
        self._index = {uid: i for i, uid in enumerate(dataset.data_ids)}

    def collate(self, ids):
        """A ``PaddedBatch`` of the utterances ``ids``."""
        from speechbrain.dataio.batch import PaddedBatch

        return PaddedBatch([self.dataset[self._index[i]] for i in ids])

    def __len__(self):
        return len(self.sampler)

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        for episode in self.sampler:
            for task in episode.tasks:
                task.support = self.collate(task.support_ids)
                task.query = self.collate(task.query_ids) if task.query_ids else None
                task.collate = self.collate
            yield episode

    # checkpointing is the sampler's
    @property
    def recoverable(self):
        return self.sampler
