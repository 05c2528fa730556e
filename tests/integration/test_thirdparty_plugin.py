"""A plugin distributed on its own (examples/sbmeta-l2sp), installed for real
with pip into a temporary target: discovered through its entry point, listed
with its distribution by ``sb-meta plugins``, and used by name only by a brain
and by a recipe."""

import json

from helpers.distributions import example_fixture, run_python
from helpers.recipes import run_recipe

installed = example_fixture("sbmeta-l2sp")


def test_not_there_without_the_installation():
    from sb_meta.plugins import PluginRegistry

    assert "l2sp" not in PluginRegistry().strategies

def test_listed_with_its_distribution_and_a_brain_uses_it_by_name(installed):
    code = """
import doctest, torch, sbmeta_l2sp
from sb_meta.cli import main
main(['plugins', '--json']); print('@@'); main(['plugins']); print('@@')
assert doctest.testmod(sbmeta_l2sp).failed == 0          # its own documented behaviour
from sb_meta.testing import make_toy_brain, toy_dataset
brain = make_toy_brain({"meta_strategy": "l2sp", "l2sp_alpha": 10.0, "k_support": 2, "k_query": 2,
                        "meta_batch_tasks": 2})
start = {n: p.detach().clone() for n, p in brain.base_params().items()}
brain.fit(range(1, 3), brain.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=6)), progressbar=False)
moved = sum(float((p - start[n]).pow(2).sum()) for n, p in brain.base_params().items())
free = make_toy_brain({"meta_strategy": "finetune", "k_support": 2, "k_query": 2, "meta_batch_tasks": 2})
free.fit(range(1, 3), free.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=6)), progressbar=False)
moved_free = sum(float((p - start[n]).pow(2).sum()) for n, p in free.base_params().items())
print(type(brain.strategy).__module__, moved < moved_free)
"""
    listing, text, ran = run_python(code, installed).split("@@\n")
    rows = {r["name"]: r for r in json.loads(listing)["plugins"]}
    assert rows["l2sp"]["kind"] == "strategy"
    assert rows["l2sp"]["distribution"] == "sbmeta-l2sp 0.1.0"
    assert rows["l2sp"]["module"] == "sbmeta_l2sp" and rows["maml"]["distribution"].startswith("sb-meta ")
    assert "[sbmeta-l2sp 0.1.0]" in next(line for line in text.splitlines() if " l2sp " in line)
    # the penalty toward the starting weights keeps them closer than plain fine-tuning
    assert ran.split() == ["sbmeta_l2sp", "True"]

def test_a_recipe_uses_it_by_name(installed, synth_corpus, tmp_path):
    out = tmp_path / "exp"
    run_recipe(synth_corpus, out, "--meta_strategy=l2sp", env=installed)
    log = (out / "train_log.txt").read_text()
    assert "train outer_l2sp_penalty:" in log
    assert json.loads((out / "pretrained" / "sbmeta.json").read_text())["strategy"] == "l2sp"
