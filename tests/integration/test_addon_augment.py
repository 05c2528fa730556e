"""The augment add-on: augmentation changes the batches of the configured phases
only, never the input batch; augmentations that grow the batch keep every
per-utterance field aligned; it runs at test time and from a recipe by flag.
Also: the reusable YAML of every add-on lists exactly its options and defaults."""


import pytest
import torch
from ruamel.yaml import YAML

from sb_meta.contract import Phase
from sb_meta.plugins import PluginRegistry

from helpers import tiny_asr as h
from sb_meta.adapt import Method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return h.make_corpus(tmp_path_factory.mktemp("augment") / "corpus")


def make(tmp_path, corpus, epochs=0, **options):
    """A tiny recipe brain with the augment add-on and an episode of its data."""
    brain, _ = h.train_tiny_brain(tmp_path / "exp", corpus, strategy="fomaml", epochs=epochs,
                                  meta=dict(meta_addons=["augment"], **options))
    data = h.RECIPE.dataio_prepare(vars(brain.hparams), {"train": corpus})
    return brain, next(iter(brain.make_episode_loader(data["train"])))


def snapshot(batch):
    return {k: (v.data.clone() if hasattr(v, "data") else list(v))
            for k, v in ((k, getattr(batch, k)) for k in ("id", "sig", "tokens", "wrd"))}


def differ(a, b):
    return a.shape != b.shape or not torch.equal(a, b)


def same(batch, snap):
    return all(torch.equal(getattr(batch, k).data, v) if torch.is_tensor(v) else list(getattr(batch, k)) == v
               for k, v in snap.items())


def test_only_the_configured_phases_are_augmented_and_the_input_never(tmp_path, corpus):
    brain, episode = make(tmp_path, corpus, augment_phases=["inner"])
    task = episode.tasks[0]
    batch, snap = task.support, snapshot(task.support)
    inner = brain.transform_batch(batch, task, Phase.INNER)
    assert inner is not batch and inner.id == batch.id
    assert differ(inner.sig.data, batch.sig.data)
    for phase in (Phase.OUTER, Phase.ADAPT, Phase.EVAL):
        assert brain.transform_batch(batch, task, phase) is batch
    assert same(batch, snap)  # the support set is reused across inner steps: untouched
    # a fresh augmentation every time
    again = brain.transform_batch(batch, task, Phase.INNER)
    assert differ(again.sig.data, inner.sig.data)


def test_the_inner_loop_sees_augmented_support_sets_and_the_outer_loss_plain_batches(tmp_path, corpus):
    brain, episode = make(tmp_path, corpus, augment_phases=["inner"], augment_concat_original=True,
                          augment_methods=["noise"])
    seen = []
    original = brain.compute_forward

    def spy(batch, stage):
        seen.append(len(batch.id))
        return original(batch, stage)

    brain.compute_forward = spy
    brain.fit_batch(episode)
    k = 2  # k_support == k_query of the tiny brain
    assert seen == [2 * k, k] * len(episode.tasks)  # inner: originals + noisy copies; outer: as is


def test_growing_batches_keep_every_field_aligned(tmp_path, corpus):
    brain, episode = make(tmp_path, corpus, augment_methods=["speed", "noise"], augment_parallel=True,
                          augment_concat_original=True, augment_speeds=[90, 110])
    task = episode.tasks[1]
    batch = task.support
    n = len(batch.id)
    new = brain.transform_batch(batch, task, Phase.OUTER)
    assert len(new.id) == 3 * n  # originals + one copy per method
    rows = {uid: i for i, uid in enumerate(batch.id)}
    for j, uid in enumerate(new.id):
        i = rows[uid]
        assert new.wrd[j] == batch.wrd[i]
        for key in ("tokens", "tokens_bos", "tokens_eos"):
            got, want = getattr(new, key), getattr(batch, key)
            a = got.data[j, : int(round(float(got.lengths[j]) * got.data.shape[1]))]
            b = want.data[i, : int(round(float(want.lengths[i]) * want.data.shape[1]))]
            assert torch.equal(a, b), (key, j)
    sig, lens = new.sig
    for i in range(n):  # the originals come first, unchanged
        m = int(round(float(batch.sig.lengths[i]) * batch.sig.data.shape[1]))
        assert torch.equal(sig[i, :m], batch.sig.data[i, :m])
    # the speed copies are longer or shorter than the originals
    copies = [int(round(float(lens[j]) * sig.shape[1])) for j in range(n, 2 * n)]
    originals = [int(round(float(batch.sig.lengths[i]) * batch.sig.data.shape[1])) for i in range(n)]
    assert all(abs(c / o - 1) > 0.05 for c, o in zip(copies, originals))
    # the augmented batch trains: CTC sees the replicated targets
    loss = brain.strategy.loss({}, batch, Phase.OUTER, task)
    assert torch.isfinite(loss)


def test_test_time_support_sets_and_option_errors(tmp_path, corpus):
    from sb_meta.adapt import load_model
    from sb_meta.export import export_brain

    brain, yaml_path = h.train_tiny_brain(tmp_path / "t", corpus, strategy="joint", epochs=1)
    model = load_model(export_brain(brain, tmp_path / "m", hparams_file=yaml_path))
    rows = h.read_rows(corpus)[:2]
    adapted = model.adapt(([r["wav"] for r in rows], [r["wrd"] for r in rows]), Method(steps=2, addons=["augment"], addon_config={"augment_phases": ["adapt"], "augment_methods": ["dropchunk", "noise"]}))
    assert adapted.last_adaptation["addons"] == ["augment"]
    with pytest.raises(ValueError, match="augment_methods has \\['reverb'\\]; methods are: speed, dropfreq"):
        model.adapt(([rows[0]["wav"]], [rows[0]["wrd"]]), Method(addons=["augment"], addon_config={"augment_methods": ["reverb"]}))
    with pytest.raises(KeyError, match="'augment_phase'.*did you mean 'augment_phases'"):
        model.adapt(([rows[0]["wav"]], [rows[0]["wrd"]]), Method(addons=["augment"], addon_config={"augment_phase": ["adapt"]}))


@pytest.mark.parametrize("name", ["dann", "distill", "compress", "augment"])
def test_reusable_yaml_lists_every_option_with_its_default(name):
    """hparams/addons/<name>.yaml: exactly the add-on's options, with its defaults."""
    doc = YAML(typ="safe").load((h.ROOT / "hparams" / "addons" / f"{name}.yaml").read_text())
    cls = PluginRegistry().get_addon(name)
    assert doc == cls.options
