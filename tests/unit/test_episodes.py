"""Episode sampler: grouping, k-shot shape, determinism, sharding, exclusion."""

import logging

import pytest

from sb_meta.episodes import EpisodeSampler, NotEnoughDataError


def rows(n_tasks=5, per_task=6, column="spk_id", short=()):
    out = []
    for t in range(n_tasks):
        n = 2 if t in short else per_task
        for i in range(n):
            out.append({"ID": f"t{t}_{i}", "duration": 1.0 + i, column: f"t{t}", "lang": "en" if t % 2 else "de"})
    return out


def stream(sampler, epoch):
    sampler.set_epoch(epoch)
    return [[(t.name, t.support_ids, t.query_ids) for t in e.tasks] for e in sampler]


def test_support_and_query_are_disjoint_and_within_one_task():
    s = EpisodeSampler(rows(), k_support=3, k_query=2, meta_batch_tasks=2)
    for episode in s:
        assert len(episode.tasks) == 2
        for task in episode.tasks:
            assert len(task.support_ids) == 3 and len(task.query_ids) == 2
            assert not set(task.support_ids) & set(task.query_ids)
            assert all(i.startswith(task.name + "_") for i in task.support_ids + task.query_ids)


def test_group_by_any_column():
    s = EpisodeSampler(rows(), task_column="lang", k_support=2, k_query=2, meta_batch_tasks=2)
    assert s.task_names == ["de", "en"]
    with pytest.raises(KeyError, match="task_column 'accent' is not a column"):
        EpisodeSampler(rows(), task_column="accent")


def test_deterministic_for_seed_and_epoch_and_different_across_epochs():
    a = EpisodeSampler(rows(), k_support=2, k_query=2, meta_batch_tasks=2, seed=5)
    b = EpisodeSampler(rows(), k_support=2, k_query=2, meta_batch_tasks=2, seed=5)
    assert stream(a, 1) == stream(b, 1)
    assert stream(a, 1) != stream(a, 2)
    c = EpisodeSampler(rows(), k_support=2, k_query=2, meta_batch_tasks=2, seed=6)
    assert stream(c, 1) != stream(a, 1)


def test_one_epoch_visits_every_task():
    s = EpisodeSampler(rows(n_tasks=6), k_support=2, k_query=2, meta_batch_tasks=2)
    names = [name for ep in stream(s, 3) for name, _, _ in ep]
    assert sorted(names) == sorted(s.task_names)


def test_ranks_get_disjoint_shares_of_the_same_episodes():
    full = EpisodeSampler(rows(n_tasks=8), k_support=2, k_query=2, meta_batch_tasks=4, rank=0, world_size=1)
    shards = [
        EpisodeSampler(rows(n_tasks=8), k_support=2, k_query=2, meta_batch_tasks=4, rank=r, world_size=2)
        for r in (0, 1)
    ]
    for e_full, e0, e1 in zip(*(stream(x, 1) for x in [full] + shards)):
        assert sorted(e0 + e1) == sorted(e_full)
        assert not {n for n, _, _ in e0} & {n for n, _, _ in e1}


def test_small_tasks_are_excluded_with_one_warning_naming_them(caplog):
    with caplog.at_level(logging.WARNING):
        s = EpisodeSampler(rows(short=(1, 3)), k_support=3, k_query=2, meta_batch_tasks=2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "t1 (2)" in warnings[0].getMessage() and "t3 (2)" in warnings[0].getMessage()
    assert s.task_names == ["t0", "t2", "t4"] and s.excluded == {"t1": 2, "t3": 2}


def test_too_few_tasks_for_a_meta_batch_is_an_error():
    with pytest.raises(NotEnoughDataError, match="meta_batch_tasks=9"):
        EpisodeSampler(rows(), k_support=2, k_query=2, meta_batch_tasks=9)


def test_support_by_duration_budget():
    s = EpisodeSampler(rows(), k_query=1, meta_batch_tasks=1, support_seconds=4.0)
    for ep in s:
        task = ep.tasks[0]
        durations = [1.0 + int(i.split("_")[1]) for i in task.support_ids]
        assert sum(durations) >= 4.0 or len(task.support_ids) == 5
        assert sum(durations[:-1]) < 4.0
        assert len(task.query_ids) == 1


def test_episodes_per_epoch_can_exceed_one_pass():
    s = EpisodeSampler(rows(n_tasks=3), k_support=2, k_query=2, meta_batch_tasks=2, episodes_per_epoch=7)
    assert len(stream(s, 1)) == 7


def test_no_episode_holds_a_task_twice_when_a_pass_ends_inside_it():
    # 5 tasks in episodes of 3: passes end inside episodes; without care a new pass
    # can start with a task the straddling episode already holds
    for seed in range(20):
        s = EpisodeSampler(rows(n_tasks=5), k_support=2, k_query=2, meta_batch_tasks=3,
                           episodes_per_epoch=10, seed=seed)
        for epoch in (1, 2):
            for episode in stream(s, epoch):
                names = [name for name, _, _ in episode]
                assert len(set(names)) == 3, (seed, epoch, names)
    # every pass still visits every task once
    order = s.task_order(1)
    assert sorted(order[:5]) == sorted(s.task_names)
