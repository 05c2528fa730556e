"""A study's training runs through studies/common.py: the recipe's own ``main`` into a
folder, a record with the command, the budget in epochs, the steps and epochs taken, the
minutes on the one clock and the machine; the same command again reuses the folder."""

from studies import common

from helpers.recipes import ROOT, SMALL


def test_run_recipe_writes_a_record_and_reuses_a_finished_run(synth_corpus, tmp_path):
    folder = tmp_path / "run"
    argv = common.recipe_argv(ROOT / "recipes" / "SynthVoices" / "hparams" / "crdnn_ctc_meta.yaml",
                              {"data_folder": synth_corpus, "output_folder": folder}) + SMALL
    said = []
    record = common.run_recipe(ROOT / "recipes" / "SynthVoices" / "train.py", argv, folder,
                               {"epochs": 1}, log=said.append)
    assert record["command"].startswith("python recipes/SynthVoices/train.py ")
    assert record["budget"] == {"epochs": 1} and record["epochs"] == 1 and record["outer_steps"] == 1
    assert record["clock"] == common.CLOCK and record["train_minutes"] >= 0
    assert record["machine"]["torch_threads"] >= 1 and record["test"]["wer"] is not None
    assert common.read_json(folder / "record.json") == record
    again = common.run_recipe(ROOT / "recipes" / "SynthVoices" / "train.py", argv, folder,
                              {"epochs": 1}, log=said.append)
    assert again == record and said[-1] == f"reusing {folder}"
