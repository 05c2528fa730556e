"""Existing behaviour unchanged: the k-shot figures of a fixed model, corpus and seed equal
the pinned ones (``tests/data/pinned_kshot.json``, written by ``tests/helpers/pinned_kshot.py``,
which says how to regenerate them when a change is meant to change them). They are computed
with kernels that give the same figures on every x86-64 CPU (``pinned_kshot.PORTABLE_ENV``)."""

import json

import pytest

from helpers import pinned_kshot


def test_kshot_figures_of_a_fixed_seed_are_the_pinned_ones(tmp_path):
    pinned = json.loads(pinned_kshot.FIGURES.read_text())
    got = pinned_kshot.compute_portably(tmp_path)
    assert got["failed"] == pinned["failed"]
    assert sorted(got["draws"]) == sorted(pinned["draws"])
    for draw, methods in pinned["draws"].items():
        assert sorted(got["draws"][draw]) == sorted(methods), draw
        for method, figures in methods.items():
            assert got["draws"][draw][method] == pytest.approx(figures, abs=1e-6), (draw, method)
    assert got["log_probs"] == pytest.approx(pinned["log_probs"], rel=1e-5)
