"""Statistics of the k-shot protocol on constructed inputs."""

import random

import pytest

from sb_meta.evaluation import bootstrap_ci, compare_models, draw_support, summarize_paired


def test_a_constant_paired_difference_has_a_zero_width_interval_at_its_value():
    base = {f"t{i}": [20.0, 30.0, 25.0] for i in range(8)}
    adapted = {t: [v - 3.0 for v in vs] for t, vs in base.items()}
    s = summarize_paired(base, adapted)
    assert s["delta"] == pytest.approx(-3.0)
    assert s["delta_ci"] == pytest.approx([-3.0, -3.0])
    assert s["relative"] == pytest.approx(3.0 / 25.0)
    assert s["worse_tasks"] == [] and s["worse_fraction"] == 0.0


def test_the_interval_of_independent_draws_matches_the_normal_one():
    rnd = random.Random(1)
    n, mu, sd = 400, -3.0, 2.0
    groups = {f"t{i}": [rnd.gauss(mu, sd)] for i in range(n)}
    est, lo, hi = bootstrap_ci(groups, n_boot=4000)
    half = 1.96 * sd / n ** 0.5
    assert lo < mu < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert (lo + hi) / 2 == pytest.approx(est, abs=0.05)


def test_draws_of_one_task_do_not_count_as_independent():
    """Five tasks with very different effects, 100 identical draws each: the
    interval reflects five tasks, not 500 draws."""
    effects = [-5.0, -1.0, 0.0, 2.0, 4.0]
    groups = {f"t{i}": [e] * 100 for i, e in enumerate(effects)}
    est, lo, hi = bootstrap_ci(groups)
    assert est == pytest.approx(0.0)
    assert hi - lo > 4.0  # a bootstrap over 500 independent draws would give about 0.6
    flat = {f"d{i}": [v] for i, v in enumerate(x for vs in groups.values() for x in vs)}
    _, flo, fhi = bootstrap_ci(flat)
    assert fhi - flo < 1.0


def test_tasks_made_worse_are_counted():
    s = summarize_paired({"a": [10.0], "b": [10.0], "c": [10.0]}, {"a": [8.0], "b": [12.0], "c": [10.0]})
    assert s["worse_tasks"] == ["b"] and s["worse_fraction"] == pytest.approx(1 / 3)
    assert s["worse_draws"] == 1


@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_support_and_query_never_share_an_utterance(k):
    ids = [f"u{i}" for i in range(10)]
    for repeat in range(20):
        support, query = draw_support(ids, k, seed=3, task="spk", repeat=repeat)
        assert len(support) == k and not set(support) & set(query)
        assert sorted(support + query) == sorted(ids)


def test_models_are_compared_on_the_same_draws_only():
    def res(wers, query=("q1",)):
        return {"draws": [{"task": t, "repeat": 0, "k": 5, "query": list(query),
                           "adapted": {"m": {"wer": w}}} for t, w in wers.items()]}

    joint, meta = res({"a": 20.0, "b": 30.0}), res({"a": 18.0, "b": 28.0})
    s = compare_models(joint, meta, "m", 5)
    assert s["delta"] == pytest.approx(-2.0) and s["delta_ci"] == pytest.approx([-2.0, -2.0])
    with pytest.raises(ValueError, match="other query utterances"):
        compare_models(joint, res({"a": 18.0}, query=("q2",)), "m", 5)
    # against a model before adaptation, on the same queries
    from sb_meta.evaluation import UNADAPTED

    for draw, unadapted in zip(joint["draws"], (21.0, 33.0)):
        draw["unadapted"] = {"wer": unadapted}
    s = compare_models(joint, meta, UNADAPTED, 5, method_b="m")
    assert s["base_mean"] == pytest.approx(27.0) and s["delta"] == pytest.approx(-4.0)
