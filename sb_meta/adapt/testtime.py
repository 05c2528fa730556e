"""The contract of a test-time method: an add-on that changes how a model adapts to its support.

A test-time method is an :class:`~sb_meta.strategy.AddOn` declaring
``kind = "test_time"`` (subclass :class:`TestTimeMethod`), registered through
the ``sbmeta_addons`` hook like any add-on. Named in a
:class:`~sb_meta.adapt.method.Method` (``Method(addons=["entropy"])``, or its
bare name: ``Method.parse("entropy")``, ``sb-meta evaluate --methods entropy``)
or on ``sb-meta adapt`` (the flags it declares in ``command_options``, e.g.
``--unsupervised NAME``), it acts on an :class:`AdaptationRun` in two steps:

1. :meth:`TestTimeMethod.prepare`, before any update and without gradients:
   it may change the adapted copy's modules (re-estimate input statistics),
   give the support labels (pseudo-labels) or stop the adaptation (the model
   comes back unchanged);
2. :meth:`TestTimeMethod.update`: the update itself, or None to leave it to the
   strategy's gradient steps on the support's labels (when it has some).

Whether the support transcripts are read at all is the method's to say
(:meth:`TestTimeMethod.reads_transcripts`); when an active test-time method
reads none, adaptation never sees them. What a method returns from its
steps is recorded in the adaptation record under ``test_time[name]``, and
:meth:`TestTimeMethod.describe` turns it into the lines ``sb-meta adapt``
prints. The built-ins (``entropy``, ``pseudo``, ``cmvn``) live in
``plugins/testtime.py`` and use nothing more than this contract.

Example
-------
>>> class Louder(TestTimeMethod):  # a third-party method: scale the support audio
...     name, options = "louder", {"louder_gain": 2.0}
...     def prepare(self, run):
...         run.wavs = [w * self.number_option("louder_gain", 0.0) for w in run.wavs]
...         return {"gain": self.option("louder_gain")}
>>> Louder.kind, Louder.reads_transcripts({})
('test_time', True)
"""

from dataclasses import dataclass, field

from sb_meta.strategy import AddOn

__all__ = ["TestTimeMethod", "AdaptationRun", "reads_transcripts"]


class TestTimeMethod(AddOn):
    """Base of the test-time methods (see the module documentation).

    Subclasses set ``name`` and ``options`` as any add-on, and implement
    :meth:`prepare` and/or :meth:`update`.
    """

    kind = "test_time"
    __test__ = False  # a contract, not a test class (its name starts with "Test")

    @classmethod
    def reads_transcripts(cls, config):
        """Whether adaptation with this method reads the support transcripts, under the
        add-on settings ``config`` (default True: it works with them)."""
        return True

    def prepare(self, run):
        """Act on ``run`` (an :class:`AdaptationRun`) before the update, without gradients.

        Returns
        -------
        dict or None
            What to record (under ``test_time[name]``).
        """
        return None

    def update(self, run):
        """The update; None leaves it to the strategy's gradient steps.

        Returns
        -------
        (dict, dict) or None
            The adapted weights (``name -> tensor``, as ``run.brain.trainable_params()``
            names them) and what to record.
        """
        return None

    @classmethod
    def describe(cls, log):
        """Lines ``sb-meta adapt`` prints about what the method did (``log``: its record)."""
        return []


def reads_transcripts(classes, config):
    """Whether an adaptation with the add-on ``classes`` and settings ``config`` reads transcripts:
    not when a test-time method among them reads none."""
    return all(c.reads_transcripts(config) for c in classes if issubclass(c, TestTimeMethod))


@dataclass
class AdaptationRun:
    """One adaptation under way, as test-time methods see it.

    Attributes
    ----------
    model : sb_meta.adapt.AdaptableASR
        The model being adapted (unchanged: ``asr`` is the copy that adapts);
        its public API gives the tokenizer, the blank index, transcript encoding...
    asr : speechbrain.inference.interfaces.Pretrained
        The copy of the model's interface that adapts.
    brain : sb_meta.adapt.objective.AdaptBrain
        The adaptation brain over the copy's modules.
    wavs : list of torch.Tensor
        The support waveforms (at the model's sample rate).
    tokens : list of list of int or None
        The support's token ids (None: no labels).
    names : list of str
        How messages name the utterances.
    records : list of dict
        The support's provenance records (a method may add fields).
    steps : int
    lr : float or None
    names_to_adapt : list of str or None
        The parameters adapted (None: the strategy's).
    task : sb_meta.episodes.Task
    batch_size : int
    stopped : str or None
        Set by :meth:`stop`: why the model is returned unchanged.
    """

    model: object
    asr: object
    brain: object
    wavs: list
    tokens: list
    names: list
    records: list
    steps: int
    lr: float
    names_to_adapt: list
    task: object
    batch_size: int
    stopped: str = None
    logs: dict = field(default_factory=dict)

    def batches(self, with_tokens=True):
        """The support as ``PaddedBatch`` es (with ``tokens`` when it has labels and ``with_tokens``)."""
        from sb_meta.adapt.support import make_batches

        tokens = self.tokens if with_tokens else None
        return make_batches(self.wavs, tokens, self.names, self.brain.view, self.batch_size)

    def stop(self, reason):
        """End the adaptation here: the model comes back unchanged, its record saying ``reason``."""
        self.stopped = str(reason)
