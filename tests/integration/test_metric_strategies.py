"""The metric-based strategies (protonet, matching, finetune_classifier) on tiny tone words,
with the AN4Words recipe's own brain."""

import pathlib

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from sb_meta.contract import Phase
from sb_meta.episodes import Episode
from sb_meta.utils import load_script
from sb_meta.words.heads import LinearHead, MatchingHead, PrototypeHead
from sb_meta.words.testing import TINY_WORD_YAML, make_tone_words

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPE = load_script(ROOT / "recipes" / "AN4Words" / "train.py", "sbmeta_an4words_recipe_tests")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tone_words(tmp_path_factory.mktemp("tone_words"), words=5, speakers=2, per_speaker=3)


def make_brain(csv, strategy, **extra):
    torch.manual_seed(0)
    hp = load_hyperpyyaml(TINY_WORD_YAML)
    hp.update(meta_strategy=strategy, task_column="word", meta_batch_tasks=3, k_support=2, k_query=2,
              episodes_per_epoch=2, max_grad_norm=5.0)
    hp.update(extra)
    data = RECIPE.dataio_prepare(hp, {"train": csv})
    brain = RECIPE.WordEmbedder(modules=hp["modules"], opt_class=lambda p: torch.optim.Adam(p, 0.01),
                                hparams=hp, run_opts={"device": "cpu", "noprogressbar": True})
    brain.init_optimizers()
    return brain, brain.make_episode_loader(data["train"])


def first_episode(loader):
    episode = next(iter(loader))
    support = {t.name: t.support for t in episode.tasks}
    query = loader.collate([i for t in episode.tasks for i in t.query_ids])
    return episode, support, query


def eval_embeddings(brain, batch):
    # x-vector statistics pooling adds Gaussian noise of ~1e-5 (even in eval mode): tolerances are 1e-4
    brain.modules.eval()
    with torch.no_grad():
        return brain.compute_forward(batch, sb.Stage.TEST)


def test_prototypes_are_class_means(corpus):
    brain, loader = make_brain(corpus, "protonet")
    _, support, query = first_episode(loader)
    fast = brain.strategy.adapt(support)
    assert dict(fast) == {} and fast.state["classes"] == list(support)
    for c, batch in enumerate(support.values()):
        mean = eval_embeddings(brain, batch).mean(0)
        assert torch.allclose(fast.state["prototypes"][c], mean, atol=1e-4)
    loss, log_probs = brain.strategy.forward(fast, query, Phase.EVAL)
    assert log_probs.shape == (len(query.id), 3)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(len(query.id)), atol=1e-5)
    # squared Euclidean: the logits are minus the squared distances to the class means
    emb = eval_embeddings(brain, query)
    d2 = torch.cdist(emb, fast.state["prototypes"]) ** 2
    assert torch.allclose(log_probs, torch.log_softmax(-d2, -1), atol=1e-3)
    assert loss is not None and float(loss.detach()) > 0


def test_matching_attention_sums_to_one_over_the_support(corpus):
    brain, loader = make_brain(corpus, "matching", matching_steps=2)
    _, support, query = first_episode(loader)
    fast = brain.strategy.adapt(support)
    n_support = sum(len(b.id) for b in support.values())
    emb = brain.strategy.embed({}, query, Phase.EVAL)
    weights = brain.strategy.head.attention(emb, fast.state)
    assert weights.shape == (len(query.id), n_support)
    assert (weights >= 0).all()
    assert torch.allclose(weights.sum(-1), torch.ones(len(query.id)), atol=1e-6)
    # class probabilities are the attention mass on each class's support examples
    log_probs = brain.strategy.head.scores(emb, fast.state)
    labels = fast.state["support_labels"]
    mass = torch.stack([weights[:, labels == c].sum(-1) for c in range(3)], -1)
    assert torch.allclose(log_probs.exp(), mass, atol=1e-5)
    # full-context embeddings read the whole support set: g(S) differs from the embeddings
    raw = torch.cat([eval_embeddings(brain, b) for b in support.values()])
    assert not torch.allclose(fast.state["support"], raw)


def test_matching_without_fce_attends_with_plain_cosine():
    head = MatchingHead(4, fce=False, scale=1.0)
    support = torch.eye(4)[:3]
    state = head.fit(support, torch.tensor([0, 1, 1]), 2)
    weights = head.attention(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), state)
    expected = torch.softmax(torch.tensor([1.0, 0.0, 0.0]), -1)
    assert torch.allclose(weights[0], expected, atol=1e-6)


@pytest.mark.parametrize("strategy, head_params", [
    ("protonet", []),
    ("matching", ["sbmeta_head.g_lstm.weight_ih_l0", "sbmeta_head.f_cell.weight_ih", "sbmeta_head.log_scale"]),
])
def test_episode_backward_trains_the_encoder_and_the_head(corpus, strategy, head_params):
    brain, loader = make_brain(corpus, strategy)
    episode = next(iter(loader))
    loss = brain.strategy.episode_backward(episode)
    assert torch.isfinite(loss)
    params = dict(brain.modules.named_parameters())
    grads = {n: p.grad for n, p in params.items()}
    assert grads["embedding_model.blocks.0.conv.weight"].abs().sum() > 0
    for name in head_params:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_a_class_twice_in_an_episode_is_an_error(corpus):
    brain, loader = make_brain(corpus, "protonet")
    episode = next(iter(loader))
    twice = Episode(episode.epoch, episode.index, episode.tasks + [episode.tasks[0]], len(episode.tasks) + 1)
    with pytest.raises(ValueError, match=f"holds class\\(es\\) {episode.tasks[0].name} more than once"):
        brain.strategy.episode_backward(twice)


def test_finetune_classifier_trains_a_softmax_then_fits_a_new_head(corpus):
    classes = [f"W{i}" for i in range(5)]
    brain, loader = make_brain(corpus, "finetune_classifier", word_classes=classes, classifier_steps=50)
    brain.fit(range(1, 2), loader, progressbar=False)
    head = brain.modules["sbmeta_classifier_head"]
    assert head.weight.shape == (5, 8)
    assert brain.strategy.pop_train_accuracy() is None  # read by the recipe at the end of the epoch
    _, support, query = first_episode(loader)
    fast = brain.strategy.adapt(support)
    assert fast.state["weight"].shape == (3, 8) and fast.state["classes"] == list(support)
    # the new head separates its own support set
    for c, batch in enumerate(support.values()):
        _, log_probs = brain.strategy.forward(fast, batch, Phase.EVAL)
        assert (log_probs.argmax(-1) == c).all()


def test_finetune_classifier_needs_the_training_classes(corpus):
    brain, loader = make_brain(corpus, "finetune_classifier")
    with pytest.raises(ValueError, match="word_classes"):
        brain.strategy.episode_backward(next(iter(loader)))


@pytest.mark.parametrize("extra, message", [
    (dict(emb_dim=None), "needs `emb_dim`"),
    (dict(metric_distance="manhattan"), "metric_distance must be one of"),
])
def test_configuration_errors_name_the_key(corpus, extra, message):
    with pytest.raises(ValueError, match=message):
        make_brain(corpus, "protonet", **extra)


def test_heads_refuse_support_sets_missing_a_class():
    for head in (PrototypeHead(2), MatchingHead(2), LinearHead(2, steps=1)):
        with pytest.raises(ValueError, match=r"classes \[2\] have no support example"):
            head.fit(torch.zeros(2, 2), torch.tensor([0, 1]), 3)


def test_cosine_prototypes_have_a_learned_scale():
    head = PrototypeHead(3, distance="cosine", scale=5.0)
    assert [n for n, _ in head.named_parameters()] == ["log_scale"]
    state = head.fit(torch.tensor([[1.0, 0, 0], [0, 2.0, 0]]), torch.tensor([0, 1]), 2)
    logits = head.scores(torch.tensor([[3.0, 0, 0]]), state)
    assert torch.allclose(logits, torch.log_softmax(torch.tensor([[5.0, 0.0]]), -1), atol=1e-5)


def test_evaluation_episodes_follow_eval_seed_not_the_training_seed(corpus, monkeypatch):
    # two training seeds must be scored on the same episodes (paired comparisons)
    import sb_meta.words.evaluation as evaluation

    seen = []
    real = evaluation.episode_accuracies

    def spy(*args, seed=0, **kwargs):
        seen.append(seed)
        return real(*args, seed=seed, **kwargs)

    monkeypatch.setattr(evaluation, "episode_accuracies", spy)
    for training_seed in (1, 2):
        brain, loader = make_brain(corpus, "protonet", seed=training_seed, eval_seed=77)
        episode, _, _ = first_episode(loader)
        ids = [i for t in episode.tasks for i in sorted(t.rows)]
        words = [t.name for t in episode.tasks for _ in t.rows]
        brain.collected = [(eval_embeddings(brain, loader.collate(ids)), ids, words)]
        brain.few_shot(sb.Stage.TEST)
    assert seen and set(seen) == {77}
