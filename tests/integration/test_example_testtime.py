"""The test-time method example (examples/sbmeta-prior), installed for real with pip into a
temporary target: listed with its distribution by ``sb-meta plugins`` and used by name
only, by ``sb-meta adapt --unsupervised prior`` on a manifest without transcripts, by
``sb-meta evaluate --methods prior`` and in :class:`sb_meta.adapt.Method`."""

import csv
import json

import pytest

from helpers import tiny_asr
from helpers.distributions import example_fixture, run_python

pytestmark = pytest.mark.usefixtures("one_thread")

CODE = """
import doctest, json, sys, sbmeta_prior
from sb_meta.adapt import Method, load_model
from sb_meta.cli import main
main(['plugins', '--json']); print('@@')
assert doctest.testmod(sbmeta_prior).failed == 0
model, data, audio_only, out = sys.argv[1:5]
assert main(['adapt', '--model', model, '--support', audio_only, '--task', 's1', '--k', '3',
             '--unsupervised', 'prior', '--out', out + '/adapted']) == 0
assert main(['evaluate', '--model', model, '--data', data, '--k', '0,1', '--repeats', '1', '--methods',
             'prior,full:finetune', '--steps', '1', '--lr', '0.05', '--quiet', '--out', out + '/report']) == 0
m = load_model(model)
wavs = [m.load_audio(w) for w in sys.argv[5:]]
half = m.adapt((wavs, None), Method(addons=['prior'], addon_config={'prior_rate': 0.25}))
full = m.adapt((wavs, None), 'prior')
print(json.dumps({'half': half.last_adaptation['test_time']['prior']['moved'],
                  'full': full.last_adaptation['test_time']['prior']['moved']}))
"""

installed = example_fixture("sbmeta-prior")


def test_listed_and_used_by_name_from_the_commands_and_method(installed, tmp_path):
    tiny = tiny_asr.exported_tiny_model(tmp_path / "model", epochs=1)
    rows = [{k: v for k, v in r.items() if k != "wrd"} for r in tiny["rows"]]
    audio_only = tmp_path / "audio_only.csv"
    with open(audio_only, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = run_python(CODE, installed, tiny["export"], tiny["csv"], audio_only, tmp_path,
                     *[r["wav"] for r in tiny["rows"][5:8]], timeout=600)
    listing, ran = out.split("@@\n")
    plugins = {r["name"]: r for r in json.loads(listing)["plugins"]}
    assert plugins["prior"]["distribution"] == "sbmeta-prior 0.1.0" and plugins["prior"]["addon_kind"] == "test_time"
    assert "Label prior corrected" in ran
    record = json.loads((tmp_path / "adapted" / "sbmeta.json").read_text())["adaptations"][-1]
    assert record["addons"] == ["prior"] and all(s["transcript"] is None for s in record["support"])
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert "1" in results["summary"]["prior"] and not results["failed"]
    moved = json.loads(ran.strip().splitlines()[-1])
    assert moved["half"] == pytest.approx(moved["full"] / 2, rel=1e-4)
