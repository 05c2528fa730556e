"""The plugin contract: plugins written only against it (tests/data/contract_plugins.py,
loaded by path like any YAML ``plugins:`` entry) can add trainable modules and
losses on encoder features, transform support batches, replace the inner
update, post-process fast weights and change what is exported."""

import json
import pathlib
import sys

import pytest
import speechbrain as sb
import torch

from sb_meta.contract import ASRPredictions, Phase
from sb_meta.testing import ToyBrain, toy_dataset, toy_modules
from sb_meta.adapt import Method

HERE = pathlib.Path(__file__).resolve().parents[1]  # tests/
PLUGINS = str(HERE / "data" / "contract_plugins.py")
from helpers import tiny_asr as h

pytestmark = pytest.mark.usefixtures("one_thread")


class FeatToy(ToyBrain):
    """The toy brain, returning the documented predictions structure."""

    def compute_forward(self, batch, stage):
        x = batch.x.data.to(self.device)
        hidden = torch.tanh(self.modules.lin1(x))
        out = self.modules.lin2(hidden)
        return ASRPredictions(out, torch.ones(len(x)), hidden)

    def compute_objectives(self, predictions, batch, stage):
        return ((predictions.log_probs - batch.y.data.to(self.device)) ** 2).mean()


def brain(strategy="fomaml", addons=(), **hp):
    base = dict(meta_strategy=strategy, meta_addons=list(addons), plugins=[PLUGINS],
                k_support=3, k_query=3, meta_batch_tasks=2, inner_steps=2, inner_lr=0.1,
                max_grad_norm=float("inf"), seed=0)
    base.update(hp)
    b = FeatToy(toy_modules(0), lambda p: torch.optim.SGD(p, lr=0.1), hparams=base,
                run_opts={"device": "cpu", "noprogressbar": True})
    b.init_optimizers()
    return b


def seen(b):
    return sys.modules[type(b.addons[0] if b.addons else b.strategy).__module__].SEEN


def episode(b):
    return next(iter(b.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=8))))


def test_an_addon_owns_a_trained_module_and_a_loss_on_encoder_features(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    b = brain(addons=["probe"])
    head = b.modules["sbmeta_addons"]["probe"]["head"]
    assert "sbmeta_addons.probe.head.weight" in dict(b.modules.named_parameters())
    assert all(not n.startswith("sbmeta_addons") for n in b.strategy.adapt_names())  # not adapted
    before = head.weight.detach().clone()
    ep = episode(b)
    b.fit_batch(ep)
    assert not torch.equal(head.weight, before)  # trained by the outer optimizer
    phases = {p for p, _ in seen(b)["loss"]}
    assert phases == {Phase.INNER, Phase.OUTER}
    assert {t for _, t in seen(b)["loss"]} == {t.name for t in ep.tasks}  # told the task
    terms = b.loss_term_means()
    assert list(terms) == ["outer_probe_energy"] and terms["outer_probe_energy"] > 0
    # checkpointed with the brain
    b2 = brain(addons=["probe"], probe_features=8)
    ckpt = Checkpointer(tmp_path, recoverables={"sbmeta_addons": b.modules["sbmeta_addons"]})
    ckpt.save_checkpoint()
    Checkpointer(tmp_path, recoverables={"sbmeta_addons": b2.modules["sbmeta_addons"]}).recover_if_possible()
    assert torch.equal(b2.modules["sbmeta_addons"]["probe"]["head"].weight, head.weight)
    # its options are validated
    with pytest.raises(KeyError, match="probe_wieght.*did you mean 'probe_weight'"):
        brain(addons=["probe"], probe_wieght=1.0)


def test_an_addon_transforms_support_batches_only():
    plain, noisy = brain(), brain(addons=["noisy_support"])
    ep = episode(plain)
    task = ep.tasks[0]
    a = plain.strategy.adapt(task.support, task=task)
    b = noisy.strategy.adapt(task.support, task=task)
    assert not torch.allclose(a["lin1.weight"], b["lin1.weight"])
    assert set(seen(noisy)["transform"]) == {Phase.INNER}
    # the outer (query) forward is unchanged
    q_plain = plain.strategy.forward(a, task.query, Phase.OUTER, task)[0]
    q_noisy = noisy.strategy.forward(a, task.query, Phase.OUTER, task)[0]
    assert torch.equal(q_plain, q_noisy)
    assert Phase.OUTER in seen(noisy)["transform"]
    # the support batch itself was not modified in place
    assert torch.equal(task.support.x.data, episode(plain).tasks[0].support.x.data)


def test_a_strategy_replaces_the_inner_update():
    b = brain("signsgd", inner_steps=1, inner_lr=0.01)
    task = episode(b).tasks[0]
    fast = b.strategy.adapt(task.support, task=task)
    params = b.base_params()
    loss = b.strategy.loss({n: p for n, p in params.items()}, task.support, Phase.INNER, task)
    grads = torch.autograd.grad(loss, list(params.values()))
    for (n, p), g in zip(params.items(), grads):
        torch.testing.assert_close(fast[n], p - 0.01 * torch.sign(g))
    # and meta-trains like any strategy
    assert torch.isfinite(b.fit_batch(episode(b)))


def test_after_adapt_post_processes_fast_weights_in_every_phase():
    b = brain(addons=["clamp"], clamp_value=0.05)
    task = episode(b).tasks[0]
    fast = b.strategy.adapt(task.support, task=task)
    assert all(float(w.detach().abs().max()) <= 0.05 + 1e-12 for w in fast.values())
    b.fit_batch(episode(b))
    assert set(seen(b)["after_adapt"]) == {Phase.INNER}


def test_before_export_changes_the_exported_model_and_its_yaml(tmp_path):
    from sb_meta.adapt import load_model
    from sb_meta.export import export_brain

    csv = h.make_corpus(tmp_path / "corpus")
    trained, yaml_path = h.train_tiny_brain(
        tmp_path / "exp", csv, strategy="fomaml", epochs=1,
        meta={"meta_addons": ["zero_bias"], "plugins": [PLUGINS]},
    )
    biases = [p.detach().clone() for n, p in trained.modules.named_parameters() if n.endswith("bias")]
    out = export_brain(trained, tmp_path / "pretrained", hparams_file=yaml_path)
    text = (out / "hyperparams.yaml").read_text()
    assert "zeroed_biases:" in text
    info = json.loads((out / "sbmeta.json").read_text())
    assert info["zero_bias"] == len(biases)
    asr = h.speechbrain_asr(out)  # SpeechBrain alone loads the changed model
    exported = [p for n, p in asr.mods.named_parameters() if n.endswith("bias")]
    assert exported and all(float(p.abs().max()) == 0 for p in exported)
    # the trained model itself is untouched
    now = [p for n, p in trained.modules.named_parameters() if n.endswith("bias")]
    assert all(torch.equal(a, b) for a, b in zip(now, biases))
    # at test time too: a model adapted with the add-on exports zeroed biases
    from sb_meta.plugins import PluginRegistry

    model = load_model(out, trust=True)  # its sbmeta.json names a plugin file: code, trusted here
    model._registry = PluginRegistry(extra=[PLUGINS])
    row = h.read_rows(csv)[0]
    adapted = model.adapt(([row["wav"]], [row["wrd"]]), Method(steps=1, addons=["zero_bias"], strategy="finetune"))
    again = h.speechbrain_asr(adapted.export(tmp_path / "adapted"))
    assert all(float(p.abs().max()) == 0 for n, p in again.mods.named_parameters() if n.endswith("bias"))
    # and from the command line: an add-on of the model's own (YAML-named) plugins
    from sb_meta.cli import main

    assert main(["adapt", "--model", str(out), "--support", str(csv), "--k", "1", "--steps", "1",
                 "--strategy", "finetune", "--addons", "zero_bias", "--trust-model",
                 "--out", str(tmp_path / "cli")]) == 0
    cli = h.speechbrain_asr(tmp_path / "cli")
    assert all(float(p.abs().max()) == 0 for n, p in cli.mods.named_parameters() if n.endswith("bias"))


def test_a_misspelt_hook_is_an_error_naming_plugin_and_hook(tmp_path):
    from sb_meta.plugins import PluginLoadError, PluginRegistry

    bad = tmp_path / "typo.py"
    bad.write_text(
        "from sb_meta.strategy import AddOn\n"
        "class Typo(AddOn):\n"
        "    name = 'typo'\n"
        "    def sbmeta_inner_los(self, loss):\n"
        "        return loss\n"
        "def sbmeta_addons():\n"
        "    return [Typo]\n"
    )
    with pytest.raises(PluginLoadError, match=r"Typo.*'sbmeta_inner_los'.*not an sb-meta hook"):
        PluginRegistry(extra=[str(bad)])
    module_level = tmp_path / "typo2.py"
    module_level.write_text("def sbmeta_adon():\n    return []\n")
    with pytest.raises(PluginLoadError, match=r"'sbmeta_adon'.*did you mean 'sbmeta_addons'"):
        PluginRegistry(extra=[str(module_level)])
    wrong_args = tmp_path / "typo3.py"
    wrong_args.write_text("def sbmeta_modules(brain, nonsense):\n    return {}\n")
    with pytest.raises(PluginLoadError, match="nonsense"):
        PluginRegistry(extra=[str(wrong_args)])


def test_every_hook_is_called_somewhere_in_the_core():
    """No declared hook is dead: each is called by name in sb_meta/."""
    from sb_meta.hookspecs import hook_names

    core = "\n".join(p.read_text() for p in (h.ROOT / "sb_meta").rglob("*.py") if p.name != "hookspecs.py")
    for name in hook_names():
        assert f'"{name}"' in core, name


def test_predictions_structure_is_the_same_in_training_and_test_time_adaptation(tmp_path):
    from sb_meta.adapt import load_model
    from sb_meta.export import export_brain

    csv = h.make_corpus(tmp_path / "corpus")
    trained, yaml_path = h.train_tiny_brain(tmp_path / "exp", csv, strategy="fomaml", epochs=1)
    wavs, lens = h.file_batch([r["wav"] for r in h.read_rows(csv)[:2]])
    train_pred = h.probe(trained, wavs, lens)
    model = load_model(export_brain(trained, tmp_path / "m", hparams_file=yaml_path))
    from sb_meta.adapt import Method
    from sb_meta.adapt.plan import build_brain, plan

    brain = build_brain(model, model.copy_interface(), plan(model, Method(strategy="finetune", steps=1)))
    from speechbrain.dataio.batch import PaddedBatch

    batch = PaddedBatch([{"id": str(i), "sig": w[: int(round(float(l) * wavs.shape[1]))],
                          "tokens": torch.LongTensor([1])} for i, (w, l) in enumerate(zip(wavs, lens))])
    with torch.no_grad():
        adapt_pred = brain.compute_forward(batch, sb.Stage.TEST)
    assert isinstance(train_pred, ASRPredictions) and isinstance(adapt_pred, ASRPredictions)
    torch.testing.assert_close(adapt_pred.log_probs, train_pred.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adapt_pred.encoder_out, train_pred.encoder_out, rtol=1e-5, atol=1e-5)
    # the model's public forward (what plugins read: a teacher's posteriors, encoder features) is the same
    public = model.predictions(wavs, lens)
    torch.testing.assert_close(public.log_probs, train_pred.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.encoder_features(wavs, lens), train_pred.encoder_out, rtol=1e-5, atol=1e-5)


def _load_error(tmp_path, name, source):
    from sb_meta.plugins import PluginLoadError, PluginRegistry

    path = tmp_path / f"{name}.py"
    path.write_text(source)
    with pytest.raises(PluginLoadError) as info:
        PluginRegistry(entry_points=False, extra=[str(path)])
    message = str(info.value)
    assert "\n" not in message and name in message  # one line, naming the plugin
    return message


def test_a_per_brain_hook_at_module_level_is_refused_at_load(tmp_path):
    """Per-brain hooks are called on a brain's strategy and add-ons only: a module-level
    one would never run, so loading the plugin says where it belongs."""
    message = _load_error(tmp_path, "loose_loss", "def sbmeta_loss(loss):\n    return loss\n")
    assert "per-brain hook sbmeta_loss at module level" in message
    assert "method of the AddOn or Strategy subclass" in message
    # and the registry hooks belong to the module, not to an add-on
    message = _load_error(tmp_path, "nested_registry", (
        "from sb_meta.strategy import AddOn\n"
        "class Nested(AddOn):\n"
        "    name = 'nested'\n"
        "    def sbmeta_addons(self):\n"
        "        return []\n"
        "def sbmeta_addons():\n"
        "    return [Nested]\n"))
    assert "Nested" in message and "sbmeta_addons is called only on plugin modules" in message


@pytest.mark.parametrize("marker", ["tryfirst", "trylast", "wrapper", "hookwrapper"])
def test_ordering_markers_on_per_brain_hooks_are_refused_at_load(tmp_path, marker):
    """Per-brain hooks run in a fixed order (strategy, then meta_addons order), so
    pluggy's ordering markers would be ignored: they are an error instead."""
    message = _load_error(tmp_path, f"marked_{marker}", (
        "from sb_meta.plugins import hookimpl\n"
        "from sb_meta.strategy import AddOn\n"
        "class Marked(AddOn):\n"
        "    name = 'marked'\n"
        f"    @hookimpl({marker}=True)\n"
        "    def sbmeta_loss(self, loss):\n"
        + ("        yield\n" if "wrapper" in marker else "        return None\n")  # pluggy's wrappers yield
        + "def sbmeta_addons():\n"
        "    return [Marked]\n"))
    assert f"sbmeta_loss is marked {marker}" in message and "Marked" in message


def test_ordering_markers_on_registry_hooks_work_as_in_pluggy(tmp_path):
    """sbmeta_addons is called through pluggy, so tryfirst is honoured there."""
    from sb_meta.plugins import PluginRegistry

    path = tmp_path / "early_addons.py"
    path.write_text(
        "from sb_meta.plugins import hookimpl\n"
        "from sb_meta.strategy import AddOn\n"
        "class Early(AddOn):\n"
        "    name = 'early'\n"
        "@hookimpl(tryfirst=True)\n"
        "def sbmeta_addons():\n"
        "    return [Early]\n")
    assert "early" in PluginRegistry(entry_points=False, extra=[str(path)]).addons
