"""Correctness of the built-in strategies on a tiny float64 model.

Every reference below is computed independently of sb-meta's machinery, with
``torch.nn.functional`` on plain parameter dicts.
"""

import pytest
import speechbrain as sb
import torch
import torch.nn.functional as F

from sb_meta.functional import UnsupportedModuleError
from sb_meta.plugins import UnknownPluginError
from sb_meta.testing import ToyBrain, make_toy_brain, toy_dataset, toy_modules

INNER_LR = 0.3


def ref_loss(p, batch):
    x, y = batch.x.data, batch.y.data
    h = torch.tanh(F.linear(x, p["lin1.weight"], p["lin1.bias"]))
    return ((F.linear(h, p["lin2.weight"], p["lin2.bias"]) - y) ** 2).mean()


def sgd_steps(theta, batches, steps, create_graph):
    fast = dict(theta)
    for s in range(steps):
        loss = ref_loss(fast, batches[s % len(batches)])
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
        fast = {n: w - INNER_LR * g for (n, w), g in zip(fast.items(), grads)}
        if not create_graph:
            fast = {n: w.detach().requires_grad_() for n, w in fast.items()}
    return fast


def first_task(brain, **sampler):
    loader = brain.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=8), **sampler)
    return next(iter(loader)).tasks[0], loader


def hp(strategy, **kw):
    out = dict(meta_strategy=strategy, inner_steps=2, inner_lr=INNER_LR, k_support=3,
               k_query=3, meta_batch_tasks=1)
    out.update(kw)
    return out


def grads_of(brain):
    return {n: p.grad.detach().clone() for n, p in brain.base_params().items()}


def theta_of(brain):
    return {n: p.detach().clone().requires_grad_() for n, p in brain.base_params().items()}


def test_maml_meta_gradient_matches_finite_differences():
    brain = make_toy_brain(hp("maml"))
    task, _ = first_task(brain)
    theta = theta_of(brain)
    brain.strategy.task_backward(task, 1.0)
    grad = grads_of(brain)

    def meta_objective(th):
        th = {n: t.detach().requires_grad_() for n, t in th.items()}
        fast = sgd_steps(th, [task.support], 2, create_graph=False)
        return float(ref_loss(fast, task.query).detach())

    gen = torch.Generator().manual_seed(0)
    eps = 1e-6
    for _ in range(3):
        d = {n: torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in theta.items()}
        plus = meta_objective({n: theta[n] + eps * d[n] for n in theta})
        minus = meta_objective({n: theta[n] - eps * d[n] for n in theta})
        fd = (plus - minus) / (2 * eps)
        analytic = sum(float((grad[n] * d[n]).sum()) for n in theta)
        assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_fomaml_is_maml_with_detached_inner_gradients():
    brain = make_toy_brain(hp("fomaml"))
    task, _ = first_task(brain)
    theta = theta_of(brain)
    brain.strategy.task_backward(task, 1.0)
    fomaml = grads_of(brain)

    fast = sgd_steps(theta, [task.support], 2, create_graph=False)
    expected = torch.autograd.grad(ref_loss(fast, task.query), list(fast.values()))
    for (n, _), g in zip(fast.items(), expected):
        torch.testing.assert_close(fomaml[n], g, rtol=1e-10, atol=1e-12)

    # and it differs from the exact second-order gradient (the test can fail)
    maml = make_toy_brain(hp("maml"))
    maml.strategy.task_backward(first_task(maml)[0], 1.0)
    assert any(not torch.allclose(grads_of(maml)[n], fomaml[n]) for n in fomaml)


def test_reptile_update_is_theta_minus_adapted_theta():
    brain = make_toy_brain(hp("reptile", inner_steps=3))
    task, _ = first_task(brain)
    theta = theta_of(brain)
    brain.strategy.task_backward(task, 0.5)
    adapted = sgd_steps(theta, [task.support, task.query], 3, create_graph=False)
    for n in theta:
        torch.testing.assert_close(grads_of(brain)[n], 0.5 * (theta[n] - adapted[n]).detach())
    # an outer SGD step of 1 on weight 1 lands exactly on the adapted weights
    brain2 = make_toy_brain(hp("reptile", inner_steps=3), lr=1.0)
    episode = next(iter(brain2.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=8))))
    brain2.fit_batch(episode)
    for n, p in brain2.base_params().items():
        torch.testing.assert_close(p.detach(), adapted[n].detach())


@pytest.mark.parametrize("first_order", [False, True])
def test_metasgd_step_sizes_get_gradients_and_learn(first_order):
    brain = make_toy_brain(hp("metasgd", first_order=first_order))
    lrs = brain.strategy.lrs
    assert set(lrs) == {n.replace(".", "__") for n in brain.base_params()}
    task, loader = first_task(brain)
    brain.strategy.task_backward(task, 1.0)
    for key, p in lrs.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, key
    before = {k: p.detach().clone() for k, p in lrs.items()}
    brain.zero_grad(set_to_none=True)
    brain.fit_batch(next(iter(loader)))
    assert any(not torch.equal(before[k], p.detach()) for k, p in lrs.items())
    # the step sizes are used by adapt(): scaling them changes the fast weights
    fast1 = brain.strategy.adapt(task.support)
    with torch.no_grad():
        for p in lrs.values():
            p.mul_(2)
    fast2 = brain.strategy.adapt(task.support)
    assert not torch.allclose(fast1["lin1.weight"], fast2["lin1.weight"])


def test_metasgd_first_order_matches_hand_computation():
    brain = make_toy_brain(hp("metasgd", first_order=True, inner_steps=1))
    task, _ = first_task(brain)
    theta = theta_of(brain)
    alpha = {n: torch.full_like(t, INNER_LR, requires_grad=True) for n, t in theta.items()}
    g = torch.autograd.grad(ref_loss(theta, task.support), list(theta.values()))
    fast = {n: theta[n].detach() - alpha[n] * gi.detach() for (n, _), gi in zip(theta.items(), g)}
    query = ref_loss(fast, task.query)
    d_alpha = torch.autograd.grad(query, list(alpha.values()))
    brain.strategy.task_backward(task, 1.0)
    for (n, _), ga in zip(alpha.items(), d_alpha):
        torch.testing.assert_close(brain.strategy.lrs[n.replace(".", "__")].grad, ga)


def test_anil_adapts_only_selected_parameters_but_trains_all():
    brain = make_toy_brain(hp("anil", adapt_params=["lin2.*"]))
    task, _ = first_task(brain)
    fast = brain.strategy.adapt(task.support)
    assert sorted(fast) == ["lin2.bias", "lin2.weight"]
    brain.strategy.task_backward(task, 1.0)
    assert brain.modules.lin1.weight.grad.abs().sum() > 0

    # exact second order on the head, first order nowhere: compare to reference
    theta = theta_of(brain)
    head = {n: theta[n] for n in ("lin2.weight", "lin2.bias")}
    for _ in range(2):
        p = dict(theta, **head)
        grads = torch.autograd.grad(ref_loss(p, task.support), list(head.values()), create_graph=True)
        head = {n: w - INNER_LR * g for (n, w), g in zip(head.items(), grads)}
    expected = torch.autograd.grad(ref_loss(dict(theta, **head), task.query), list(theta.values()))
    for (n, _), g in zip(theta.items(), expected):
        torch.testing.assert_close(grads_of(brain)[n], g)


def test_anil_default_patterns_name_the_parameters_when_nothing_matches():
    brain = make_toy_brain(hp("anil"))
    with pytest.raises(ValueError, match="lin1.weight"):
        brain.strategy.adapt_names()


class PlainToy(sb.Brain):
    compute_forward = ToyBrain.compute_forward
    compute_objectives = ToyBrain.compute_objectives


@pytest.mark.parametrize(
    "strategy,pooled,batchnorm",
    [("joint", False, False), ("finetune", False, False), ("joint", True, True)],
)
def test_joint_equals_plain_speechbrain_training_on_the_pooled_batch(strategy, pooled, batchnorm):
    # per-task micro-batches (the default) give the pooled mean loss exactly
    # when nothing couples utterances; joint_pooled forwards one pooled batch
    # (so it matches even through BatchNorm's batch statistics)
    extra = {"joint_pooled": True} if pooled else {}
    brain = make_toy_brain(hp(strategy, meta_batch_tasks=2, **extra), lr=0.05, batchnorm=batchnorm)
    loader = brain.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=8))
    episode = next(iter(loader))
    ids = [i for t in episode.tasks for i in t.support_ids + t.query_ids]
    plain = PlainToy(
        toy_modules(0, batchnorm=batchnorm),
        lambda params: torch.optim.SGD(params, lr=0.05),
        hparams={"max_grad_norm": float("inf")},
        run_opts={"device": "cpu"},
    )
    plain.init_optimizers()
    plain_loss = plain.fit_batch(loader.collate(ids))
    joint_loss = brain.fit_batch(episode)
    torch.testing.assert_close(joint_loss, plain_loss)
    for (n, p), q in zip(brain.base_params().items(), plain.modules.parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_joint_per_task_batches_differ_from_pooled_only_through_batchnorm():
    # guards the default against silently pooling: with BatchNorm the two differ
    losses = {}
    for pooled in (False, True):
        brain = make_toy_brain(hp("joint", meta_batch_tasks=2, joint_pooled=pooled), batchnorm=True)
        episode = next(iter(brain.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=8))))
        losses[pooled] = brain.fit_batch(episode)
    assert not torch.allclose(losses[False], losses[True])


def test_inner_loop_leaves_batchnorm_statistics_alone():
    brain = make_toy_brain(hp("maml"), batchnorm=True)
    task, _ = first_task(brain)
    bn = brain.modules.bn
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    brain.strategy.adapt(task.support, steps=3)
    for k, v in bn.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    brain.strategy.task_backward(task, 1.0)  # the query forward updates them once
    assert int(bn.num_batches_tracked) == int(before["num_batches_tracked"]) + 1
    assert not torch.equal(bn.running_mean, before["running_mean"])


def test_reptile_updates_statistics_once_per_task():
    brain = make_toy_brain(hp("reptile", inner_steps=3), batchnorm=True)
    task, _ = first_task(brain)
    bn = brain.modules.bn
    before = int(bn.num_batches_tracked)
    brain.strategy.task_backward(task, 1.0)
    assert int(bn.num_batches_tracked) == before + 1


class NormToy(ToyBrain):
    def compute_forward(self, batch, stage):
        x = self.modules.norm(batch.x.data.unsqueeze(1), torch.ones(len(batch.x.data)))
        h = torch.tanh(self.modules.lin1(x.squeeze(1)))
        return self.modules.lin2(h)


def test_inner_loop_leaves_input_normalization_statistics_alone():
    from speechbrain.processing.features import InputNormalization

    mods = toy_modules(0)
    mods["norm"] = InputNormalization(norm_type="global")
    brain = NormToy(mods, lambda p: torch.optim.SGD(p, 0.1), hparams=hp("fomaml"),
                    run_opts={"device": "cpu"})
    brain.modules.train()
    task, _ = first_task(brain)
    brain.strategy.task_backward(task, 1.0)  # initialises the statistics
    norm = brain.modules.norm
    count, mean = norm.count, norm.glob_mean.clone()
    brain.strategy.adapt(task.support, steps=3)
    assert norm.count == count
    torch.testing.assert_close(norm.glob_mean, mean)


def test_jit_modules_get_a_clear_error():
    mods = toy_modules(0)
    mods["lin1"] = torch.jit.script(mods["lin1"])
    with pytest.raises(UnsupportedModuleError, match="'lin1' is a JIT-scripted"):
        ToyBrain(mods, None, hparams=hp("maml"), run_opts={"device": "cpu"})


@pytest.mark.parametrize("strategy,weight", [("fomaml", 0.7), ("reptile", 0.1)])
def test_outer_joint_weight_adds_the_joint_gradient_of_the_unadapted_model(strategy, weight):
    # the meta-gradient of an episode plus weight x the gradient of the mean loss of
    # the unadapted weights over every task's support and query utterances
    brain = make_toy_brain(hp(strategy, meta_batch_tasks=2, outer_joint_weight=weight))
    loader = brain.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=8))
    episode = next(iter(loader))
    theta = theta_of(brain)
    brain.strategy.episode_backward(episode)
    got = grads_of(brain)

    expected = {n: torch.zeros_like(t) for n, t in theta.items()}
    for task in episode.tasks:
        if strategy == "fomaml":
            fast = sgd_steps(theta, [task.support], 2, create_graph=False)
            meta = dict(zip(fast, torch.autograd.grad(ref_loss(fast, task.query), list(fast.values()))))
        else:
            fast = sgd_steps(theta, [task.support, task.query], 2, create_graph=False)
            meta = {n: (theta[n] - fast[n]).detach() for n in theta}
        for n in theta:
            expected[n] += meta[n] / len(episode.tasks)
    pooled = loader.collate([i for t in episode.tasks for i in t.support_ids + t.query_ids])
    joint = torch.autograd.grad(ref_loss(theta, pooled), list(theta.values()))
    for n, g in zip(theta, joint):
        torch.testing.assert_close(got[n], expected[n] + weight * g, msg=n)
    # and without the key the joint term is absent (the test can fail)
    plain = make_toy_brain(hp(strategy, meta_batch_tasks=2))
    plain.strategy.episode_backward(next(iter(plain.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=8)))))
    assert any(not torch.allclose(grads_of(plain)[n], got[n]) for n in got)


@pytest.mark.parametrize("value", [-1.0, "a lot"])
def test_outer_joint_weight_must_be_a_non_negative_number(value):
    with pytest.raises(ValueError, match=r"outer_joint_weight must be a number >= 0, got"):
        make_toy_brain(hp("fomaml", outer_joint_weight=value))


def test_outer_joint_weight_is_refused_by_strategies_that_do_not_use_it():
    with pytest.raises(ValueError, match="strategy 'joint' does not use it"):
        make_toy_brain(hp("joint", outer_joint_weight=1.0))


def test_unknown_strategy_lists_the_available_ones():
    with pytest.raises(UnknownPluginError, match="unknown strategy 'mamll'; available: .*maml"):
        make_toy_brain(hp("mamll"))


def test_near_miss_meta_key_is_an_error():
    with pytest.raises(KeyError, match="did you mean 'inner_lr'"):
        make_toy_brain(dict(hp("maml"), inner_lrr=0.1))


def test_fit_batch_rejects_plain_batches():
    brain = make_toy_brain(hp("fomaml"))
    loader = brain.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=8))
    with pytest.raises(TypeError, match="make_episode_loader"):
        brain.fit_batch(loader.collate(["t0_000"]))


@pytest.mark.parametrize(
    "strategy", ["maml", "fomaml", "reptile", "metasgd", "anil", "joint", "finetune"]
)
def test_every_strategy_lowers_the_training_loss(strategy):
    kw = {"adapt_params": ["lin2.*"]} if strategy == "anil" else {}
    brain = make_toy_brain(hp(strategy, meta_batch_tasks=2, **kw), lr=0.01, opt="adam")
    data = toy_dataset(n_tasks=6, utts_per_task=8)
    loader = brain.make_episode_loader(data, episodes_per_epoch=10)

    # the training objective of every strategy: query loss after adapting on the support
    fixed = list(brain.make_episode_loader(data, seed=99, episodes_per_epoch=3))

    def query_loss():
        total = 0.0
        for episode in fixed:
            for task in episode.tasks:
                fast = brain.strategy.adapt(task.support)
                with torch.no_grad():
                    total += float(ref_loss(dict(brain.base_params(), **fast), task.query))
        return total

    before = query_loss()
    brain.fit(range(1, 4), loader, progressbar=False)
    assert query_loss() < before


def test_second_order_inner_loops_switch_onednn_off_in_rnns_only():
    # differentiating oneDNN's LSTM backward is what made CPU MAML 10-20x slower;
    # convolutions and linear layers keep oneDNN, first-order loops keep it everywhere
    brain = make_toy_brain(hp("maml"))
    lstm, lin = torch.nn.LSTM(3, 4, batch_first=True), torch.nn.Linear(3, 3)
    brain.modules.add_module("rnn", lstm)
    seen = []
    for name, m in (("rnn", lstm), ("lin", lin)):
        m.register_forward_hook(lambda mod, a, o, name=name: seen.append(
            (name, torch._C._get_mkldnn_enabled())))
    before = torch._C._get_mkldnn_enabled()
    for create_graph in (True, False):
        with brain.inner_loop_context(create_graph):
            lstm(torch.randn(2, 5, 3))
            lin(torch.randn(2, 3))
    assert seen == [("rnn", False), ("lin", before), ("rnn", before), ("lin", before)]
    assert torch._C._get_mkldnn_enabled() == before
    # an error inside an RNN forward leaves the setting as it was
    with pytest.raises(RuntimeError):
        with brain.inner_loop_context(True):
            lstm(torch.randn(2, 5, 7))
    assert torch._C._get_mkldnn_enabled() == before
    lstm(torch.randn(2, 5, 3))  # hooks removed: no more records from our context
    assert seen[-1] == ("rnn", before)
    # modules= applies the choice to copies the brain does not hold (higher's patched modules)
    copy = torch.nn.LSTM(3, 4, batch_first=True)
    copy.register_forward_hook(lambda mod, a, o: seen.append(("copy", torch._C._get_mkldnn_enabled())))
    with brain.inner_loop_context(True, modules=torch.nn.ModuleList([copy])):
        copy(torch.randn(2, 5, 3))
        lstm(torch.randn(2, 5, 3))
    assert seen[-2:] == [("copy", False), ("rnn", before)]
