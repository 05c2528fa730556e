"""The meta_lstm strategy: a learned coordinate-wise LSTM optimizer for the inner loop."""

import pytest
import torch

from sb_meta.contract import Phase
from sb_meta.testing import make_toy_brain, toy_dataset

from helpers import tiny_asr
from sb_meta.adapt import Method

pytestmark = pytest.mark.usefixtures("one_thread")

LR = 0.3


def hp(strategy, **kw):
    out = dict(meta_strategy=strategy, inner_steps=3, inner_lr=LR, k_support=3, k_query=3,
               meta_batch_tasks=1, meta_lstm_hidden=4)
    out.update(kw)
    return out


def first_task(brain):
    loader = brain.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=8))
    return next(iter(loader)).tasks[0]


@pytest.mark.parametrize("first_order", [False, True])
def test_the_optimizer_parameters_receive_meta_gradients(first_order):
    brain = make_toy_brain(hp("meta_lstm", first_order=first_order))
    names = [n for n in brain.trainable_params() if n.startswith("sbmeta_meta_lstm.")]
    assert {n.split(".")[1] for n in names} == {"cell", "input_gate", "forget_gate"}
    brain.strategy.task_backward(first_task(brain), 1.0)
    params = brain.trainable_params()
    for name in names:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    # the model's own initial weights get their meta-gradient too
    assert params["lin1.weight"].grad.abs().sum() > 0


def test_first_order_keeps_every_step_of_the_update_rule_in_the_graph():
    # with one inner step or three, the input gate's bias gets a gradient from each step
    grads = {}
    for steps in (1, 3):
        brain = make_toy_brain(hp("meta_lstm", first_order=True, inner_steps=steps))
        brain.strategy.task_backward(first_task(brain), 1.0)
        grads[steps] = brain.trainable_params()["sbmeta_meta_lstm.input_gate.bias"].grad.clone()
    assert not torch.allclose(grads[1], grads[3])


def test_an_lstm_fixed_to_minus_lr_g_reproduces_plain_gradient_steps():
    lstm = make_toy_brain(hp("meta_lstm"))
    lstm.strategy.net.fix_to_sgd(LR)
    sgd = make_toy_brain(hp("maml"))
    task = first_task(sgd)
    fast_lstm = lstm.strategy.adapt(task.support, task=task)
    fast_sgd = sgd.strategy.adapt(task.support, task=task)
    assert list(fast_lstm) == list(fast_sgd)
    for name in fast_sgd:
        assert torch.allclose(fast_lstm[name], fast_sgd[name], rtol=0, atol=1e-12), name
    # and the second-order meta-gradient of the model's weights is MAML's
    lstm.strategy.task_backward(task, 1.0)
    sgd.strategy.task_backward(task, 1.0)
    for name, p in sgd.base_params().items():
        assert torch.allclose(lstm.base_params()[name].grad, p.grad, atol=1e-10), name


def test_outer_steps_change_the_optimizer_and_lower_the_query_loss():
    brain = make_toy_brain(hp("meta_lstm", meta_batch_tasks=2), lr=0.05, opt="adam")
    loader = brain.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=8))
    before = {n: p.detach().clone() for n, p in brain.trainable_params().items() if n.startswith("sbmeta_")}
    losses = []
    for epoch in range(6):
        loader.set_epoch(epoch)
        for episode in loader:
            losses.append(float(brain.fit_batch(episode)))
    after = brain.trainable_params()
    assert any(not torch.allclose(before[n], after[n]) for n in before)
    assert sum(losses[-4:]) < sum(losses[:4])


def test_test_time_adaptation_runs_without_a_graph():
    brain = make_toy_brain(hp("meta_lstm"))
    brain.modules.eval()  # as sb-meta adapt runs it
    task = first_task(brain)
    fast = brain.strategy.adapt(task.support, task=task, phase=Phase.ADAPT)
    assert all(w.grad_fn is None for w in fast.values())


def test_the_optimizer_is_checkpointed_with_the_model(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    brain = make_toy_brain(hp("meta_lstm"), checkpointer=Checkpointer(tmp_path))
    net = brain.modules["sbmeta_meta_lstm"]
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    brain.checkpointer.save_checkpoint()
    with torch.no_grad():
        net.input_gate.bias.add_(1.0)
    brain.checkpointer.recover_if_possible()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())


def test_bad_keys_are_named():
    with pytest.raises(ValueError, match="meta_lstm_hidden"):
        make_toy_brain(hp("meta_lstm", meta_lstm_hidden=0))
    with pytest.raises(ValueError, match="0 < inner_lr < 1"):
        make_toy_brain(hp("meta_lstm", inner_lr=2.0))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from sb_meta.export import export_brain

    folder = tmp_path_factory.mktemp("meta_lstm_asr")
    csv = tiny_asr.make_corpus(folder / "data")
    brain, yaml_path = tiny_asr.train_tiny_brain(folder / "exp", csv, strategy="meta_lstm", epochs=1,
                                                 meta={"meta_lstm_hidden": 3})
    out = export_brain(brain, folder / "pretrained", hparams_file=yaml_path)
    return brain, out, csv


def test_the_optimizer_is_exported_and_used_by_sb_meta_adapt(exported, tmp_path, capsys):
    from sb_meta.adapt import load_model
    from sb_meta.cli import main

    brain, out, csv = exported
    model = load_model(out)
    assert model.state_strategy == "meta_lstm" and model.default_strategy == "meta_lstm"
    trained = brain.strategy.export_state()
    assert set(model.meta_state) == set(trained) and trained["meta_lstm.cell.weight_hh"].shape[1] == 3
    for key, value in trained.items():
        assert torch.equal(model.meta_state[key], value)
    rows = tiny_asr.read_rows(csv)[:2]
    adapted = model.adapt(([r["wav"] for r in rows], [r["wrd"] for r in rows]), Method(strategy="meta_lstm", steps=2))
    assert adapted.last_adaptation["strategy"] == "meta_lstm"
    assert adapted.last_adaptation["lr"] == "meta-learned"
    changed = [n for (n, a), (_, b) in zip(model.named_parameters(), adapted.named_parameters())
               if not torch.equal(a, b)]
    assert changed  # the learned optimizer moved the weights
    assert main(["adapt", "--model", str(out), "--support", str(csv), "--k", "2", "--steps", "2",
                 "--strategy", "meta_lstm", "--out", str(tmp_path / "adapted")]) == 0
    assert "with meta_lstm" in capsys.readouterr().out


def test_a_model_without_the_optimizer_cannot_adapt_with_it(tmp_path):
    from sb_meta.adapt import load_model
    from sb_meta.export import export_brain

    csv = tiny_asr.make_corpus(tmp_path / "data")
    brain, yaml_path = tiny_asr.train_tiny_brain(tmp_path / "exp", csv, strategy="fomaml", epochs=1)
    model = load_model(export_brain(brain, tmp_path / "pretrained", hparams_file=yaml_path))
    rows = tiny_asr.read_rows(csv)[:2]
    with pytest.raises(ValueError, match="does not have"):
        model.adapt(([r["wav"] for r in rows], [r["wrd"] for r in rows]), Method(strategy="meta_lstm"))
