"""The speechocean762 recipe: debug runs of each YAML family on the mini copy
($SBMETA_SPEECHOCEAN762_ROOT), its training-set selections, cross-corpus init_from."""

import pathlib
import shutil

import pytest

from helpers.recipes import load_recipe
from sb_meta.data.manifest import read_manifest
from sb_meta.recipe import RecipeError

RECIPE = pathlib.Path(__file__).resolve().parents[2] / "recipes" / "SpeechOcean762"
recipe = load_recipe("SpeechOcean762")
DEBUG = ["--debug", "--debug_batches=1", "--debug_epochs=1", "--meta_batch_tasks=2", "--k_support=2",
         "--k_query=2", "--dev_speakers=1", "--noprogressbar"]


def _train(args, yaml="crdnn_ctc_meta.yaml"):
    """``python recipes/SpeechOcean762/train.py hparams/<yaml> <args>`` in this process."""
    return recipe.main([str(RECIPE / "hparams" / yaml), *args])


@pytest.fixture(scope="module")
def crdnn_export(speechocean762_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("so762_crdnn") / "exp"
    _train([f"--data_folder={speechocean762_root}", f"--output_folder={out}", "--meta_strategy=fomaml", *DEBUG])
    return out / "pretrained"


def test_the_crdnn_ctc_recipe_runs_fomaml_in_debug_mode(crdnn_export):
    """`python recipes/SpeechOcean762/train.py recipes/SpeechOcean762/hparams/crdnn_ctc_meta.yaml
    --data_folder=<mini> --meta_strategy=fomaml --debug` trains, tests and exports."""
    assert (crdnn_export / "hyperparams.yaml").is_file() and (crdnn_export / "model.ckpt").is_file()


@pytest.mark.parametrize("yaml", ["crdnn_attention_meta.yaml", "transformer_meta.yaml"])
def test_the_other_yaml_families_run_fomaml_in_debug_mode(speechocean762_root, tmp_path, yaml):
    out = tmp_path / "exp"
    _train([f"--data_folder={speechocean762_root}", f"--output_folder={out}", "--meta_strategy=fomaml",
            *DEBUG], yaml=yaml)
    assert (out / "pretrained" / "hyperparams.yaml").is_file()


def _hparams(root, tmp_path, **extra):
    return dict({"prepare_folder": str(tmp_path / "m"), "data_folder": str(root), "dev_speakers": 2,
                 "seed": 1, "data_seed": 1234}, **extra)


def test_adults_only_and_a_few_child_utterances_select_the_training_set(speechocean762_root, tmp_path):
    csvs = recipe.prepare(_hparams(speechocean762_root, tmp_path, train_age_group="adult"))
    assert {r["age_group"] for r in read_manifest(csvs["train"])} == {"adult"}
    assert {r["age_group"] for r in read_manifest(csvs["valid"])} == {"adult"}
    assert len({r["spk_id"] for r in read_manifest(csvs["test"])}) == 4  # always every test speaker
    assert csvs["tokenizer"].name == "train.csv"  # the alphabet of the whole training set
    csvs = recipe.prepare(_hparams(speechocean762_root, tmp_path, train_age_group="child", train_utterances=5))
    few = read_manifest(csvs["train"])
    assert csvs["train"].name == "train_child_5utt_seed1234.csv"
    assert len(few) == 5 and {r["age_group"] for r in few} == {"child"}
    again = recipe.prepare(_hparams(speechocean762_root, tmp_path, train_age_group="child", train_utterances=5))
    assert read_manifest(again["train"]) == few  # the draw follows data_seed
    with pytest.raises(RecipeError, match="train_age_group must be null, adult or child, not 'teen'"):
        recipe.prepare(_hparams(speechocean762_root, tmp_path, train_age_group="teen"))
    with pytest.raises(RecipeError, match="train_utterances=500: .* has 20 utterances"):
        recipe.prepare(_hparams(speechocean762_root, tmp_path, train_age_group="child", train_utterances=500))


def test_init_from_another_corpus_keeps_its_label_order(speechocean762_root, crdnn_export, tmp_path):
    """An export whose character set lacks one of speechocean762's characters initialises
    the recipe: the pretrained labels keep their rows, the new character takes an unused one."""
    from speechbrain.dataio.encoder import CTCTextEncoder

    src = tmp_path / "src"
    shutil.copytree(crdnn_export, src)
    theirs = CTCTextEncoder()
    theirs.load(src / "tokenizer.ckpt")
    labels = [theirs.ind2lab[i] for i in range(len(theirs))]
    z = labels.index("Z")  # a model that never saw Z: its label becomes an unused one
    labels[z] = "<unused_x>"
    enc = CTCTextEncoder()
    enc.insert_blank(labels[0], index=0)
    for lab in labels[1:]:
        enc.add_label(lab)
    enc.save(src / "tokenizer.ckpt")
    out = tmp_path / "init"
    _train([f"--data_folder={speechocean762_root}", f"--output_folder={out}", "--meta_strategy=joint",
            f"--init_from={src}", *DEBUG])
    ours = CTCTextEncoder()
    ours.load(out / "pretrained" / "tokenizer.ckpt")
    got = [ours.ind2lab[i] for i in range(len(ours))]
    assert got[z] == "Z"  # the first unused slot
    assert [i for i, (a, b) in enumerate(zip(got, labels)) if a != b] == [z]


def test_untranscribed_children_give_no_recognition_loss():
    """The CTC term of an untranscribed utterance is weighted 0: the loss neither reads
    its transcript nor counts it; with every utterance transcribed it is the mean CTC."""
    import functools
    import types

    import torch

    from sb_meta import ASRPredictions
    from sb_meta.losses import ctc_loss

    torch.manual_seed(0)
    brain = recipe.ASR.__new__(recipe.ASR)  # only compute_objectives is exercised
    brain.hparams = types.SimpleNamespace(ctc_cost=functools.partial(ctc_loss, blank_index=0))
    log_probs = torch.randn(2, 12, 6).log_softmax(-1)
    lens = torch.ones(2)
    pred = ASRPredictions(log_probs, lens, None, None, extra={})

    def loss(tokens, transcribed):
        batch = types.SimpleNamespace(tokens=(tokens, torch.ones(2)), transcribed=torch.tensor(transcribed))
        return recipe.ASR.compute_objectives(brain, pred, batch, recipe.sb.Stage.TRAIN)

    a = loss(torch.tensor([[1, 2, 3], [4, 5, 1]]), [1.0, 0.0])
    b = loss(torch.tensor([[1, 2, 3], [2, 2, 2]]), [1.0, 0.0])
    alone = ctc_loss(log_probs[:1], torch.tensor([[1, 2, 3]]), lens[:1], torch.ones(1), blank_index=0)
    assert torch.allclose(a, b) and torch.allclose(a, alone)


def test_dann_learns_from_untranscribed_child_audio(speechocean762_root, tmp_path):
    """An adults-only run with child audio added untranscribed and ``dann`` on ``age_group``."""
    hp = _hparams(speechocean762_root, tmp_path, train_age_group="adult", untranscribed_children=4)
    csvs = recipe.prepare(hp)
    rows = read_manifest(csvs["train"])
    assert len(hp["untranscribed_ids"]) == 4
    assert {r["age_group"] for r in rows if r["ID"] in hp["untranscribed_ids"]} == {"child"}
    assert {r["age_group"] for r in rows if r["ID"] not in hp["untranscribed_ids"]} == {"adult"}
    with pytest.raises(RecipeError, match="set train_age_group: adult"):
        recipe.prepare(_hparams(speechocean762_root, tmp_path, untranscribed_children=4))
    out = tmp_path / "exp"
    _train([f"--data_folder={speechocean762_root}", f"--output_folder={out}", "--meta_strategy=joint",
            "--plain_batches=True", "--train_age_group=adult", "--untranscribed_children=4",
            "--meta_addons=[dann]", "--dann_column=age_group", *DEBUG])
    assert "outer_dann_domain" in (out / "train_log.txt").read_text()
