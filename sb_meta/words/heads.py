"""Classification heads over word embeddings: prototypes, matching networks, a linear layer.

A *head* turns the embeddings of a few labelled examples (the support set of
an N-way k-shot episode, or the recordings a user enrols) into a classifier
of new recordings. Every head has the same three verbs:

``fit(embeddings, labels, n_classes)``
    the task state (a dict of tensors) from the support set; differentiable
    for prototypical and matching networks, so meta-training backpropagates
    through it;
``scores(embeddings, state)``
    log-probabilities ``[batch, n_classes]`` of query embeddings;
``enrol(embeddings, labels, n_classes)``
    ``fit`` once more, kept in the head's buffers, so that ``head(emb)``
    classifies: this is what SpeechBrain's ``EncoderClassifier`` calls as its
    ``classifier`` module (``[batch, 1, dim]`` in, ``[batch, 1, classes]`` out).

The strategies of ``plugins/metric.py`` (``protonet``, ``matching``,
``finetune_classifier``) meta-train an encoder with these heads, and exported
word models (:mod:`sb_meta.words.model`) carry one as their ``classifier``.
A head's constructor arguments (:meth:`WordHead.config` plus ``embedding_dim``
and the sizes of its enrolment) are what the exported ``hyperparams.yaml``
declares.

Example
-------
>>> head = PrototypeHead(embedding_dim=2)
>>> emb = torch.tensor([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0]])
>>> state = head.fit(emb, torch.tensor([0, 0, 1]), n_classes=2)
>>> state["prototypes"]
tensor([[0., 1.],
        [4., 0.]])
>>> head.scores(torch.tensor([[3.0, 0.0]]), state).argmax(-1)
tensor([1])
>>> head.enrol(emb, torch.tensor([0, 0, 1]), n_classes=2)
>>> head(torch.tensor([[[3.0, 0.0]]])).shape
torch.Size([1, 1, 2])
"""

import math

import torch
import torch.nn.functional as F

__all__ = ["WordHead", "PrototypeHead", "MatchingHead", "LinearHead", "HEADS", "distances"]

DISTANCES = ("euclidean", "cosine")


def distances(queries, references, distance):
    """Similarity logits of every query to every reference, ``[Q, R]``.

    ``euclidean``: minus the squared Euclidean distance (Snell et al. 2017);
    ``cosine``: the cosine similarity.

    Example
    -------
    >>> distances(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "euclidean")
    tensor([[-0., -5.]])
    >>> distances(torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 0.0], [0.0, 2.0]]), "cosine")
    tensor([[1., 0.]])
    """
    if distance == "euclidean":
        return -(queries.unsqueeze(1) - references.unsqueeze(0)).pow(2).sum(-1)
    if distance == "cosine":
        return F.normalize(queries, dim=-1) @ F.normalize(references, dim=-1).t()
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def _check_labels(labels, n_classes, n):
    labels = torch.as_tensor(labels).long()
    if labels.dim() != 1 or labels.numel() != n:
        raise ValueError(f"need one label per embedding ({n}), got labels of shape {tuple(labels.shape)}")
    if n == 0:
        raise ValueError("no support embedding to fit a head on")
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got {labels.tolist()}")
    missing = sorted(set(range(n_classes)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no support example")
    return labels


class WordHead(torch.nn.Module):
    """Base class of the heads: a classifier over enrolled classes.

    Arguments
    ---------
    embedding_dim : int
        Size of the embeddings.
    n_classes : int
        Number of enrolled classes (0 for a head nothing was enrolled in).
    """

    #: names of the enrolment buffers (saved with the head, sized by the enrolment)
    buffers_of_state = ()

    def __init__(self, embedding_dim, n_classes=0):
        super().__init__()
        if int(embedding_dim) < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim!r}")
        self.embedding_dim = int(embedding_dim)
        self.n_classes = int(n_classes)

    def config(self):
        """Constructor arguments other than sizes (what an export's YAML declares)."""
        return {}

    def sizes(self):
        """Constructor arguments that depend on the enrolment."""
        return {"n_classes": self.n_classes}

    def fit(self, embeddings, labels, n_classes):
        """The task state of the support set ``embeddings`` (``[S, dim]``) with ``labels``."""
        raise NotImplementedError

    def scores(self, embeddings, state):
        """Log-probabilities ``[Q, n_classes]`` of ``embeddings`` under ``state``."""
        raise NotImplementedError

    def enrolment(self):
        """The enrolled state (the head's buffers)."""
        if self.n_classes == 0:
            raise RuntimeError("no class is enrolled in this head; enrol examples first")
        return {name: getattr(self, name) for name in self.buffers_of_state}

    def enrol(self, embeddings, labels, n_classes):
        """Fit on ``embeddings`` and keep the state as buffers (no gradient)."""
        with torch.no_grad():
            state = self.fit(embeddings.detach(), labels, n_classes)
        for name in self.buffers_of_state:
            self._buffers[name] = state[name].detach().clone()
        self.n_classes = int(n_classes)

    def forward(self, embeddings):
        """``EncoderClassifier``'s call: ``[B, 1, dim]`` (or ``[B, dim]``) -> log-probabilities."""
        squeeze = embeddings.dim() == 3
        x = embeddings.reshape(embeddings.shape[0], -1) if squeeze else embeddings
        out = self.scores(x, self.enrolment())
        return out.unsqueeze(1) if squeeze else out


class PrototypeHead(WordHead):
    """Prototypical networks (Snell et al. 2017): a class is the mean of its embeddings.

    Arguments
    ---------
    embedding_dim : int
    n_classes : int
    distance : str
        ``euclidean`` (squared, as in the paper) or ``cosine``.
    scale : float
        Logits are ``scale * similarity``; for ``cosine`` a learned parameter
        initialised to this value (cosine similarities lie in [-1, 1], too
        flat for a softmax), for ``euclidean`` a constant.
    learn_scale : bool
        Whether the cosine scale is learned.
    """

    buffers_of_state = ("prototypes",)

    def __init__(self, embedding_dim, n_classes=0, distance="euclidean", scale=None, learn_scale=True):
        super().__init__(embedding_dim, n_classes)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.distance = distance
        scale = (10.0 if distance == "cosine" else 1.0) if scale is None else float(scale)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.learn_scale = bool(learn_scale) and distance == "cosine"
        if self.learn_scale:
            self.log_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))
        else:
            self.register_buffer("log_scale", torch.tensor(math.log(scale)))
        self.register_buffer("prototypes", torch.zeros(self.n_classes, self.embedding_dim))

    def config(self):
        return {"distance": self.distance, "scale": float(self.log_scale.detach().exp()),
                "learn_scale": self.learn_scale}

    def fit(self, embeddings, labels, n_classes):
        labels = _check_labels(labels, n_classes, embeddings.shape[0]).to(embeddings.device)
        onehot = F.one_hot(labels, n_classes).to(embeddings.dtype)  # [S, N]
        prototypes = onehot.t() @ embeddings / onehot.sum(0).unsqueeze(1)
        return {"prototypes": prototypes}

    def scores(self, embeddings, state):
        logits = distances(embeddings, state["prototypes"], self.distance) * self.log_scale.exp()
        return torch.log_softmax(logits, dim=-1)


class MatchingHead(WordHead):
    """Matching networks (Vinyals et al. 2016) with full-context embeddings.

    A query is labelled by attention over the support set:
    ``P(y | x) = sum_i a(x, x_i) y_i`` with ``a = softmax(scale * cos(f(x), g(x_i)))``
    over the support examples ``i``. With full-context embeddings (``fce``):

    * ``g`` reads the whole support set with a bidirectional LSTM,
      ``g(x_i) = x_i + h_i^fwd + h_i^bwd`` (in the order of the support set:
      class by class, as enrolment gives it);
    * ``f`` refines the query with an attention LSTM over ``g(S)`` for
      ``steps`` steps: ``r = sum_i softmax(h . g(x_i)) g(x_i)``,
      ``h^, c = LSTMCell(x, (h + r, c))``, ``h = h^ + x``. The paper feeds
      ``[h, r]`` as the hidden state; summing them keeps the cell at the
      embedding size.

    Arguments
    ---------
    embedding_dim : int
    n_classes : int
    n_support : int
        Number of enrolled support examples (sizes the buffers).
    fce : bool
        Use full-context embeddings (otherwise ``f`` and ``g`` are the identity).
    steps : int
        Processing steps of the attention LSTM.
    distance : str
        ``cosine`` (as in the paper) or ``euclidean``.
    scale : float
        Initial value of the learned logit scale.
    """

    buffers_of_state = ("support", "support_labels")

    def __init__(self, embedding_dim, n_classes=0, n_support=0, fce=True, steps=3,
                 distance="cosine", scale=10.0):
        super().__init__(embedding_dim, n_classes)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps!r}")
        self.fce, self.steps, self.distance = bool(fce), int(steps), distance
        d = self.embedding_dim
        if self.fce:
            self.g_lstm = torch.nn.LSTM(d, d, batch_first=True, bidirectional=True)
            self.f_cell = torch.nn.LSTMCell(d, d)
        default = 10.0 if distance == "cosine" else 1.0
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(float(scale or default))))
        self.register_buffer("support", torch.zeros(int(n_support), d))
        self.register_buffer("support_labels", torch.zeros(int(n_support), dtype=torch.long))

    def config(self):
        return {"fce": self.fce, "steps": self.steps, "distance": self.distance,
                "scale": float(self.log_scale.detach().exp())}

    def sizes(self):
        return {"n_classes": self.n_classes, "n_support": int(self.support.shape[0])}

    def embed_support(self, embeddings):
        """``g``: full-context embeddings of the support set ``[S, dim]``."""
        if not self.fce:
            return embeddings
        out, _ = self.g_lstm(embeddings.unsqueeze(0))
        d = self.embedding_dim
        return embeddings + out[0, :, :d] + out[0, :, d:]

    def embed_query(self, embeddings, support):
        """``f``: query embeddings ``[Q, dim]`` refined by attention over ``support``."""
        if not self.fce:
            return embeddings
        h = torch.zeros_like(embeddings)
        c = torch.zeros_like(embeddings)
        for _ in range(self.steps):
            read = torch.softmax(h @ support.t(), dim=-1) @ support
            h_hat, c = self.f_cell(embeddings, (h + read, c))
            h = h_hat + embeddings
        return h

    def fit(self, embeddings, labels, n_classes):
        labels = _check_labels(labels, n_classes, embeddings.shape[0]).to(embeddings.device)
        return {"support": self.embed_support(embeddings), "support_labels": labels}

    def attention(self, embeddings, state):
        """Attention weights ``[Q, S]`` of each query over the support set (rows sum to one)."""
        support = state["support"]
        query = self.embed_query(embeddings, support)
        logits = distances(query, support, self.distance) * self.log_scale.exp()
        return torch.softmax(logits, dim=-1)

    def scores(self, embeddings, state):
        weights = self.attention(embeddings, state)
        n_classes = int(state["support_labels"].max()) + 1
        onehot = F.one_hot(state["support_labels"], n_classes).to(weights.dtype)
        probs = weights @ onehot  # [Q, N]
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


class LinearHead(WordHead):
    """A linear classifier fitted on the support embeddings (the fine-tuning baseline).

    ``fit`` trains a new softmax layer on the (detached) support embeddings
    with ``steps`` full-batch Adam steps from zero weights, with L2 weight
    decay; the encoder is not changed (Chen et al. 2019, "Baseline").

    Arguments
    ---------
    embedding_dim : int
    n_classes : int
    steps : int
        Optimisation steps.
    lr : float
        Adam step size.
    weight_decay : float
        L2 penalty on the weights.
    normalize : bool
        Fit on length-normalised embeddings (scaled by ``sqrt(dim)``).
    """

    buffers_of_state = ("weight", "bias")

    def __init__(self, embedding_dim, n_classes=0, steps=100, lr=0.01, weight_decay=1e-3,
                 normalize=True):
        super().__init__(embedding_dim, n_classes)
        self.steps, self.lr, self.weight_decay = int(steps), float(lr), float(weight_decay)
        self.normalize = bool(normalize)
        self.register_buffer("weight", torch.zeros(self.n_classes, self.embedding_dim))
        self.register_buffer("bias", torch.zeros(self.n_classes))

    def config(self):
        return {"steps": self.steps, "lr": self.lr, "weight_decay": self.weight_decay,
                "normalize": self.normalize}

    def _features(self, embeddings):
        if not self.normalize:
            return embeddings
        return F.normalize(embeddings, dim=-1) * math.sqrt(self.embedding_dim)

    def fit(self, embeddings, labels, n_classes):
        labels = _check_labels(labels, n_classes, embeddings.shape[0]).to(embeddings.device)
        x = self._features(embeddings.detach())
        weight = torch.zeros(n_classes, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
        bias = torch.zeros(n_classes, dtype=x.dtype, device=x.device, requires_grad=True)
        opt = torch.optim.Adam([weight, bias], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.steps):
                opt.zero_grad()
                loss = F.cross_entropy(x @ weight.t() + bias, labels)
                loss = loss + self.weight_decay * weight.pow(2).sum()
                loss.backward()
                opt.step()
        return {"weight": weight.detach(), "bias": bias.detach()}

    def scores(self, embeddings, state):
        logits = self._features(embeddings) @ state["weight"].t() + state["bias"]
        return torch.log_softmax(logits, dim=-1)


#: head classes by the name exports record
HEADS = {cls.__name__: cls for cls in (PrototypeHead, MatchingHead, LinearHead)}
