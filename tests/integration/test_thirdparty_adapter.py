"""A third-party adapter add-on, installed through the ``sb_meta.plugins`` entry
points and written only against the contract (``AddOn.kind``,
``CommandOption``, the hooks), is offered by ``sb-meta adapt`` and
``sb-meta evaluate`` and by :class:`sb_meta.evaluation.Method` exactly as the
built-in adapters are: the core names no add-on."""

import json

import pytest
import torch

from sb_meta.cli import main

from helpers import tiny_asr as helpers
from helpers.distributions import fake_plugin_fixture

pytestmark = pytest.mark.usefixtures("one_thread")

SHIFT_PLUGIN = '''
"""Learned offsets on the CTC head's outputs: only they adapt, and they fold
into the layer's bias on export (a plain SpeechBrain folder)."""
import torch

from sb_meta.contract import CommandOption
from sb_meta.strategy import AddOn

class Shifted(torch.nn.Module):
    def __init__(self, linear, init):
        super().__init__()
        self.linear = linear
        w = linear.weight
        self.shift = torch.nn.Parameter(torch.full((linear.out_features,), float(init),
                                                   dtype=w.dtype, device=w.device))

    def forward(self, x):
        return self.linear(x) + self.shift

def _replace(root, name, new):
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)

def _folded(module):
    lin = module.linear
    out = torch.nn.Linear(lin.in_features, lin.out_features).to(lin.weight.device, lin.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(lin.weight)
        out.bias.copy_((lin.bias if lin.bias is not None else 0) + module.shift)
    return out

class Shift(AddOn):
    """Output offsets on the CTC head; only they adapt."""

    name = "shift"
    kind = "adapter"
    options = {"shift_init": 0.0}
    command_options = (
        CommandOption("--peft", selects=True, help="an adapter to adapt alone"),
        CommandOption("--shift-init", key="shift_init", parse=float, help="initial offset"),
    )

    def __init__(self, brain, config):
        super().__init__(brain, config)
        for name, module in list(brain.modules.named_modules()):
            if isinstance(module, torch.nn.Linear) and name.endswith("ctc_lin.w"):
                _replace(brain.modules, name, Shifted(module, self.option("shift_init")))

    @staticmethod
    def _names(brain):
        return [n for n, _ in brain.modules.named_parameters() if n.endswith(".shift")]

    def sbmeta_adapt_params(self, brain, names):
        return [n for n in names if n in set(self._names(brain))]

    def sbmeta_adapter_state(self, brain):
        params = dict(brain.modules.named_parameters())
        return {n: params[n].detach() for n in self._names(brain)}

    def sbmeta_load_adapter_state(self, brain, state):
        params = dict(brain.modules.named_parameters())
        with torch.no_grad():
            for n in self._names(brain):
                params[n].copy_(state[n])
        return self._names(brain)

    def sbmeta_before_export(self, brain, plan):
        for obj in plan.loadables.values():
            if isinstance(obj, torch.nn.Module):
                for name, module in [(n, m) for n, m in obj.named_modules() if isinstance(m, Shifted)]:
                    _replace(obj, name, _folded(module))

def sbmeta_addons():
    return [Shift]
'''

exported = helpers.exported_fixture("shift", epochs=1)
shift_installed = fake_plugin_fixture("sbm-shift", "sbm_shift_adapter", SHIFT_PLUGIN, "shift")


def test_the_adapt_command_offers_and_uses_a_third_party_adapter(exported, shift_installed, tmp_path, capsys):
    from sb_meta.adapt import load_model

    with pytest.raises(SystemExit):
        main(["adapt", "--help"])
    assert "{lora,houlsby,lhuc,shift}" in capsys.readouterr().out.replace("\n", "")
    argv = ["adapt", "--model", str(exported["export"]), "--support", str(exported["csv"]), "--k", "2",
            "--steps", "2", "--lr", "0.05", "--task", "s0", "--peft", "shift", "--shift-init", "0.25"]
    assert main(argv + ["--out", str(tmp_path / "merged")]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "merged" / "sbmeta.json").read_text())["adaptations"][-1]
    assert record["addons"] == ["shift"] and record["addon_config"] == {"shift_init": 0.25}
    assert record["strategy"] == "finetune"  # as for any adapter
    # folded into the bias: SpeechBrain alone loads it, only the head's bias moved
    base = dict(load_model(exported["export"]).named_parameters())
    merged = dict(helpers.speechbrain_asr(tmp_path / "merged").mods.named_parameters())
    assert not any("shift" in n for n in merged)
    assert torch.equal(merged["encoder.ctc_lin.w.weight"], base["ctc_lin.w.weight"])
    assert not torch.allclose(merged["encoder.ctc_lin.w.bias"], base["ctc_lin.w.bias"])
    # exported alone, and applied again on the base model
    assert main(argv + ["--adapters-only", "--out", str(tmp_path / "alone")]) == 0, capsys.readouterr().err
    assert "Exported the adapters only" in capsys.readouterr().out
    params = dict(load_model(exported["export"], adapters=tmp_path / "alone").named_parameters())
    assert params["ctc_lin.w.shift"].shape == base["ctc_lin.w.bias"].shape

def test_method_and_the_evaluate_command_take_a_third_party_adapter_by_name(exported, shift_installed,
                                                                             tmp_path, capsys):
    from sb_meta.evaluation import Method, methods_from

    method = Method.parse("shift")
    assert (method.name, method.strategy, method.addons) == ("shift", "finetune", ["shift"])
    assert [m.addons for m in methods_from(["shift", "lora", "full:finetune"])] == [["shift"], ["lora"], []]
    out = tmp_path / "report"
    assert main(["evaluate", "--model", str(exported["export"]), "--data", str(exported["csv"]),
                 "--k", "0,1", "--repeats", "1", "--methods", "shift,full:finetune", "--steps", "1",
                 "--lr", "0.05", "--quiet", "--out", str(out)]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert {"shift", "full"} <= set(results["summary"]) and "1" in results["summary"]["shift"]
    assert not results["failed"]

def test_without_the_installation_it_is_no_choice(exported, tmp_path, capsys):
    from sb_meta.evaluation import Method

    assert Method.parse("shift").addons == []  # a strategy name then, as before
    with pytest.raises(SystemExit):
        main(["adapt", "--model", str(exported["export"]), "--support", str(exported["csv"]),
              "--peft", "shift", "--out", str(tmp_path / "x")])
    assert "invalid choice: 'shift'" in capsys.readouterr().err
