"""Built-in metric-based strategies: prototypical networks, matching networks and
the fine-tuned-classifier baseline, for few-shot classification of recordings.

Tasks are **classes** (``task_column: word``): an episode of
``meta_batch_tasks`` = N tasks with ``k_support`` / ``k_query`` utterances each
is an N-way k-shot episode. The recipe's ``compute_forward`` returns one
embedding per utterance (``[batch, dim]``); the strategy's head
(:mod:`sb_meta.words.heads`) turns the support embeddings into the task state
(:attr:`sb_meta.contract.FastWeights.state`: the prototypes, the matching
network's support memory, a fitted linear layer) and classifies the queries by
distance to it. No parameter is adapted per task, so ``adapt`` returns empty
fast weights with that state.

The strategies' ``options`` (keys of the recipe's hparams, validated when the
brain is built, :class:`sb_meta.options.Configurable`):

``emb_dim``
    embedding size of the encoder (required);
``metric_distance``
    ``euclidean`` (protonet's default) or ``cosine`` (matching's default);
``metric_scale``
    initial logit scale for cosine similarities (learned; default 10);
``matching_fce`` / ``matching_steps``
    full-context embeddings on/off (default on) and attention-LSTM steps (3);
``word_classes``
    the meta-train classes (``finetune_classifier`` trains a softmax over them;
    the AN4Words recipe sets it from the training manifest);
``classifier_steps`` / ``classifier_lr``
    how the baseline fits its new linear head on a support set (100, 0.01).

Distributed training shards an episode's classes over the processes; each
process then classifies among its own share (use ``meta_batch_tasks`` that
leaves at least two classes per process).
"""

import contextlib

import torch
import torch.nn.functional as F

from sb_meta.contract import FastWeights, Phase
from sb_meta.plugins import hookimpl
from sb_meta.strategy import Strategy
from sb_meta.words.heads import DISTANCES, LinearHead, MatchingHead, PrototypeHead


class _Embed(torch.nn.Module):
    """``compute_forward`` of a brain as a module, for ``functional_call``."""

    def __init__(self, brain):
        super().__init__()
        self.m = brain.modules
        object.__setattr__(self, "_brain", brain)

    def forward(self, batch, stage):
        return self._brain.compute_forward(batch, stage)


class MetricStrategy(Strategy):
    """Classify queries by a head fitted on the support embeddings.

    Subclasses set ``name`` and build their head in :meth:`make_head`.
    ``adapt(support)`` takes one batch per class (a list, in class order, or
    a dict ``{class name: batch}``) and returns :class:`FastWeights` whose
    ``state`` holds the head's task state and ``state["classes"]`` the class
    names; :meth:`forward` classifies a batch with it. Meta-training embeds
    each episode's support and query utterances in one batch, fits the head
    on the support and backpropagates the query cross-entropy.
    """

    default_first_order = True
    #: not an ASR adaptation method (``sb-meta adapt`` refuses it)
    adapts_at_test_time = False
    options = {"emb_dim": None, "metric_distance": None, "metric_scale": None}

    def __init__(self, brain, config):
        super().__init__(brain, config)
        dim = self.option("emb_dim")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(
                f"strategy {self.name!r} classifies words from embeddings (few-shot spoken terms, "
                f"recipes/AN4Words) and needs `emb_dim` (the encoder's embedding size, an "
                f"integer >= 1) in the recipe's hparams, got {dim!r}; a speech recognizer's "
                "recipe wants an ASR strategy (maml, fomaml, reptile, metasgd, anil, meta_lstm, joint, finetune)"
            )
        self.emb_dim = dim
        self.head = self.make_head()
        self._correct = 0
        self._seen = 0

    # ------------------------------------------------------------ configuration
    def distance(self):
        """The ``metric_distance`` option, checked."""
        value = self.option("metric_distance")
        if value not in DISTANCES:
            raise ValueError(f"metric_distance must be one of {DISTANCES}, got {value!r}")
        return value

    def make_head(self):
        """The head (its learnable parts are meta-learned with the encoder)."""
        raise NotImplementedError

    def meta_modules(self):
        return {"head": self.head}

    # ------------------------------------------------------------ embeddings
    def embed(self, params, batch, phase, task=None):
        """Embeddings ``[batch, dim]`` of ``batch`` (``params`` swapped in, if any)."""
        batch = self.brain.transform_batch(batch, task, phase)
        training = phase in (Phase.INNER, Phase.OUTER)
        stage = self.brain.meta_stage if training else _eval_stage()
        with contextlib.ExitStack() as stack:
            if not training:  # test time: dropout off, BatchNorm on its running statistics
                stack.enter_context(_eval_mode(self.brain.modules))
            if params:
                module = _Embed(self.brain)
                prefixed = {f"m.{k}": v for k, v in params.items()}
                out = torch.func.functional_call(module, prefixed, (batch, stage), strict=False)
            else:
                out = self.brain.compute_forward(batch, stage)
        return _as_matrix(out, self.name)

    @staticmethod
    def _by_class(support):
        if isinstance(support, dict):
            return list(support), list(support.values())
        batches = list(support) if isinstance(support, (list, tuple)) else [support]
        names = []
        for i, batch in enumerate(batches):
            words = getattr(batch, "word", None)
            names.append(str(words[0]) if words else str(i))
        return names, batches

    # ------------------------------------------------------------ the verbs
    def adapt(self, support, steps=None, lr=None, create_graph=False, names=None,
              task=None, phase=Phase.ADAPT, update_statistics=False):
        """The task state of ``support`` (one batch per class).

        Returns
        -------
        FastWeights
            No adapted parameter; ``state`` holds the head's state and
            ``classes`` (the class names, in label order).
        """
        classes, batches = self._by_class(support)
        if len(classes) < 2:
            raise ValueError(f"{self.name}: a support set needs at least two classes, got {classes}")
        embeddings = [self.embed({}, b, phase, task) for b in batches]
        labels = torch.cat([torch.full((e.shape[0],), i, dtype=torch.long) for i, e in enumerate(embeddings)])
        state = self.head.fit(torch.cat(embeddings), labels, len(classes))
        state["classes"] = classes
        return self.brain.after_adapt(FastWeights({}, state), task, phase)

    def forward(self, params, batch, phase, task=None):
        """``(loss, log_probs)``: the query cross-entropy (None when the batch has
        no ``word`` among ``params.state["classes"]``) and ``[batch, classes]``."""
        state = getattr(params, "state", {}) or {}
        if "classes" not in state:
            raise ValueError(f"{self.name}: forward needs the state adapt() returned")
        emb = self.embed(dict(params), batch, phase, task)
        log_probs = self.head.scores(emb, state)
        loss = None
        words = getattr(batch, "word", None)
        if words is not None and all(str(w) in state["classes"] for w in words):
            target = torch.tensor([state["classes"].index(str(w)) for w in words], device=emb.device)
            loss = F.nll_loss(log_probs, target)
        return loss, log_probs

    def episode_backward(self, episode, scale=1.0):
        tasks = _one_per_class(episode.tasks)
        if len(tasks) < 2:
            raise ValueError(
                f"{self.name}: an episode needs at least two classes (tasks) per process, got "
                f"{len(tasks)}; raise meta_batch_tasks"
            )
        if any(not t.query_ids for t in tasks):
            raise ValueError(f"{self.name}: episodes need query utterances (k_query >= 1)")
        support_ids = [i for t in tasks for i in t.support_ids]
        query_ids = [i for t in tasks for i in t.query_ids]
        batch = tasks[0].collate(support_ids + query_ids)
        emb = self.embed({}, batch, Phase.OUTER)
        s_labels = torch.cat([torch.full((len(t.support_ids),), c) for c, t in enumerate(tasks)])
        q_labels = torch.cat([torch.full((len(t.query_ids),), c) for c, t in enumerate(tasks)])
        n_s = len(support_ids)
        loss, log_probs = self.episode_loss(emb[:n_s], s_labels.to(emb.device), emb[n_s:],
                                            q_labels.to(emb.device), len(tasks))
        loss = self.brain.add_loss_terms(batch, emb, loss, None, Phase.OUTER)
        self.brain.check_loss_isfinite(loss)
        (loss * (scale * len(tasks) / episode.n_global_tasks)).backward()
        self._count(log_probs, q_labels)
        return loss.detach()

    def episode_loss(self, support, s_labels, queries, q_labels, n_classes):
        """``(loss, log_probs)`` of one episode's embeddings."""
        state = self.head.fit(support, s_labels, n_classes)
        log_probs = self.head.scores(queries, state)
        return F.nll_loss(log_probs, q_labels), log_probs

    def _count(self, log_probs, labels):
        self._correct += int((log_probs.argmax(-1).cpu() == labels.cpu()).sum())
        self._seen += int(labels.numel())

    def pop_train_accuracy(self):
        """Query accuracy over the training episodes since the last call (None if none)."""
        acc = self._correct / self._seen if self._seen else None
        self._correct = self._seen = 0
        return acc

    def task_backward(self, task, weight):  # pragma: no cover - episode_backward is used
        raise NotImplementedError(f"{self.name} trains on whole episodes (episode_backward)")


def _one_per_class(tasks):
    """The episode's tasks, checked to hold each class once (sb-meta's sampler never
    repeats a task in an episode; two "classes" that are one word would contradict
    each other)."""
    names = [t.name for t in tasks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"an N-way episode holds class(es) {', '.join(twice)} more than once")
    return tasks


@contextlib.contextmanager
def _eval_mode(modules):
    saved = [(m, m.training) for m in modules.modules()]
    modules.eval()
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


def _eval_stage():
    import speechbrain as sb

    return sb.Stage.TEST


def _as_matrix(out, who):
    if isinstance(out, dict):
        out = out.get("embeddings")
    if not torch.is_tensor(out):
        raise TypeError(f"{who}: compute_forward must return the embeddings [batch, dim], got {type(out).__name__}")
    if out.dim() == 3 and out.shape[1] == 1:
        out = out[:, 0]
    if out.dim() != 2:
        raise ValueError(f"{who}: compute_forward must return embeddings [batch, dim], got shape {tuple(out.shape)}")
    return out


class ProtoNet(MetricStrategy):
    """Prototypical networks: classes are the means of their support embeddings
    (squared Euclidean distance by default, ``metric_distance: cosine`` with a
    learned scale)."""

    name = "protonet"
    options = {"metric_distance": "euclidean"}

    def make_head(self):
        distance = self.distance()
        scale = self.option("metric_scale") if distance == "cosine" else None
        return PrototypeHead(self.emb_dim, distance=distance, scale=scale)


class MatchingNet(MetricStrategy):
    """Matching networks with full-context embeddings: attention over the
    support set (a bidirectional LSTM over the support, an attention LSTM for
    the query; cosine similarity with a learned scale)."""

    name = "matching"
    options = {"metric_distance": "cosine", "metric_scale": 10.0, "matching_fce": True, "matching_steps": 3}

    def make_head(self):
        steps = self.option("matching_steps")
        return MatchingHead(self.emb_dim, fce=bool(self.option("matching_fce")), steps=steps,
                            distance=self.distance(), scale=self.option("metric_scale"))


class ClassifierBaseline(MetricStrategy):
    """The fine-tuned-classifier baseline: the encoder is trained with a softmax
    layer over the meta-train classes (``word_classes``, pooled batches of each
    episode's utterances); for a new task a new linear layer is fitted on the
    support embeddings (``classifier_steps`` Adam steps, ``classifier_lr``), the
    encoder unchanged."""

    name = "finetune_classifier"
    options = {"word_classes": None, "classifier_steps": 100, "classifier_lr": 0.01}

    def __init__(self, brain, config):
        super().__init__(brain, config)
        classes = self.option("word_classes")
        self.classes = [str(c) for c in classes] if classes else []
        self.train_head = (
            torch.nn.Linear(self.emb_dim, len(self.classes)) if len(self.classes) >= 2 else None
        )

    def make_head(self):
        return LinearHead(self.emb_dim, steps=self.option("classifier_steps"),
                          lr=self.option("classifier_lr"))

    def meta_modules(self):
        return {"classifier_head": self.train_head} if self.train_head is not None else {}

    def episode_backward(self, episode, scale=1.0):
        if self.train_head is None:
            raise ValueError(
                "finetune_classifier trains a softmax over the meta-train classes: set "
                "`word_classes` (two or more) in the hparams"
            )
        tasks = _one_per_class(episode.tasks)
        if not tasks:
            return torch.tensor(0.0)
        unknown = [t.name for t in tasks if t.name not in self.classes]
        if unknown:
            raise ValueError(f"finetune_classifier: classes {unknown} are not in word_classes")
        ids = [i for t in tasks for i in t.support_ids + t.query_ids]
        labels = torch.cat([
            torch.full((len(t.support_ids) + len(t.query_ids),), self.classes.index(t.name)) for t in tasks
        ])
        batch = tasks[0].collate(ids)
        emb = self.embed({}, batch, Phase.OUTER)
        head = self.brain.modules["sbmeta_classifier_head"]
        logits = head(emb)
        labels = labels.to(emb.device)
        loss = F.cross_entropy(logits, labels)
        loss = self.brain.add_loss_terms(batch, emb, loss, None, Phase.OUTER)
        self.brain.check_loss_isfinite(loss)
        (loss * (scale * len(tasks) / episode.n_global_tasks)).backward()
        self._count(logits, labels)
        return loss.detach()


@hookimpl
def sbmeta_strategies():
    return [ProtoNet, MatchingNet, ClassifierBaseline]
