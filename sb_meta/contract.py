"""The values the plugin contract passes around: phases, predictions, fast weights.

Every hook in :mod:`sb_meta.hookspecs` is told the ``phase`` it runs in and,
where there is one, the ``task``; loss hooks receive the ``predictions`` of a
forward pass. This module defines those three things once.

Example
-------
>>> Phase.INNER.value, Phase("adapt") is Phase.ADAPT
('inner', True)
>>> fast = FastWeights({"w": torch.zeros(2)}, state={"prototypes": torch.ones(3, 2)})
>>> sorted(fast), fast.state["prototypes"].shape
(['w'], torch.Size([3, 2]))
"""

import enum
from dataclasses import dataclass, field

import torch

__all__ = ["Phase", "ASRPredictions", "FastWeights", "PredictionsError", "ADDON_KINDS", "CommandOption"]

#: what an add-on may declare it is (:attr:`sb_meta.strategy.AddOn.kind`); ``"test_time"``: a
#: test-time method (:class:`sb_meta.adapt.testtime.TestTimeMethod`)
ADDON_KINDS = ("adapter", "compressor", "test_time")


class Phase(str, enum.Enum):
    """Where a forward pass (and the hooks it calls) happens.

    ``INNER``
        an inner-loop step of meta-training, on a task's support set;
    ``OUTER``
        the outer objective of meta-training (a task's query set, or the
        pooled batch of the ``joint`` / ``finetune`` baselines);
    ``ADAPT``
        test-time adaptation of a trained or loaded model to a new task;
    ``EVAL``
        validation and test forwards (no loss hook, no batch transform unless
        a plugin asks for it).
    """

    INNER = "inner"
    OUTER = "outer"
    ADAPT = "adapt"
    EVAL = "eval"

    @property
    def trains(self):
        """Whether parameters are updated from this phase's loss."""
        return self is not Phase.EVAL


class PredictionsError(TypeError):
    """A plugin needs a field of :class:`ASRPredictions` the recipe does not provide."""


@dataclass
class ASRPredictions:
    """What an ASR brain's ``compute_forward`` returns, in training and at test time.

    The recipes' brains and the test-time adaptation brain return this, so
    add-ons can rely on its fields in every phase.

    Attributes
    ----------
    log_probs : torch.Tensor or None
        CTC log-probabilities ``[batch, frames, outputs]`` (None without a CTC head).
    lengths : torch.Tensor
        Relative lengths ``[batch]`` of ``log_probs`` and ``encoder_out``
        (SpeechBrain's convention: 1.0 for the longest).
    encoder_out : torch.Tensor or None
        The encoder's output ``[batch, frames, features]`` (what a CTC head or an
        attention decoder reads).
    seq_log_probs : torch.Tensor or None
        Teacher-forced attention-decoder log-probabilities
        ``[batch, tokens + 1, outputs]`` (None without an attention decoder).
    extra : dict
        Anything else a recipe wants to hand to its ``compute_objectives``.

    Example
    -------
    >>> p = ASRPredictions(torch.zeros(2, 5, 4), torch.ones(2), torch.zeros(2, 5, 8))
    >>> ASRPredictions.coerce(p) is p
    True
    >>> ASRPredictions.coerce((torch.zeros(2, 5, 4), torch.ones(2))).encoder_out is None
    True
    >>> ASRPredictions.coerce((torch.zeros(1, 2, 3), torch.ones(1))).require("encoder_out", "dann")
    Traceback (most recent call last):
    ...
    sb_meta.contract.PredictionsError: dann needs predictions.encoder_out, ...
    """

    log_probs: torch.Tensor = None
    lengths: torch.Tensor = None
    encoder_out: torch.Tensor = None
    seq_log_probs: torch.Tensor = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def coerce(cls, predictions):
        """An :class:`ASRPredictions` from what a ``compute_forward`` returned.

        Accepts the structure itself, a ``(log_probs, lengths)`` tuple (plain
        SpeechBrain CTC recipes) or a dict with ``log_probs`` / ``p_ctc``,
        ``lengths`` / ``wav_lens`` and optionally ``encoder_out``,
        ``seq_log_probs`` / ``p_seq``.
        """
        if isinstance(predictions, cls):
            return predictions
        if isinstance(predictions, (tuple, list)) and len(predictions) >= 2:
            return cls(log_probs=predictions[0], lengths=predictions[1])
        if isinstance(predictions, dict):
            get = predictions.get
            return cls(
                log_probs=get("log_probs", get("p_ctc")),
                lengths=get("lengths", get("wav_lens")),
                encoder_out=get("encoder_out"),
                seq_log_probs=get("seq_log_probs", get("p_seq")),
            )
        raise PredictionsError(
            f"cannot read {type(predictions).__name__} predictions; return "
            "sb_meta.ASRPredictions from compute_forward"
        )

    def require(self, name, who):
        """The field ``name``, or a :class:`PredictionsError` naming ``who`` needs it."""
        value = getattr(self, name)
        if value is None:
            raise PredictionsError(
                f"{who} needs predictions.{name}, but the recipe's compute_forward does not "
                f"provide it; return sb_meta.ASRPredictions(log_probs=..., lengths=..., "
                f"encoder_out=...) from compute_forward"
            )
        return value


class FastWeights(dict):
    """One task's adapted parameters, ``{name: tensor}``, plus non-parametric state.

    :meth:`sb_meta.strategy.Strategy.adapt` returns this. Gradient strategies
    fill the dict; strategies with task state that is not a parameter (the
    class prototypes of a prototypical network, a learned optimizer's memory)
    keep it in :attr:`state`, which the same strategy's forward reads.

    Arguments
    ---------
    params : dict, optional
        Adapted tensors keyed as in ``brain.modules.named_parameters()``.
    state : dict, optional
        Anything else the task's adaptation produced.
    """

    def __init__(self, params=(), state=None):
        super().__init__(params)
        self.state = dict(state or {})

    def replace(self, params):
        """A new :class:`FastWeights` with ``params`` and the same state."""
        return FastWeights(params, self.state)


@dataclass(frozen=True)
class CommandOption:
    """A command-line option an add-on adds to ``sb-meta adapt``.

    Add-ons list them in :attr:`sb_meta.strategy.AddOn.command_options`; the
    command builds its options from every registered add-on's, so the core
    names no add-on. Several add-ons may declare the same flag (adapters
    sharing ``--peft``, their shared ``--peft-rank``) when their declarations
    agree.

    Attributes
    ----------
    flag : str
        The option, e.g. ``"--compress"``.
    help : str
        Its help text.
    key : str, optional
        The add-on option (one of its ``options``) the value sets, parsed by
        ``parse`` as the command line is read.
    parse : callable, optional
        ``str -> value`` (default, None: the string itself). Without ``key`` it returns a
        dict of option values, and raises ``ValueError`` naming the flag for a
        value it does not understand.
    metavar : str, optional
        How the help names the value.
    selects : bool
        The value is the name of an add-on: every add-on declaring this flag
        with ``selects`` is one of its choices, and the chosen one is
        activated first (``--peft lora``).
    activates : bool
        Giving the flag activates the add-on declaring it (``--compress int8``).

    Example
    -------
    >>> CommandOption("--peft-rank", "adapter rank", key="peft_rank", parse=int).parse("4")
    4
    """

    flag: str
    help: str = ""
    key: str = None
    parse: object = None
    metavar: str = None
    selects: bool = False
    activates: bool = False

    def __post_init__(self):
        if self.parse is None:
            # the default is set here, not as the field's default: a class attribute holding
            # ``str`` is documented by autodoc as a method of this class (a duplicate entry)
            object.__setattr__(self, "parse", str)
        if not (isinstance(self.flag, str) and self.flag.startswith("--") and len(self.flag) > 2):
            raise ValueError(f"command option {self.flag!r}: a flag is a long option such as '--name'")
        if self.selects and (self.key is not None or self.activates):
            raise ValueError(f"command option {self.flag}: a flag that selects an add-on sets no key "
                             "and activates none itself")
