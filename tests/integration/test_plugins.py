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


def _addon_plugin(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text(
        "from sb_meta.contract import CommandOption\n"
        "from sb_meta.strategy import AddOn\n"
        f"class Declared(AddOn):\n    name = {name!r}\n" + body
        + "def sbmeta_addons():\n    return [Declared]\n"
    )
    return str(path)


@pytest.mark.parametrize("body, message", [
    ("    kind = 'adaptor'\n", "has kind 'adaptor'; kinds are adapter, compressor, test_time or None"),
    ("    command_options = ('--x',)\n", "command_options holds '--x', not a sb_meta.contract.CommandOption"),
    ("    command_options = (CommandOption('--x-rate', key='x_rate'),)\n",
     "--x-rate sets 'x_rate', which is not one of its options"),
    ("    command_options = (CommandOption('--compress', activates=True),)\n",
     "declares --compress unlike add-on 'compress' of plugin 'compress'"),
    ("    command_options = (CommandOption('--peft-rank', key='r', parse=float),)\n    options = {'r': 1}\n",
     "declares --peft-rank unlike add-on 'lora'"),
])
def test_what_an_addon_declares_is_checked_at_load(tmp_path, body, message):
    """kind and command_options are part of the contract: a wrong one, or a flag that
    another add-on declares differently, is refused naming the add-on and its plugin."""
    path = _addon_plugin(tmp_path, "declared", body)
    with pytest.raises(PluginLoadError) as info:
        PluginRegistry(extra=[path])
    assert message in str(info.value) and "add-on 'declared' of plugin" in str(info.value)
    assert "\n" not in str(info.value)
    # a non-strict registry (sb-meta plugins, the commands) keeps it aside, the others work
    registry = PluginRegistry(extra=[path], strict=False)
    assert "declared" not in registry.addons and "lora" in registry.addons and registry.broken


def test_an_addon_flag_the_command_already_has_is_an_error_naming_it(tmp_path):
    import argparse

    from sb_meta.adapt.commands import add_commands

    path = _addon_plugin(tmp_path, "greedy", "    command_options = (CommandOption('--k', key='k'),)\n"
                                           "    options = {'k': 1}\n")
    registry = PluginRegistry(extra=[path])
    with pytest.raises(PluginLoadError, match=r"add-on 'greedy' \(plugin .*greedy.py'\) declares --k, "
                                              r"which `sb-meta adapt` already has"):
        add_commands(argparse.ArgumentParser(prog="sb-meta").add_subparsers(), registry)


def test_the_listing_shows_what_each_addon_declares(capsys):
    rows = {r["name"]: r for r in PluginRegistry().listing()}
    assert rows["lora"]["addon_kind"] == "adapter" and "--peft" in rows["lora"]["flags"]
    assert rows["compress"]["addon_kind"] == "compressor" and rows["compress"]["flags"] == ["--compress"]
    assert rows["dann"]["addon_kind"] is None and "addon_kind" not in rows["maml"]
    assert main(["plugins"]) == 0
    assert "(adapter, --peft, --peft-rank, --peft-targets)" in capsys.readouterr().out
