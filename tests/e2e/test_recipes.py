"""The recipes run every strategy from the command line and export a model."""

import json
import pathlib
import subprocess
import sys

import pytest

from helpers.recipes import DEBUG, SMALL, train_in_process

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_recipe(recipe, args, cwd, yaml="crdnn_ctc_meta.yaml", ok=True):
    cmd = [sys.executable, str(ROOT / "recipes" / recipe / "train.py"),
           str(ROOT / "recipes" / recipe / "hparams" / yaml), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize(
    "strategy", ["maml", "fomaml", "reptile", "metasgd", "anil", "meta_lstm", "joint", "finetune"]
)
def test_synthvoices_recipe_runs_every_strategy(synth_corpus, tmp_path, strategy):
    out = tmp_path / "exp"
    train_in_process(
        "SynthVoices",
        [f"--data_folder={synth_corpus}", f"--output_folder={out}", f"--meta_strategy={strategy}", *SMALL],
    )
    log = (out / "train_log.txt").read_text()
    assert "train loss" in log and "valid WER" in log and "test WER" in log
    info = json.loads((out / "pretrained" / "sbmeta.json").read_text())
    assert info["strategy"] == strategy


def test_a_recipe_keeps_the_best_checkpoint_after_adaptation(synth_corpus, tmp_path):
    """``--valid_adapt=True``: the dev speakers adapt (here only LHUC scales, speaker-adaptive
    meta-training) before the recipe's WER is computed on their other utterances."""
    out = tmp_path / "exp"
    brain = train_in_process("SynthVoices", [f"--data_folder={synth_corpus}", f"--output_folder={out}",
                                             "--meta_strategy=fomaml", "--meta_addons=[lhuc]",
                                             "--valid_adapt=True", *SMALL])
    assert brain.meta_config["valid_adapt"]
    log = (out / "train_log.txt").read_text()
    assert "valid WER" in log and "test WER" in log
    assert (out / "pretrained" / "sbmeta.json").is_file()


@pytest.mark.parametrize(
    "strategy", ["maml", "fomaml", "reptile", "metasgd", "anil", "meta_lstm", "joint", "finetune"]
)
def test_the_transformer_recipe_runs_every_strategy(synth_corpus, tmp_path, strategy):
    out = tmp_path / "exp"
    train_in_process("SynthVoices", [f"--data_folder={synth_corpus}", f"--output_folder={out}",
                                     f"--meta_strategy={strategy}", "--d_model=32", *DEBUG],
                     yaml="transformer_meta.yaml")
    info = json.loads((out / "pretrained" / "sbmeta.json").read_text())
    assert info["interface"] == "speechbrain.inference.ASR.EncoderDecoderASR"
    assert info["strategy"] == strategy


@pytest.mark.parametrize("strategy, extra", [("maml", []), ("fomaml", ["--valid_adapt=True"])])
def test_the_crdnn_attention_recipe_runs(synth_corpus, tmp_path, strategy, extra):
    """(``valid_adapt``: the beam search of validation decodes with adapted weights.)"""
    out = tmp_path / "exp"
    train_in_process("SynthVoices", [f"--data_folder={synth_corpus}", f"--output_folder={out}",
                                     f"--meta_strategy={strategy}", *DEBUG, *extra],
                     yaml="crdnn_attention_meta.yaml")
    assert json.loads((out / "pretrained" / "sbmeta.json").read_text())["strategy"] == strategy


@pytest.mark.parametrize(
    "args, message",
    [
        (["--meta_strategy=mamll"], "unknown strategy 'mamll'; available: anil, "),
        (["--inner_stepz=3"], "unknown key 'inner_stepz' (did you mean 'inner_steps'?)"),
        (["--inner_steps=-1"], "inner_steps must be a non-negative integer"),
        (["--k_support=40", "--k_query=40"], "k_support + k_query = 40 + 40 = 80 utterances per task"),
        (["--meta_addons=nope"], "unknown add-on 'nope'"),
        (["--plugins=[./no_such_plugin.py]"], "no_such_plugin.py"),
        (["--peft_rnak=3", "--meta_addons=[lora]"], "unknown key 'peft_rnak'"),
        (["--test_lexicon=no_such_words.txt", "--k_support=2", "--k_query=2", "--meta_batch_tasks=2"],
         "lexicon no_such_words.txt does not exist"),
    ],
)
def test_recipe_errors_are_one_line_and_leave_no_folder(synth_corpus, tmp_path, args, message, capsys):
    from sb_meta.recipe import run_main
    from helpers.recipes import load_recipe

    recipe = load_recipe("SynthVoices")
    out = tmp_path / "x"
    argv = [str(ROOT / "recipes/SynthVoices/hparams/crdnn_ctc_meta.yaml"),
            f"--data_folder={synth_corpus}", f"--output_folder={out}", "--noprogressbar", *args]
    with pytest.raises(SystemExit) as exit_info:
        run_main(recipe.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # a failed set-up leaves no half-filled experiment folder


def test_recipe_error_from_the_command_line_and_verbose_traceback(synth_corpus, tmp_path):
    out = tmp_path / "x"
    args = [f"--data_folder={synth_corpus}", f"--output_folder={out}", "--inner_stepz=3"]
    proc = run_recipe("SynthVoices", args, cwd=tmp_path, ok=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if "torchvision" not in ln]
    assert lines[0] == "train.py: error: unknown key 'inner_stepz' (did you mean 'inner_steps'?) " \
                       f"on the command line; {ROOT / 'recipes/SynthVoices/hparams/crdnn_ctc_meta.yaml'} has no such key"
    assert len(lines) == 2 and "--verbose" in lines[1]
    assert not out.exists()
    verbose = run_recipe("SynthVoices", args + ["--verbose"], cwd=tmp_path, ok=False)
    assert verbose.returncode != 0 and "Traceback" in verbose.stdout + verbose.stderr


def test_an4_recipe_trains_tests_and_exports(an4_root, tmp_path):
    from speechbrain.inference.ASR import EncoderASR

    out = tmp_path / "exp"
    run_recipe(
        "AN4",
        [f"--data_folder={an4_root}", f"--output_folder={out}", "--meta_strategy=fomaml", *SMALL],
        cwd=tmp_path,
    )
    manifests = out / "manifests"
    assert sum(1 for _ in open(manifests / "test.csv")) == 131
    asr = EncoderASR.from_hparams(source=str(out / "pretrained"), savedir=str(out / "pretrained"))
    wav = next((pathlib.Path(an4_root) / "wav" / "an4test_clstk").rglob("*.sph"))
    assert isinstance(asr.transcribe_file(str(wav)), str)


def test_the_an4_transformer_recipe_runs_second_order_maml(an4_root, tmp_path):
    """`python recipes/AN4/train.py recipes/AN4/hparams/transformer_meta.yaml
    --data_folder=... --meta_strategy=maml --debug` (issue 13)."""
    out = tmp_path / "exp"
    brain = train_in_process("AN4", [f"--data_folder={an4_root}", f"--output_folder={out}",
                                     "--meta_strategy=maml", *DEBUG], yaml="transformer_meta.yaml")
    assert brain.strategy.name == "maml" and not brain.strategy.first_order
    info = json.loads((out / "pretrained" / "sbmeta.json").read_text())
    assert info["interface"] == "speechbrain.inference.ASR.EncoderDecoderASR"


def test_tensorboard_snippet_logs_every_loss_term(synth_corpus, tmp_path):
    """hparams/tensorboard.yaml appended to a recipe gives TensorBoard curves of the
    train and valid statistics, add-on loss terms (here DANN's) included."""
    pytest.importorskip("tensorboard", reason="tensorboard comes with the dev extras")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = tmp_path / "with_tensorboard.yaml"
    recipe.write_text(
        (ROOT / "recipes" / "SynthVoices" / "hparams" / "crdnn_ctc_meta.yaml").read_text()
        + "\n" + (ROOT / "hparams" / "tensorboard.yaml").read_text()
        + "\n" + (ROOT / "hparams" / "addons" / "dann.yaml").read_text()
    )
    out = tmp_path / "exp"
    from helpers.recipes import load_recipe

    module = load_recipe("SynthVoices")
    module.main([str(recipe), f"--data_folder={synth_corpus}", f"--output_folder={out}",
                 "--meta_strategy=fomaml", "--meta_addons=[dann]", *SMALL])
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/valid", "WER/valid", "outer_dann_domain/train"} <= tags, tags


def test_a_word_strategy_in_a_speech_recognizer_recipe_says_which_strategies_fit(synth_corpus, tmp_path):
    proc = run_recipe("SynthVoices", [f"--data_folder={synth_corpus}", f"--output_folder={tmp_path / 'exp'}",
                                      "--meta_strategy=protonet", *DEBUG], tmp_path, ok=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-2]
    assert "classifies words" in last and "recipes/AN4Words" in last and "meta_lstm" in last, last
    assert not (tmp_path / "exp").exists()


def test_the_recipe_tests_with_a_lexicon_when_the_yaml_names_one(synth_corpus, tmp_path):
    import csv

    words = sorted({w for row in csv.DictReader(open(synth_corpus / "train.csv")) for w in row["wrd"].split()})
    lexicon = tmp_path / "words.txt"
    lexicon.write_text("\n".join(words[: len(words) // 2]) + "\n")  # half the words: the rest never appear
    out = tmp_path / "exp"
    brain = train_in_process("SynthVoices", [f"--data_folder={synth_corpus}", f"--output_folder={out}",
                                             "--meta_strategy=joint", f"--test_lexicon={lexicon}", *SMALL])
    assert brain.lexicon_decoder.words == words[: len(words) // 2]
    assert "test WER" in (out / "train_log.txt").read_text()
    # SpeechBrain's alignment file: a reference / operations / hypothesis triple of lines per
    # utterance, after a legend triple
    rows = [line for line in (out / "wer_test.txt").read_text().splitlines() if " ; " in line][3:]
    said = {w.strip() for line in rows[2::3] for w in line.split(";")} - {"<eps>", ""}
    assert said and said <= set(words[: len(words) // 2])
