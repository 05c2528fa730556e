"""The compress add-on: pruning reaches the requested sparsity and stays after
export; int8 exports load through SpeechBrain's own from_hparams and
transcribe; ``sb-meta adapt --compress``; the size / speed / WER report."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sb_meta.utils import load_script

from helpers import tiny_asr as h

pytestmark = pytest.mark.usefixtures("one_thread")
import sb_meta_plugins.compress as COMPRESS  # noqa: E402  (the installed built-in plugin)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CRDNN-CTC recipe brain (LSTM + linear layers) trained with the
    compress add-on active, its YAML and its corpus."""
    tmp = tmp_path_factory.mktemp("compress")
    csv = h.make_corpus(tmp / "corpus")
    brain, yaml_path = h.train_tiny_brain(tmp / "exp", csv, strategy="fomaml", epochs=1,
                                          meta={"meta_addons": ["compress"]})
    return brain, yaml_path, csv


def sparsity(module):
    weights = [getattr(sub, name) for sub, name, _ in COMPRESS.prunable_weights(module)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights), weights


def export_with(brain, yaml_path, folder, prune=0.0, scope="global", int8=True, layers=("Linear", "LSTM", "GRU")):
    """Export ``brain`` through its compress add-on, set as given."""
    from sb_meta.export import export_brain

    (addon,) = brain.addons
    addon.prune, addon.scope, addon.int8, addon.int8_layers = prune, scope, int8, list(layers)
    return export_brain(brain, folder, hparams_file=yaml_path)


@pytest.mark.parametrize("scope,amount", [("global", 0.5), ("layer", 0.8)])
def test_pruning_reaches_the_sparsity_and_it_stays_after_export(trained, tmp_path, scope, amount):
    brain, yaml_path, _ = trained
    before = {n: p.detach().clone() for n, p in brain.modules.named_parameters()}
    out = export_with(brain, yaml_path, tmp_path / "pruned", prune=amount, scope=scope, int8=False)
    asr = h.speechbrain_asr(out)  # SpeechBrain alone loads it
    model = asr.hparams.pretrainer.loadables["model"]
    achieved, weights = sparsity(model)
    assert achieved == pytest.approx(amount, abs=0.002)
    if scope == "layer":  # every tensor on its own
        assert all(float((w == 0).float().mean()) == pytest.approx(amount, abs=0.02) for w in weights)
    else:  # global: the smallest weights overall, so tensors differ
        fractions = {round(float((w == 0).float().mean()), 2) for w in weights}
        assert len(fractions) > 1
    assert all(not hasattr(sub, "weight_orig") for sub in model.modules())  # permanent
    info = json.loads((out / "sbmeta.json").read_text())
    (record,) = info["compression"]
    assert record["prune"]["scope"] == scope and record["prune"]["achieved"] == pytest.approx(amount, abs=0.002)
    words, _ = asr.transcribe_batch(*h.file_batch([r["wav"] for r in h.read_rows(trained[2])[:2]]))
    assert len(words) == 2
    # the trained model is untouched
    assert all(torch.equal(p, before[n]) for n, p in brain.modules.named_parameters())


def test_int8_export_loads_through_speechbrain_and_transcribes(trained, tmp_path):
    from speechbrain.inference.ASR import EncoderASR

    brain, yaml_path, csv = trained
    plain = export_with(brain, yaml_path, tmp_path / "float", int8=False)
    out = export_with(brain, yaml_path, tmp_path / "int8")
    text = (out / "hyperparams.yaml").read_text()
    assert "!apply:torch.ao.quantization.quantize_dynamic" in text and "inplace: true" in text
    assert "sb_meta." not in text  # plain torch and SpeechBrain only
    # exactly as a SpeechBrain user would load it, in a fresh process (nothing of sb-meta imported)
    wav = h.read_rows(csv)[0]["wav"]
    code = (
        "import sys, torch\n"
        "from speechbrain.inference.ASR import EncoderASR\n"
        f"asr = EncoderASR.from_hparams(source={str(out)!r}, savedir={str(out)!r})\n"
        "kinds = sorted({m._get_name() for m in asr.mods.modules()})\n"
        f"print(kinds); print(repr(asr.transcribe_file({wav!r})))\n"
        "assert not any(k.startswith('sb_meta') for k in sys.modules), 'sb_meta was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DynamicQuantizedLinear" in proc.stdout and "DynamicQuantizedLSTM" in proc.stdout
    # in this process too; int8 outputs stay close to the float model's
    q = EncoderASR.from_hparams(source=str(out), savedir=str(out))
    f = EncoderASR.from_hparams(source=str(plain), savedir=str(plain))
    wavs, lens = h.file_batch([r["wav"] for r in h.read_rows(csv)[:3]])
    with torch.no_grad():
        diff = (q.encode_batch(wavs, lens).exp() - f.encode_batch(wavs, lens).exp()).abs().max()
    assert float(diff) < 0.1
    size = {name: (folder / "model.ckpt").stat().st_size for name, folder in (("float", plain), ("int8", out))}
    assert size["int8"] < size["float"]
    info = json.loads((out / "sbmeta.json").read_text())
    assert set(info["compression"][0]["int8"]["model"]) >= {"0.RNN.rnn", "1.w"}


def test_int8_of_linear_layers_only_needs_no_allowlist(trained, tmp_path):
    brain, yaml_path, csv = trained
    out = export_with(brain, yaml_path, tmp_path / "lin8", prune=0.5, layers=["Linear"])
    text = (out / "hyperparams.yaml").read_text()
    assert "add_safe_globals" not in text and "flatten_parameters" not in text
    asr = h.speechbrain_asr(out)
    kinds = {m._get_name() for m in asr.mods.modules()}
    assert "DynamicQuantizedLinear" in kinds and "DynamicQuantizedLSTM" not in kinds
    info = json.loads((out / "sbmeta.json").read_text())
    assert info["compression"][0]["prune"]["achieved"] == pytest.approx(0.5, abs=0.002)


def test_options_are_validated(trained):
    brain = trained[0]
    with pytest.raises(KeyError, match="compress_prunee.*did you mean 'compress_prune'"):
        from sb_meta.options import check_options

        check_options({"compress_prunee": 0.5}, [COMPRESS.Compress], ["compress"])
    brain.hparams.compress_prune = 1.5
    try:
        with pytest.raises(ValueError, match=r"compress_prune must be in \[0, 1\)"):
            type(brain.addons[0])(brain, brain.meta_config)
    finally:
        del brain.hparams.compress_prune
    from sb_meta_plugins.compress import compress_options

    with pytest.raises(ValueError, match="--compress 'prune:x'"):
        compress_options("prune:x")


def test_adapt_command_compresses_and_the_report_compares(trained, tmp_path, capsys):
    from sb_meta.cli import main

    brain, yaml_path, csv = trained
    base = export_with(brain, yaml_path, tmp_path / "base", int8=False)  # not compressed
    code = main(["adapt", "--model", str(base), "--support", str(csv), "--k", "2", "--steps", "1",
                 "--compress", "prune:0.5,int8", "--out", str(tmp_path / "small")])
    assert code == 0, capsys.readouterr().err
    assert "Compressed: pruned 50% of" in capsys.readouterr().out  # the add-on describes its export
    info = json.loads((tmp_path / "small" / "sbmeta.json").read_text())
    assert info["adaptations"][-1]["addons"] == ["compress"]
    assert info["compression"][0]["prune"]["sparsity"] == 0.5 and info["compression"][0]["int8"]
    h.speechbrain_asr(tmp_path / "small").transcribe_file(h.read_rows(csv)[0]["wav"])
    bad = main(["adapt", "--model", str(base), "--support", str(csv), "--k", "2",
                "--compress", "int4", "--out", str(tmp_path / "nope")])
    assert bad == 2 and "--compress 'int4' is not understood" in capsys.readouterr().err
    # the report: size on disk, CPU real-time factor, WER change
    rows = COMPRESS.compare_exports({"float": base, "int8+prune": tmp_path / "small"}, csv, limit=4)
    assert [r["label"] for r in rows] == ["float", "int8+prune"]
    assert rows[1]["size_mb"] < rows[0]["size_mb"] and rows[0]["wer_change"] == 0
    assert all(r["rtf"] > 0 and r["utterances"] == 4 for r in rows)
    assert "| int8+prune |" in COMPRESS.report_table(rows)


def test_benchmark_script_runs_on_an_export(trained, tmp_path, capsys):
    brain, yaml_path, csv = trained
    base = export_with(brain, yaml_path, tmp_path / "base", int8=False)  # not compressed
    script = load_script(h.ROOT / "benchmarks" / "compression.py", "sbmeta_bench_compression")
    assert script.main(["--model", str(base), "--data", str(csv), "--out", str(tmp_path / "report"),
                        "--variants", "int8,prune:0.5+int8", "--limit", "3"]) == 0
    rows = json.loads((tmp_path / "report" / "compression.json").read_text())
    assert [r["label"] for r in rows] == ["float", "int8", "prune:0.5+int8"]
    assert rows[2]["size_mb"] < rows[0]["size_mb"]
    assert "| int8 |" in (tmp_path / "report" / "compression.md").read_text()
    assert "| prune:0.5+int8 |" in capsys.readouterr().out
