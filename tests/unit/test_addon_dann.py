"""The dann add-on: the reversal flips and scales the domain gradient; the
classifier reads labels from any manifest column, is trained, checkpointed and
never exported; the reversal weight follows Ganin & Lempitsky's schedule; it
runs from a recipe by flag and its loss reaches the train log."""

import pytest
import torch

from sb_meta.contract import ASRPredictions, Phase
from sb_meta.testing import ToyBrain, toy_modules

import sb_meta_plugins.dann as dann  # the installed built-in plugin

pytestmark = pytest.mark.usefixtures("one_thread")


class FeatToy(ToyBrain):
    """The toy brain with encoder features: ``hidden`` is ``encoder_out`` ([batch, 1, 8])."""

    def compute_forward(self, batch, stage):
        x = batch.x.data.to(self.device)
        hidden = torch.tanh(self.modules.lin1(x))
        return ASRPredictions(self.modules.lin2(hidden), torch.ones(len(x)), hidden[:, None, :])

    def compute_objectives(self, predictions, batch, stage):
        return ((predictions.log_probs - batch.y.data.to(self.device)) ** 2).mean()


def dataset(n_speakers=4, utts=6, seed=0):
    """Toy regression tasks with a speaker and an accent column (two accents)."""
    from speechbrain.dataio.dataset import DynamicItemDataset

    g = torch.Generator().manual_seed(seed)
    data = {}
    for s in range(n_speakers):
        w = torch.randn(3, generator=g, dtype=torch.float64)
        for i in range(utts):
            x = torch.randn(3, generator=g, dtype=torch.float64)
            data[f"s{s}_{i}"] = {"spk_id": f"s{s}", "accent": "north" if s % 2 else "south",
                                 "x": x, "y": torch.sin(x @ w).reshape(1), "duration": 1.0}
    return DynamicItemDataset(data, output_keys=["id", "x", "y"])


def brain(checkpointer=None, **hp):
    base = dict(meta_strategy="fomaml", meta_addons=["dann"], k_support=2, k_query=2, meta_batch_tasks=2,
                inner_steps=1, inner_lr=0.1, max_grad_norm=float("inf"), seed=0, dann_input_size=8)
    base.update(hp)
    b = FeatToy(toy_modules(0), lambda p: torch.optim.SGD(p, lr=0.1), hparams=base,
                run_opts={"device": "cpu", "noprogressbar": True}, checkpointer=checkpointer)
    b.init_optimizers()
    return b


def test_the_reversal_flips_and_scales_the_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4)
    (dann.grad_reverse(x, 0.3) * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * w)
    # differentiable again (second-order inner loops)
    x = torch.randn(3, requires_grad=True)
    (g,) = torch.autograd.grad((dann.grad_reverse(x, 2.0) ** 2).sum(), x, create_graph=True)
    torch.testing.assert_close(g, -4.0 * x)
    (gg,) = torch.autograd.grad(g.sum(), x)  # g = -4 r(x): reversed once more
    torch.testing.assert_close(gg, torch.full((3,), 8.0))


def test_the_domain_loss_reverses_and_scales_the_encoder_gradient_only():
    b = brain(dann_schedule="constant", dann_lambda=0.5, dann_weight=2.0)
    (addon,) = b.addons
    clf = b.modules["sbmeta_addons"]["dann"]["classifier"]
    ep = next(iter(b.make_episode_loader(dataset())))
    task = ep.tasks[0]
    batch = task.support
    enc = torch.randn(len(batch.id), 5, 8, dtype=torch.float64, requires_grad=True)
    pred = ASRPredictions(None, torch.tensor([1.0, 0.6], dtype=torch.float64), enc)
    terms = addon.sbmeta_loss(b, batch, pred, task, Phase.OUTER)
    terms["domain"].backward()
    reversed_enc, reversed_clf = enc.grad.clone(), [p.grad.clone() for p in clf.parameters()]
    # the same loss without the reversal layer
    enc.grad = None
    clf.zero_grad()
    target = clf.indices([task.value(u, "spk_id") for u in batch.id])
    plain = 2.0 * torch.nn.functional.cross_entropy(clf(dann.masked_mean(enc, pred.lengths)), target)
    torch.testing.assert_close(plain, terms["domain"])
    plain.backward()
    torch.testing.assert_close(reversed_enc, -0.5 * enc.grad)  # flipped and scaled
    for r, p in zip(reversed_clf, clf.parameters()):  # the classifier learns normally
        torch.testing.assert_close(r, p.grad)
    assert float(enc.grad[1, 3:].abs().sum()) == 0  # padded frames (length 0.6 of 5) do not count


def test_ganin_schedule_from_steps_or_budget():
    b = brain(dann_schedule_steps=100, dann_gamma=10.0, dann_lambda=0.8)
    (addon,) = b.addons
    got = []
    for step in (0, 50, 100, 400):
        b.optimizer_step = step
        got.append(addon.reversal_weight(b))
    assert got[0] == 0.0
    assert got[1] == pytest.approx(0.8 * (2 / (1 + torch.e ** -5) - 1))
    assert got[2] == got[3] == pytest.approx(0.8 * (2 / (1 + torch.e ** -10) - 1))
    budget = brain(train_budget_minutes=10)
    budget.train_clock.seconds = 150.0  # 2.5 of 10 minutes
    assert budget.addons[0].progress(budget) == pytest.approx(0.25)
    # without a configured length, the recipe's epochs x episodes per epoch
    recipe = brain(number_of_epochs=4, episodes_per_epoch=5)
    assert recipe.addons[0].total_steps(recipe) == 20


def test_labels_from_any_column_trained_checkpointed_and_recovered(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    b = brain(dann_column="accent", dann_input_size=None, dann_max_domains=4,
              checkpointer=Checkpointer(tmp_path))  # input size inferred on the first forward
    loader = b.make_episode_loader(dataset())
    b.fit(range(1, 2), loader, progressbar=False)
    clf = b.modules["sbmeta_addons"]["dann"]["classifier"]
    assert sorted(clf.domains) == ["north", "south"]
    assert clf.net[0].weight.shape == (256, 8)
    terms = b.loss_term_means()
    assert list(terms) == ["outer_dann_domain"] and terms["outer_dann_domain"] > 0
    assert not any(n.startswith("sbmeta_addons") for n in b.strategy.adapt_names())  # not adapted
    b.checkpointer.save_checkpoint()
    fresh = brain(dann_column="accent", dann_input_size=None, dann_max_domains=4,
                  checkpointer=Checkpointer(tmp_path))
    fresh.checkpointer.recover_if_possible()
    again = fresh.modules["sbmeta_addons"]["dann"]["classifier"]
    assert again.domains == clf.domains  # the label vocabulary comes back with the weights
    torch.testing.assert_close(again.net[0].weight, clf.net[0].weight)


def test_configuration_errors_name_the_key():
    b = brain(dann_column="channel")
    ep = next(iter(b.make_episode_loader(dataset())))
    with pytest.raises(KeyError, match="column 'channel' is not in the manifest; columns are"):
        b.fit_batch(ep)
    too_few = brain(dann_max_domains=1)
    with pytest.raises(ValueError, match="more than dann_max_domains=1 domains"):
        too_few.fit_batch(next(iter(too_few.make_episode_loader(dataset()))))
    with pytest.raises(KeyError, match="'dann_wieght'.*did you mean 'dann_weight'.*dann_column"):
        brain(dann_wieght=0.1)
    with pytest.raises(ValueError, match="dann_phases has unknown phases"):
        brain(dann_phases=["query"])


def test_inner_phase_is_optional():
    outer_only = brain()
    outer_only.fit_batch(next(iter(outer_only.make_episode_loader(dataset()))))
    assert list(outer_only.loss_term_means()) == ["outer_dann_domain"]
    both = brain(dann_phases=["inner", "outer"], meta_strategy="maml")  # second order through the reversal
    both.fit_batch(next(iter(both.make_episode_loader(dataset()))))
    assert list(both.loss_term_means()) == ["inner_dann_domain", "outer_dann_domain"]
