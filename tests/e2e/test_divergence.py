"""Divergence is a failure, never a success (issue 29).

Adaptation stops, keeping and exporting nothing, when the support loss grows past
``LOSS_GROWTH_LIMIT`` times its start or a weight past ``WEIGHT_GROWTH_LIMIT`` times
the model's largest; training stops at the first non-finite loss or weight, naming
the step, the learning rate and the last good checkpoint. (The command-line rows,
``sb-meta adapt --lr 5`` and ``evaluate --lr nan``, are in tests/test_faults.py.)
"""

import math
import pathlib
import re

import pytest
import torch

from sb_meta.utils import load_script

from helpers import tiny_asr as h  # noqa: E402
from sb_meta.adapt import Method

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from sb_meta.adapt import load_model

    setup = h.exported_tiny_model(tmp_path_factory.mktemp("divergence"), epochs=1)
    rows = [r for r in setup["rows"] if r["spk_id"] == "s0"][:3]
    return load_model(setup["export"]), [r["wav"] for r in rows], [r["wrd"] for r in rows]


def test_a_step_size_that_blows_the_support_loss_up_is_refused(model):
    from sb_meta.adapt import AdaptationError
    from sb_meta.adapt.model import LOSS_GROWTH_LIMIT

    base, wavs, texts = model
    before = {n: p.clone() for n, p in base.named_parameters()}
    with pytest.raises(AdaptationError, match=r"^adaptation diverged with step size lr 5: the support loss "
                                              r"went from .* before the first step to .* after step 1 "
                                              rf"\(over {LOSS_GROWTH_LIMIT:g}x\); nothing was adapted"):
        base.adapt((wavs, texts), Method(steps=3, lr=5.0))
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())  # the base is untouched
    adapted = base.adapt((wavs, texts), Method(steps=3, lr=0.05))  # a sensible step size still adapts
    loss = adapted.last_adaptation["support_loss"]
    assert loss["after"] < loss["before"]


def test_the_bounds_name_the_step_size_and_the_weight():
    from sb_meta.adapt.model import AdaptationError, check_divergence

    check_divergence([5.0, 4.0, 3.0], {"w": torch.ones(3)}, 1.0, "lr 0.1")  # a good adaptation passes
    with pytest.raises(AdaptationError, match=r"step size lr 1: the support loss went from 5 .* to nan after step 2"):
        check_divergence([5.0, 4.0, math.nan], {}, 1.0, "lr 1")
    with pytest.raises(AdaptationError, match=r"step size the meta-learned step sizes: w reached 500, over 100x"):
        check_divergence([5.0, 4.0], {"w": torch.full((3,), 500.0)}, 1.0, "the meta-learned step sizes")
    with pytest.raises(AdaptationError, match=r"w reached inf"):
        check_divergence([5.0, 4.0], {"w": torch.tensor([math.inf])}, 1.0, "lr 1")


def test_training_stops_at_the_first_non_finite_loss_naming_step_rate_and_checkpoint(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    from sb_meta.brain import TrainingDivergedError
    from sb_meta.testing import make_toy_brain, toy_dataset

    mods = {}
    checkpointer = Checkpointer(tmp_path / "save", recoverables=mods)
    brain = make_toy_brain({"meta_strategy": "fomaml", "k_support": 2, "k_query": 2, "meta_batch_tasks": 2},
                           checkpointer=checkpointer)
    mods.update(brain.modules)
    loader = brain.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=4))
    brain.fit(range(1, 2), loader, progressbar=False)
    good = checkpointer.save_checkpoint()
    with torch.no_grad():
        brain.modules.lin2.weight[0, 0] = math.nan  # what a step size far too large leaves
    with pytest.raises(TrainingDivergedError, match=(
            r"^training diverged at outer step \d+: the loss is nan, with learning rate 0.1; training "
            rf"stopped and the last good checkpoint is {re.escape(str(good.path))}: lower the learning rate")):
        brain.fit(range(2, 3), loader, progressbar=False)


def test_a_step_that_leaves_non_finite_weights_stops_training():
    from sb_meta.brain import TrainingDivergedError
    from sb_meta.testing import make_toy_brain, toy_dataset

    brain = make_toy_brain({"meta_strategy": "fomaml", "k_support": 2, "k_query": 2, "meta_batch_tasks": 2},
                           lr=math.inf)
    loader = brain.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=4))
    with pytest.raises(TrainingDivergedError, match=r"training diverged at outer step 1: the weights of "
                                                    r"lin\d\.\w+ are no longer finite, with learning rate inf; "
                                                    r"training stopped and no checkpoint was saved"):
        brain.fit(range(1, 3), loader, progressbar=False)


def test_a_nan_loss_is_averaged_as_nan_not_left_out():
    from sb_meta.testing import make_toy_brain

    brain = make_toy_brain({"meta_strategy": "fomaml"})
    brain.step = 2
    assert math.isnan(brain.update_average(torch.tensor(math.nan), 1.0))
    assert brain.update_average(torch.tensor(3.0), 1.0) == pytest.approx(2.0)


def test_a_recipe_trained_into_nan_stops_in_one_line_and_exports_nothing(tmp_path, capsys):
    """The issue's case: ``recipes/SynthVoices/train.py ... --lr=1e6``."""
    from sb_meta.data.synth import generate_corpus
    from sb_meta.recipe import run_main

    corpus = generate_corpus(tmp_path / "synth", speakers=6, utts_per_speaker=5, seed=1, progress=False)
    recipe = load_script(ROOT / "recipes" / "SynthVoices" / "train.py", "sbmeta_divergence_recipe")
    out = tmp_path / "exp"
    argv = [str(ROOT / "recipes/SynthVoices/hparams/crdnn_ctc_meta.yaml"), f"--data_folder={tmp_path / 'synth'}",
            f"--output_folder={out}", "--number_of_epochs=3", "--episodes_per_epoch=2", "--meta_batch_tasks=2",
            "--k_support=2", "--k_query=2", "--inner_steps=1", "--noprogressbar", "--lr=1e6"]
    assert corpus is not None
    with pytest.raises(SystemExit) as stop:
        run_main(recipe.main, argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = next(x for x in err if "error:" in x)
    assert "training diverged at outer step" in line and "learning rate 1e+06" in line, err
    assert not (out / "pretrained").exists()
    log = out / "train_log.txt"
    assert not log.exists() or "0.00e+00" not in log.read_text()
