"""A third-party test-time method, installed through the ``sb_meta.plugins`` entry points
and written only against the contract (:class:`sb_meta.adapt.testtime.TestTimeMethod`,
the model's public API), is used by name in :class:`sb_meta.adapt.Method`, by
``sb-meta adapt`` and by ``sb-meta evaluate``, as the built-in ``entropy``,
``pseudo`` and ``cmvn`` are: the core names none of them."""

import csv
import json

import pytest
import torch

from sb_meta.adapt import Method, Support
from sb_meta.cli import main

from helpers import tiny_asr as helpers
from helpers.distributions import fake_plugin_fixture

pytestmark = pytest.mark.usefixtures("one_thread")

PRIOR_PLUGIN = '''
"""Label-prior correction from audio alone: the CTC head's bias moves against the
log of the mean posterior of each label over the support frames."""
import speechbrain as sb
import torch

from sb_meta.adapt.testtime import TestTimeMethod
from sb_meta.contract import CommandOption

class Prior(TestTimeMethod):
    name = "prior"
    options = {"prior_rate": 0.5}
    command_options = (CommandOption("--unsupervised", "adapt from the audio alone", selects=True),)

    @classmethod
    def reads_transcripts(cls, config):
        return False

    def update(self, run):
        params = run.brain.trainable_params()
        bias = next(n for n in params if n.endswith("ctc_lin.w.bias"))
        wavs, lens = sb.utils.data_utils.batch_pad_right(run.wavs)
        prior = run.model.predictions(wavs, lens).log_probs.exp().mean((0, 1)).clamp_min(1e-6).log()
        old = params[bias].detach()
        new = old - self.number_option("prior_rate", 0.0) * (prior - prior.mean())
        return {bias: new}, {"moved": float((new - old).abs().max())}

    @classmethod
    def describe(cls, log):
        return [f"Label prior corrected (bias moved by {log['moved']:.3f} at most)"]

def sbmeta_addons():
    return [Prior]
'''

exported = helpers.exported_fixture("prior", epochs=1)
prior_installed = fake_plugin_fixture("sbm-prior", "sbm_prior_method", PRIOR_PLUGIN, "prior")


def test_a_third_party_test_time_method_adapts_by_name(exported, prior_installed):
    from sb_meta.adapt import load_model

    assert Method.parse("prior").addons == ["prior"]
    model = load_model(exported["export"])
    wavs = [r["wav"] for r in exported["rows"][5:8]]
    adapted = model.adapt((wavs, None), "prior")
    base = dict(model.named_parameters())
    moved = {n for n, p in adapted.named_parameters() if not torch.equal(p, base[n])}
    assert moved == {"ctc_lin.w.bias"}
    record = adapted.last_adaptation
    assert record["test_time"]["prior"]["moved"] > 0 and record["addons"] == ["prior"]
    assert all(s["transcript"] is None for s in record["support"])  # never read
    half = model.adapt(Support(wavs, ["AB"] * 3), Method(addons=["prior"], addon_config={"prior_rate": 0.25}))
    assert half.last_adaptation["test_time"]["prior"]["moved"] == pytest.approx(
        record["test_time"]["prior"]["moved"] / 2, rel=1e-4)
    with pytest.raises(KeyError, match="unknown add-on 'priors'; available: .*prior"):
        model.adapt((wavs, None), Method(addons=["priors"]))

def test_the_commands_offer_and_use_it(exported, prior_installed, tmp_path, capsys):
    rows = [{k: v for k, v in r.items() if k != "wrd"} for r in exported["rows"]]
    audio_only = tmp_path / "audio_only.csv"
    with open(audio_only, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    argv = ["adapt", "--model", str(exported["export"]), "--support", str(audio_only), "--task", "s1",
            "--k", "3", "--unsupervised", "prior", "--out", str(tmp_path / "adapted")]
    assert main(argv) == 0, capsys.readouterr().err
    assert "Label prior corrected" in capsys.readouterr().out
    record = json.loads((tmp_path / "adapted" / "sbmeta.json").read_text())["adaptations"][-1]
    assert record["addons"] == ["prior"] and "prior" in record["test_time"]
    out = tmp_path / "report"
    assert main(["evaluate", "--model", str(exported["export"]), "--data", str(exported["csv"]), "--k", "0,1",
                 "--repeats", "1", "--methods", "full:finetune", "--unsupervised", "prior", "--steps", "1",
                 "--lr", "0.05", "--quiet", "--out", str(out)]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert [m["addons"] for m in results["config"]["methods"]] == [[], ["prior"]]
    assert {"full", "full-prior"} <= set(results["summary"]) and not results["failed"]
    assert main(["evaluate", "--model", str(exported["export"]), "--data", str(exported["csv"]), "--k", "1",
                 "--repeats", "1", "--methods", "prior", "--quiet", "--out", str(tmp_path / "alone")]) == 0
    alone = json.loads((tmp_path / "alone" / "results.json").read_text())
    assert alone["config"]["methods"][0]["addons"] == ["prior"] and "1" in alone["summary"]["prior"]
