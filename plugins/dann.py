"""Domain-adversarial training (DANN, Ganin & Lempitsky 2015) as an add-on.

A domain classifier reads the encoder output (``ASRPredictions.encoder_out``,
averaged over each utterance's valid frames) through a **gradient reversal
layer**: the classifier learns to tell the domains apart, while the encoder
receives the reversed, scaled gradient and learns features the classifier
cannot separate (speaker-, accent- or channel-invariant features). It composes
with any strategy::

    meta_strategy: joint          # or fomaml, maml, ...
    meta_addons: [dann]
    dann_column: accent           # any manifest column: spk_id, accent, lang, a channel
    dann_weight: 0.1

The domain loss is added to the outer objective (the query loss of a
meta-learner, the pooled loss of ``joint`` / ``finetune``) and, with
``dann_phases: [outer, inner]``, to the inner loop too (where a task is usually
one domain, so the classifier only pushes the adapted encoder toward features
that do not identify it; strategies without an outer forward, ``reptile``,
need ``inner``). It appears in the training log as ``outer_dann_domain``
(``inner_dann_domain``).

Domain labels
    The label of an utterance is ``task.rows[utt_id][dann_column]`` (its
    manifest row; ``batch.id`` gives the utterance ids; the pooled task of
    ``joint_pooled`` holds every row of the episode). The label vocabulary is
    grown lazily in the order labels are first seen, up to ``dann_max_domains``
    (the classifier's fixed number of outputs; an error names the option when
    more appear). The vocabulary is stored in the classifier's state
    (``get_extra_state``), so it is checkpointed and restored with it and a
    resumed run keeps the same label indices.
Reversal schedule
    ``lambda = dann_lambda * (2 / (1 + exp(-dann_gamma * p)) - 1)`` (Ganin &
    Lempitsky's schedule, 0 -> ``dann_lambda``) with ``p`` the training
    progress in [0, 1]: ``train_minutes / train_budget_minutes`` when a
    training budget is set; otherwise ``optimizer_step / dann_schedule_steps``;
    with ``dann_schedule_steps: null`` the number of steps is read from the
    recipe (``number_of_epochs`` x episodes per epoch / gradient accumulation);
    when nothing tells how long training is (test-time adaptation) ``p = 1``.
    ``dann_schedule: constant`` uses ``dann_lambda`` throughout.
The classifier
    ``Linear(features, dann_hidden) -> ReLU -> Linear(dann_hidden,
    dann_max_domains)``, owned by the add-on (``sbmeta_modules``): trained by
    the outer optimizer, checkpointed with the brain, never adapted by the
    inner loop and never exported. ``dann_input_size: null`` infers the
    feature size from the first forward (a lazy layer); give it explicitly to
    have the parameters before training starts.

Example
-------
>>> x = torch.ones(2, 3, requires_grad=True)
>>> (grad_reverse(x, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
>>> x.grad[0]
tensor([-0.5000, -1.0000, -1.5000])
>>> round(ganin_lambda(0.0), 3), round(ganin_lambda(0.5), 3), round(ganin_lambda(1.0), 4)
(0.0, 0.987, 0.9999)
"""

import logging
import math
import warnings

import torch
from speechbrain.dataio.dataio import length_to_mask

from sb_meta.contract import ASRPredictions, Phase
from sb_meta.plugins import hookimpl
from sb_meta.strategy import AddOn

logger = logging.getLogger(__name__)

__all__ = ["GradientReversal", "grad_reverse", "ganin_lambda", "masked_mean", "DomainClassifier", "DANN"]



class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``-scale``.

    The backward is made of ordinary differentiable operations, so the layer
    also works inside second-order inner loops (``create_graph=True``).
    """

    @staticmethod
    def forward(x, scale):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.scale = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def grad_reverse(x, scale=1.0):
    """``x`` unchanged, with its gradient reversed and scaled by ``scale`` (``-scale * grad``)."""
    return GradientReversal.apply(x, float(scale))


def ganin_lambda(progress, gamma=10.0):
    """``2 / (1 + exp(-gamma * p)) - 1``: the reversal weight at training progress ``p`` in [0, 1]."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-float(gamma) * p)) - 1.0


def masked_mean(features, lengths=None):
    """Mean of ``features`` ``[batch, frames, ...]`` over each utterance's valid frames.

    ``lengths`` are SpeechBrain's relative lengths (1.0 for the longest);
    trailing feature dimensions are flattened.

    Example
    -------
    >>> f = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    >>> masked_mean(f, torch.tensor([2 / 3, 1.0]))
    tensor([[2.],
            [4.]])
    """
    feats = features.flatten(2) if features.dim() > 3 else features
    if feats.dim() == 2:
        return feats
    if lengths is None:
        return feats.mean(1)
    frames = feats.shape[1]
    n = torch.round(lengths.to(feats.device).float() * frames).clamp(1, frames)
    mask = length_to_mask(n, max_len=frames, dtype=feats.dtype, device=feats.device)
    return (feats * mask[..., None]).sum(1) / n[:, None].to(feats.dtype)


class DomainClassifier(torch.nn.Module):
    """A two-layer classifier over pooled encoder features, and its label vocabulary.

    Arguments
    ---------
    n_domains : int
        Number of outputs (the most domains it can tell apart).
    hidden : int
        Hidden units.
    input_size : int, optional
        Feature size; None: inferred on the first forward.

    Example
    -------
    >>> clf = DomainClassifier(4, 8, input_size=3)
    >>> clf.indices(["spk1", "spk2", "spk1"]).tolist()
    [0, 1, 0]
    >>> clf2 = DomainClassifier(4, 8, input_size=3)
    >>> _ = clf2.load_state_dict(clf.state_dict())
    >>> clf2.domains
    ['spk1', 'spk2']
    """

    def __init__(self, n_domains, hidden, input_size=None):
        super().__init__()
        if input_size is None:
            with warnings.catch_warnings():  # "Lazy modules are a new feature..."
                warnings.simplefilter("ignore", UserWarning)
                first = torch.nn.LazyLinear(hidden)
        else:
            first = torch.nn.Linear(int(input_size), hidden)
        self.net = torch.nn.Sequential(first, torch.nn.ReLU(), torch.nn.Linear(hidden, n_domains))
        self.n_domains = int(n_domains)
        self.domains = []

    def forward(self, features):
        return self.net(features)

    def indices(self, labels, device=None):
        """Class indices of ``labels``, adding unseen labels to the vocabulary."""
        index = {d: i for i, d in enumerate(self.domains)}
        out = []
        for label in labels:
            key = str(label)
            if key not in index:
                if len(self.domains) >= self.n_domains:
                    raise ValueError(
                        f"dann: more than dann_max_domains={self.n_domains} domains in the "
                        f"training data (new label {key!r}); raise dann_max_domains"
                    )
                index[key] = len(self.domains)
                self.domains.append(key)
            out.append(index[key])
        return torch.tensor(out, dtype=torch.long, device=device)

    def get_extra_state(self):
        return {"domains": list(self.domains)}

    def set_extra_state(self, state):
        self.domains = [str(d) for d in (state or {}).get("domains", [])]


class DANN(AddOn):
    """Domain-adversarial training: gradient reversal + domain classifier on the encoder output."""

    name = "dann"
    options = {
        "dann_column": "spk_id",
        "dann_weight": 1.0,
        "dann_lambda": 1.0,
        "dann_schedule": "ganin",
        "dann_gamma": 10.0,
        "dann_schedule_steps": None,
        "dann_hidden": 256,
        "dann_input_size": None,
        "dann_max_domains": 1024,
        "dann_phases": ["outer"],
    }

    def __init__(self, brain, config):
        super().__init__(brain, config)
        self.column = str(self.option("dann_column"))
        self.weight = self.number_option("dann_weight", 0.0)
        self.lambda_max = self.number_option("dann_lambda", 0.0)
        self.gamma = self.number_option("dann_gamma", 0.0)
        self.schedule = str(self.option("dann_schedule"))
        if self.schedule not in ("ganin", "constant"):
            raise ValueError(f"dann_schedule must be 'ganin' or 'constant', got {self.schedule!r}")
        self.schedule_steps = self.integer_option("dann_schedule_steps")
        self.hidden = self.integer_option("dann_hidden")
        self.input_size = self.integer_option("dann_input_size")
        self.max_domains = self.integer_option("dann_max_domains")
        self.phases = self.phases_option("dann_phases")
        self.last_lambda = None
        self._warned = False

    # ---------------------------------------------------------------- schedule
    def total_steps(self, brain):
        """Outer steps training will take, from the options or the recipe (None if unknown)."""
        if self.schedule_steps is not None:
            return self.schedule_steps
        hp = getattr(brain, "hparams", None)
        epochs = getattr(hp, "number_of_epochs", None) if hp is not None else None
        per_epoch = (getattr(brain, "meta_config", None) or {}).get("episodes_per_epoch")
        if per_epoch is None:
            loader = getattr(brain, "train_sampler", None)
            try:
                per_epoch = len(loader) if loader is not None else None
            except TypeError:
                per_epoch = None
        if not epochs or not per_epoch:
            return None
        accumulation = max(int(getattr(brain, "grad_accumulation_factor", 1) or 1), 1)
        return int(epochs) * math.ceil(int(per_epoch) / accumulation)

    def progress(self, brain):
        """Training progress ``p`` in [0, 1] (see the module documentation)."""
        budget = (getattr(brain, "meta_config", None) or {}).get("train_budget_minutes")
        if budget:
            return min(1.0, float(getattr(brain, "train_minutes", 0.0)) / float(budget))
        total = self.total_steps(brain)
        if not total:
            if not self._warned:
                logger.info("dann: the length of training is unknown; reversal weight at its maximum")
                self._warned = True
            return 1.0
        return min(1.0, float(getattr(brain, "optimizer_step", 0)) / total)

    def reversal_weight(self, brain):
        """The current reversal weight ``lambda``."""
        if self.schedule == "constant":
            return self.lambda_max
        return self.lambda_max * ganin_lambda(self.progress(brain), self.gamma)

    # ---------------------------------------------------------------- hooks
    @hookimpl
    def sbmeta_modules(self, brain):
        """The domain classifier (in the dtype of the model's parameters)."""
        clf = DomainClassifier(self.max_domains, self.hidden, self.input_size)
        dtype = next((p.dtype for p in brain.modules.parameters() if p.is_floating_point()), None)
        return {"classifier": clf.to(dtype) if dtype is not None else clf}

    @hookimpl
    def sbmeta_loss(self, brain, batch, predictions, task, phase):
        """``dann_weight`` x cross-entropy of the domain classifier behind the reversal layer."""
        if Phase(phase).value not in self.phases:
            return None
        if task is None:
            raise ValueError(
                f"dann needs the task's manifest rows for the column {self.column!r}, but the "
                f"{Phase(phase).value} phase ran without a task"
            )
        pred = ASRPredictions.coerce(predictions)
        encoder_out = pred.require("encoder_out", self.name)
        labels = [task.value(uid, self.column) for uid in batch.id]
        clf = brain.modules["sbmeta_addons"][self.name]["classifier"]
        target = clf.indices(labels, device=encoder_out.device)
        feats = masked_mean(encoder_out, pred.lengths)
        self.last_lambda = self.reversal_weight(brain)
        logits = clf(grad_reverse(feats, self.last_lambda).to(next(clf.net[-1].parameters()).dtype))
        return {"domain": self.weight * torch.nn.functional.cross_entropy(logits, target)}








@hookimpl
def sbmeta_addons():
    return [DANN]
