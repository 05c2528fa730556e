"""Plugin discovery: built-ins, third-party entry points, YAML-named plugins, failures."""

import json
import subprocess
import sys

import pytest
import torch

from sb_meta.cli import main
from sb_meta.plugins import PluginLoadError, PluginRegistry, UnknownPluginError
from sb_meta.testing import make_toy_brain, toy_dataset

from helpers.distributions import install_fake_distribution

BUILTIN_STRATEGIES = {"maml", "fomaml", "reptile", "metasgd", "anil", "joint", "finetune"}

GOOD_PLUGIN = '''
import torch
from sb_meta.plugins import hookimpl
from sb_meta.strategy import AddOn, GradientStrategy

CALLS = {"inner": 0, "outer": 0}


class Sign(GradientStrategy):
    """A third-party strategy: plain gradient steps."""
    name = "sign_sgd"


class L2(AddOn):
    """Adds an L2 pull towards zero to inner and outer losses."""
    name = "l2"

    @hookimpl
    def sbmeta_loss(self, predictions, phase):
        CALLS[phase.value] += 1
        return 10.0 * predictions.pow(2).mean() if phase.value == "inner" else None

    @hookimpl
    def sbmeta_adapt_params(self, brain, names):
        return [n for n in names if n.startswith("lin2")]


@hookimpl
def sbmeta_strategies():
    return [Sign]


@hookimpl
def sbmeta_addons():
    return [L2]
'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in ("sbm_good_plugin", "sbm_broken_plugin"):
        sys.modules.pop(mod, None)


def test_builtins_come_from_sb_meta_entry_points():
    registry = PluginRegistry()
    assert BUILTIN_STRATEGIES <= set(registry.strategies)
    for name in BUILTIN_STRATEGIES:
        info = registry.strategies[name]
        assert info.distribution.startswith("sb-meta ")
        assert info.module.startswith("sb_meta_plugins.")


def test_third_party_plugin_is_discovered_with_its_origin(site):
    install_fake_distribution(site, "sbm-good", "sbm_good_plugin", GOOD_PLUGIN, "good")
    registry = PluginRegistry()
    assert registry.strategies["sign_sgd"].distribution == "sbm-good 1.2.3"
    assert registry.addons["l2"].module == "sbm_good_plugin"
    rows = {r["name"]: r for r in registry.listing()}
    assert rows["l2"]["kind"] == "addon" and rows["sign_sgd"]["plugin"] == "good"


def test_addon_hooks_change_the_inner_loop(site):
    install_fake_distribution(site, "sbm-good", "sbm_good_plugin", GOOD_PLUGIN, "good")
    import sbm_good_plugin

    hp = dict(meta_strategy="sign_sgd", inner_steps=2, k_support=3, k_query=3,
              meta_batch_tasks=1, inner_lr=0.1)
    plain = make_toy_brain(hp)
    with_l2 = make_toy_brain(dict(hp, meta_addons=["l2"]))
    assert with_l2.strategy.adapt_names() == ["lin2.weight", "lin2.bias"]
    data = toy_dataset(n_tasks=3, utts_per_task=8)
    task = next(iter(plain.make_episode_loader(data))).tasks[0]
    a = plain.strategy.adapt(task.support, names=["lin2.weight"])
    b = with_l2.strategy.adapt(task.support, names=["lin2.weight"])
    assert sbm_good_plugin.CALLS["inner"] == 2
    assert not torch.allclose(a["lin2.weight"], b["lin2.weight"])
    with_l2.strategy.task_backward(task, 1.0)
    assert sbm_good_plugin.CALLS["outer"] == 1


def test_broken_plugin_error_names_plugin_and_distribution(site):
    install_fake_distribution(
        site, "sbm-broken", "sbm_broken_plugin", "import does_not_exist_anywhere\n", "broken"
    )
    with pytest.raises(PluginLoadError) as err:
        PluginRegistry()
    msg = str(err.value)
    assert "'broken'" in msg and "sbm-broken 1.2.3" in msg and "does_not_exist_anywhere" in msg
    # non-strict listing keeps working and reports it
    registry = PluginRegistry(strict=False)
    assert "broken" in registry.broken and BUILTIN_STRATEGIES <= set(registry.strategies)
    with pytest.raises(UnknownPluginError, match="failed to load: .*sbm-broken"):
        registry.get_strategy("whatever")


def test_plugin_named_in_yaml_by_file(tmp_path):
    path = tmp_path / "my_plugin.py"
    path.write_text(GOOD_PLUGIN.replace("sign_sgd", "yaml_sgd").replace('"l2"', '"l2_yaml"'))
    brain = make_toy_brain(dict(meta_strategy="yaml_sgd", plugins=[str(path)],
                                meta_batch_tasks=1, k_support=2, k_query=2))
    assert brain.registry.strategies["yaml_sgd"].distribution == "local file"
    with pytest.raises(PluginLoadError, match="no such plugin file"):
        PluginRegistry(extra=[str(tmp_path / "missing.py")])


def test_yaml_plugin_by_module_that_does_not_exist():
    with pytest.raises(PluginLoadError, match="'not_a_module_xyz'.*yaml"):
        PluginRegistry(extra=["not_a_module_xyz"])


def test_duplicate_names_are_rejected(tmp_path):
    path = tmp_path / "dup.py"
    path.write_text(GOOD_PLUGIN.replace("sign_sgd", "maml"))
    with pytest.raises(PluginLoadError, match="'maml' .* clashes"):
        PluginRegistry(extra=[str(path)])


def test_cli_plugins_json(capsys):
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in listing["plugins"]}
    assert BUILTIN_STRATEGIES <= names and listing["broken"] == {}


def test_console_script_is_installed():
    exe = __import__("pathlib").Path(sys.executable).parent / "sb-meta"
    out = subprocess.run([str(exe), "plugins", "--json"], capture_output=True, text=True, check=True)
    assert "fomaml" in out.stdout


def test_unknown_cli_command_fails_cleanly(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "invalid choice" in capsys.readouterr().err


def test_hookspecs_are_documented_and_keyword_only():
    import inspect

    from sb_meta import hookspecs

    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("sbmeta_"):
            assert fn.__doc__ and len(fn.__doc__.strip()) > 20, name
