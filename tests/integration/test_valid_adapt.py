"""``valid_adapt``: validation (and so the kept checkpoint) after adaptation."""

import pytest
import speechbrain as sb
import torch

from sb_meta.contract import Phase
from sb_meta.episodes import EpisodeSampler
from sb_meta.functional import functional_objective
from sb_meta.testing import ToyBrain, make_toy_brain, toy_dataset, toy_modules

HP = {"meta_strategy": "fomaml", "k_support": 3, "k_query": 2, "meta_batch_tasks": 2,
      "inner_steps": 3, "inner_lr": 0.2, "valid_adapt": True}


def test_the_query_is_every_utterance_outside_the_support_when_k_query_is_none():
    ds = toy_dataset(n_tasks=3, utts_per_task=7)
    sampler = EpisodeSampler(ds, k_support=3, k_query=None, meta_batch_tasks=1)
    for index, name in enumerate(sampler.task_order(0)):
        support, query = sampler.split(name, 0, index)
        assert len(support) == 3 and len(query) == 4
        assert not set(support) & set(query) and set(support) | set(query) == set(sampler.tasks[name])


def test_validation_tasks_are_every_task_once_with_the_same_draw_each_time():
    brain = make_toy_brain(HP)
    ds = toy_dataset(n_tasks=4, utts_per_task=6)
    loader = brain.make_dataloader(ds, sb.Stage.VALID, ckpt_prefix=None)
    first = [(t.name, t.support_ids, t.query_ids) for e in loader for t in e.tasks]
    assert sorted(n for n, _, _ in first) == ["t0", "t1", "t2", "t3"]
    assert all(len(s) == 3 and len(q) == 3 for _, s, q in first)
    assert [(t.name, t.support_ids, t.query_ids) for e in loader for t in e.tasks] == first
    # without valid_adapt, validation is SpeechBrain's plain batches
    plain = make_toy_brain(dict(HP, valid_adapt=False)).make_dataloader(ds, sb.Stage.VALID, ckpt_prefix=None)
    assert isinstance(plain, torch.utils.data.DataLoader)


def test_each_validation_task_adapts_on_its_support_and_is_scored_on_its_query():
    brain = make_toy_brain(HP)
    brain.modules.eval()
    before = {n: p.detach().clone() for n, p in brain.modules.named_parameters()}
    adapted, unadapted = [], []
    for episode in brain.make_dataloader(toy_dataset(n_tasks=4, utts_per_task=6), sb.Stage.VALID, ckpt_prefix=None):
        with torch.no_grad():  # as SpeechBrain's validation loop runs it
            got = brain.evaluate_batch(episode, sb.Stage.VALID)
        task = episode.tasks[0]
        with torch.enable_grad():
            fast = brain.strategy.adapt(task.support, task=task, phase=Phase.ADAPT)
        with torch.no_grad():
            want = functional_objective(brain, dict(fast), task.query, sb.Stage.VALID)[0]
            plain = brain.compute_objectives(brain.compute_forward(task.query, sb.Stage.VALID),
                                             task.query, sb.Stage.VALID)
        assert torch.allclose(got.double(), want.double().cpu())
        adapted.append(float(want))
        unadapted.append(float(plain))
    assert sum(adapted) < sum(unadapted)  # three steps on each task's support help its query
    for n, p in brain.modules.named_parameters():  # validation never changes the model
        assert torch.equal(p, before[n]), n


class _Logged(ToyBrain):
    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.VALID:
            self.valid_losses = getattr(self, "valid_losses", []) + [stage_loss]


@pytest.mark.parametrize("strategy", ["fomaml", "reptile", "joint"])
def test_fit_validates_the_adapted_models(strategy):
    torch.manual_seed(0)
    hp = dict(HP, meta_strategy=strategy, max_grad_norm=float("inf"), seed=0)
    brain = _Logged(toy_modules(0), lambda params: torch.optim.SGD(params, lr=0.05), hparams=hp,
                    run_opts={"device": "cpu", "noprogressbar": True})
    train, valid = toy_dataset(n_tasks=6, utts_per_task=8), toy_dataset(n_tasks=3, utts_per_task=6, seed=1)
    brain.fit(range(1, 3), brain.make_episode_loader(train), valid_set=valid, progressbar=False)
    assert len(brain.valid_losses) == 2
    brain.modules.eval()
    with torch.no_grad():
        losses = [float(brain.evaluate_batch(e, sb.Stage.VALID))
                  for e in brain.make_dataloader(valid, sb.Stage.VALID, ckpt_prefix=None)]
    assert brain.valid_losses[-1] == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_valid_adapt_needs_a_gradient_inner_loop_and_a_boolean():
    with pytest.raises(ValueError, match="valid_adapt: strategy 'protonet' has no gradient inner loop"):
        make_toy_brain({"meta_strategy": "protonet", "emb_dim": 8, "valid_adapt": True})
    with pytest.raises(ValueError, match="valid_adapt must be True or False, got 'yes'"):
        make_toy_brain(dict(HP, valid_adapt="yes"))


def test_a_validation_dataloader_cannot_silently_skip_the_adaptation():
    brain = make_toy_brain(HP)
    ds = toy_dataset(n_tasks=3, utts_per_task=6)
    loader = sb.dataio.dataloader.make_dataloader(ds, batch_size=4)  # SpeechBrain leaves a DataLoader as it is
    with pytest.raises(ValueError, match="valid_adapt: the validation set arrived as plain batches"):
        brain.fit(range(1, 2), brain.make_episode_loader(toy_dataset()), valid_set=loader, progressbar=False)
