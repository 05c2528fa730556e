"""The add-on example (examples/sbmeta-mmd), installed for real with pip into a
temporary target: listed with its distribution and options by ``sb-meta
plugins``, and used by name only: its confusion term reaches the loss terms and
pulls the domains' encoder features together, and a recipe runs it by flag."""

import json

from helpers.distributions import example_fixture, run_python
from helpers.recipes import run_recipe

installed = example_fixture("sbmeta-mmd")

CODE = """
import doctest, json, torch, sbmeta_mmd
from sb_meta.cli import main
from sb_meta.contract import ASRPredictions
from sb_meta.testing import ToyBrain, toy_modules
main(['plugins', '--json']); print('@@')
assert doctest.testmod(sbmeta_mmd).failed == 0

class FeatToy(ToyBrain):  # the toy brain with its hidden layer as encoder features
    def compute_forward(self, batch, stage):
        hidden = torch.tanh(self.modules.lin1(batch.x.data))
        return ASRPredictions(self.modules.lin2(hidden), torch.ones(len(hidden)), hidden[:, None, :])
    def compute_objectives(self, predictions, batch, stage):
        return ((predictions.log_probs - batch.y.data) ** 2).mean()

from speechbrain.dataio.dataset import DynamicItemDataset
g = torch.Generator().manual_seed(0)
rows = {}
for s in range(4):  # two domains whose inputs differ by a shift
    for i in range(6):
        x = torch.randn(3, generator=g, dtype=torch.float64) + (2.0 if s % 2 else -2.0)
        rows[f"s{s}_{i}"] = {"spk_id": f"s{s}", "accent": "north" if s % 2 else "south",
                             "x": x, "y": torch.sin(x.sum()).reshape(1), "duration": 1.0}
data = DynamicItemDataset(rows, output_keys=["id", "x", "y"])

def gap(weight):
    hp = dict(meta_strategy="joint", joint_pooled=True, meta_addons=["mmd"], mmd_column="accent",
              mmd_weight=weight, k_support=2, k_query=2, meta_batch_tasks=4, seed=0, max_grad_norm=float("inf"))
    b = FeatToy(toy_modules(0), lambda p: torch.optim.SGD(p, lr=0.1), hparams=hp,
                run_opts={"device": "cpu", "noprogressbar": True})
    b.fit(range(1, 11), b.make_episode_loader(data), progressbar=False)
    with torch.no_grad():
        h = torch.tanh(b.modules.lin1(torch.stack([r["x"] for r in rows.values()])))
    north = torch.tensor([r["accent"] == "north" for r in rows.values()])
    return b, float(((h[north].mean(0) - h[~north].mean(0)) ** 2).sum())

with_mmd, closer = gap(5.0)
without, apart = gap(0.0)
print(json.dumps({"terms": sorted(with_mmd.loss_term_means()), "closer": closer, "apart": apart}))
"""

def test_listed_and_used_by_name_its_loss_pulls_the_domains_together(installed):
    listing, ran = run_python(CODE, installed).split("@@\n")
    rows = {r["name"]: r for r in json.loads(listing)["plugins"]}
    assert rows["mmd"]["kind"] == "addon" and rows["mmd"]["distribution"] == "sbmeta-mmd 0.1.0"
    out = json.loads(ran.strip().splitlines()[-1])
    assert "outer_mmd_confusion" in out["terms"]
    assert out["closer"] < 0.5 * out["apart"], out

def test_a_recipe_runs_it_by_flag(installed, synth_corpus, tmp_path):
    out = tmp_path / "exp"
    run_recipe(synth_corpus, out, "--meta_strategy=joint", "--joint_pooled=True", "--meta_addons=[mmd]",
               "--mmd_column=spk_id", env=installed)
    assert "train outer_mmd_confusion:" in (out / "train_log.txt").read_text()
