"""Label-prior correction from unlabelled audio as an sb-meta test-time method (a third-party plugin).

A model moved to a new speaker or channel often favours some labels more than
it should. :class:`Prior` estimates the prior the model gives each label on
the support audio (its CTC posteriors averaged over every frame) and moves the
output layer's bias by ``-prior_rate`` x the centred log of that prior (Saerens
et al., "Adjusting the outputs of a classifier to new a priori probabilities",
2002). It reads no transcript and takes no gradient step. Written only against
sb-meta's documented contract: a :class:`sb_meta.adapt.testtime.TestTimeMethod`
declaring its ``options`` and the ``--unsupervised`` flag it answers to, its
``update`` reading the model through its public API (``predictions``), and the
``sb_meta.plugins`` entry point in ``pyproject.toml``.

Example
-------
>>> log_probs = torch.tensor([[[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]]).log()
>>> correction(log_probs, rate=1.0)  # the over-used label 0 is pushed down, the others up
tensor([-0.4621,  0.2310,  0.2310])
"""

import speechbrain as sb
import torch

from sb_meta.adapt.testtime import TestTimeMethod
from sb_meta.contract import CommandOption

__version__ = "0.1.0"
__all__ = ["Prior", "correction", "sbmeta_addons"]


def correction(log_probs, rate):
    """The bias change: ``-rate`` x the centred log of the labels' mean posterior over the frames."""
    prior = log_probs.exp().mean((0, 1)).clamp_min(1e-6).log()
    return -rate * (prior - prior.mean())


class Prior(TestTimeMethod):
    """The output layer's bias corrected for the labels' prior on the support audio."""

    name = "prior"
    options = {"prior_rate": 0.5, "prior_bias": "ctc_lin.w.bias"}
    command_options = (CommandOption("--unsupervised", "adapt from the audio alone: the method's name",
                                     selects=True),)

    @classmethod
    def reads_transcripts(cls, config):
        return False

    def update(self, run):
        """The corrected bias (no gradient), and how far it moved."""
        params = run.brain.trainable_params()
        bias = str(self.option("prior_bias"))
        if bias not in params:
            raise ValueError(f"prior: the model has no parameter {bias!r} (set prior_bias to its output bias)")
        wavs, lens = sb.utils.data_utils.batch_pad_right(run.wavs)
        log_probs = run.model.predictions(wavs, lens).require("log_probs", self.name)
        old = params[bias].detach()
        new = old + correction(log_probs, self.number_option("prior_rate", 0.0)).to(old)
        return {bias: new}, {"moved": float((new - old).abs().max())}

    @classmethod
    def describe(cls, log):
        return [f"Label prior corrected on the support audio (bias moved by {log['moved']:.3f} at most)"]


def sbmeta_addons():
    return [Prior]
