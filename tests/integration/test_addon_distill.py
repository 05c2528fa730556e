"""The distill add-on: the frame-level loss is zero when student equals teacher
and its gradient points toward the teacher; teachers are model folders (run
without gradients, frame rates resampled or refused) or the model before
adaptation; it works in the outer loss, the inner loop and test-time
adaptation, and from a recipe by flag."""


import pytest
import torch


from helpers import tiny_asr as h
from sb_meta.adapt import Method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return h.make_corpus(tmp_path_factory.mktemp("distill") / "corpus")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, corpus):
    """A tiny exported CRDNN-CTC teacher (time pooling 2, like the students)."""
    from sb_meta.export import export_brain

    tmp = tmp_path_factory.mktemp("teacher")
    brain, yaml_path = h.train_tiny_brain(tmp / "exp", corpus, strategy="joint", epochs=1)
    return export_brain(brain, tmp / "pretrained", hparams_file=yaml_path)


def student(tmp_path, corpus, epochs=1, **meta):
    meta = dict(meta_addons=["distill"], **meta)
    return h.train_tiny_brain(tmp_path / "student", corpus, strategy="fomaml", epochs=epochs, meta=meta)[0]


def test_zero_when_student_equals_teacher_and_the_gradient_points_to_the_teacher(tmp_path, corpus):
    addon = student(tmp_path, corpus, epochs=0).addons[0]
    torch.manual_seed(0)
    teacher = torch.randn(2, 6, 5).log_softmax(-1)
    lens = torch.tensor([1.0, 0.5])
    assert float(addon.frame_loss(teacher.clone(), teacher, lens)) == 0.0
    for tau in (1.0, 2.0):
        addon.temperature = tau
        logits = torch.randn(2, 6, 5, requires_grad=True)
        loss = addon.frame_loss(logits.log_softmax(-1), teacher, lens)
        assert float(loss.detach()) > 0
        (grad,) = torch.autograd.grad(loss, logits)
        p = (teacher / tau).softmax(-1)  # the softened teacher and student
        q = (logits.detach().log_softmax(-1) / tau).softmax(-1)
        valid = torch.tensor([[1.0] * 6, [1.0] * 3 + [0.0] * 3])[..., None]
        # -grad is (p - q) per valid frame, scaled by tau / (number of valid frames): toward the teacher
        torch.testing.assert_close(-grad, tau * (p - q) * valid / 9, rtol=1e-4, atol=1e-6)
        with torch.no_grad():  # a small step along -grad lowers the loss
            after = addon.frame_loss((logits - 0.5 * grad).log_softmax(-1), teacher, lens)
        assert float(after) < float(loss)
    with pytest.raises(ValueError, match="teacher has 7 outputs and the student 5"):
        addon.frame_loss(teacher, torch.randn(2, 6, 7).log_softmax(-1), lens)


def test_a_teacher_folder_in_the_outer_loss_frame_and_sequence_level(tmp_path, corpus, teacher):
    brain = student(tmp_path, corpus, distill_teacher=str(teacher), distill_seq_weight=0.5,
                    distill_temperature=2.0, distill_phases=["outer", "inner"])
    terms = {k: v for k, v in brain.train_stats.items() if "distill" in k}  # the recipe's train log
    assert set(terms) == {"inner_distill_frame", "inner_distill_sequence",
                          "outer_distill_frame", "outer_distill_sequence"}
    assert all(v > 0 for v in terms.values())
    (addon,) = brain.addons
    assert all(not p.requires_grad for p in addon.teacher.asr.mods.parameters())  # no gradients
    assert not any(p.grad is not None for p in addon.teacher.asr.mods.parameters())


def test_frame_rates_are_resampled_or_refused(tmp_path, corpus):
    from sb_meta.export import export_brain

    fast_yaml = h.CTC_YAML.replace("time_pooling: True", "time_pooling: False")
    fast, yaml_path = h.train_tiny_brain(tmp_path / "t2", corpus, strategy="joint", epochs=1, yaml_text=fast_yaml)
    folder = export_brain(fast, tmp_path / "t2" / "pretrained", hparams_file=yaml_path)
    brain = student(tmp_path, corpus, distill_teacher=str(folder))  # twice the student's frame rate
    assert brain.train_stats["outer_distill_frame"] > 0
    with pytest.raises(ValueError, match=r"teacher gives \d+ output frames and the student \d+"):
        student(tmp_path / "b", corpus, distill_teacher=str(folder), distill_frames="match")


def test_the_model_before_adaptation_at_test_time(tmp_path, corpus, teacher):
    from sb_meta.adapt import load_model
    from sb_meta.losses import distillation_loss

    model = load_model(teacher)
    rows = h.read_rows(corpus)[:2]
    wavs, texts = [r["wav"] for r in rows], [r["wrd"] for r in rows]
    one = model.adapt((wavs, texts), Method(steps=1, lr=0.05, addons=["distill"]))  # distill_teacher: self
    (zero,) = one._brain.loss_term_means().items()  # nothing adapted yet: the same model
    assert zero[0] == "adapt_distill_frame" and abs(zero[1]) < 1e-6
    three = model.adapt((wavs, texts), Method(steps=3, lr=0.05, addons=["distill"], addon_config={"distill_weight": 1.0, "distill_seq_weight": 0.5}))
    terms = three._brain.loss_term_means()
    assert terms["adapt_distill_frame"] > 0 and "adapt_distill_sequence" in terms
    # the pull toward the model before adaptation keeps the adapted outputs closer to its outputs
    free = model.adapt((wavs, texts), Method(steps=4, lr=0.02))
    kept = model.adapt((wavs, texts), Method(steps=4, lr=0.02, addons=["distill"], addon_config={"distill_weight": 5.0}))
    batch, lens = h.file_batch([r["wav"] for r in h.read_rows(corpus)])
    before = model.log_probs(batch, lens)

    def drift(m):
        return float(distillation_loss(m.log_probs(batch, lens), before, lens))

    assert drift(kept) < drift(free)


def test_adapt_command_takes_addons_and_their_options(tmp_path, corpus, teacher, capsys):
    import json

    from sb_meta.cli import main

    args = ["adapt", "--model", str(teacher), "--support", str(corpus), "--k", "2", "--steps", "2"]
    code = main(args + ["--addons", "distill", "--addon-config", "distill_seq_weight=0.5",
                        "--addon-config", "distill_phases=[adapt]", "--out", str(tmp_path / "a")])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "a" / "sbmeta.json").read_text())["adaptations"][-1]
    assert record["addons"] == ["distill"]
    assert record["addon_config"] == {"distill_seq_weight": 0.5, "distill_phases": ["adapt"]}
    assert main(args + ["--addons", "distill", "--addon-config", "distill_seq_weight",
                        "--out", str(tmp_path / "b")]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(args + ["--addons", "distil", "--out", str(tmp_path / "c")]) == 2
    assert "unknown add-on 'distil'; available: augment, cmvn, compress, dann, distill" in capsys.readouterr().err


def test_options_are_validated(tmp_path, corpus):
    with pytest.raises(KeyError, match="'distill_temprature'.*did you mean 'distill_temperature'"):
        student(tmp_path, corpus, epochs=0, distill_temprature=2.0)
    with pytest.raises(FileNotFoundError, match="no/such/teacher"):
        student(tmp_path, corpus, epochs=0, distill_teacher=str(tmp_path / "no/such/teacher"))
    with pytest.raises(ValueError, match="distill_phases has unknown phases"):
        student(tmp_path, corpus, epochs=0, distill_phases=["eval"])
