"""When a test-time adaptation has diverged: nothing of it is kept.

Example
-------
>>> check_divergence([9.6, 8.1], {}, 1.0, "lr 0.05")  # a step that lowered the loss
"""

import math

__all__ = ["AdaptationError", "check_divergence", "LOSS_GROWTH_LIMIT", "WEIGHT_GROWTH_LIMIT"]


class AdaptationError(RuntimeError):
    """Test-time adaptation failed (e.g. diverged to non-finite weights)."""


#: Adaptation has diverged, and nothing is kept, when the support loss after a step exceeds
#: this multiple of its value before the first step (gradient steps that work lower it; a step
#: size too large for the model makes it explode within a few steps)...
LOSS_GROWTH_LIMIT = 10.0
#: ... or when an adapted weight is non-finite or exceeds this multiple of the largest weight
#: of the model before adaptation (weights that far out decode nothing useful even where the
#: loss has not caught up yet)
WEIGHT_GROWTH_LIMIT = 100.0


def check_divergence(losses, fast, base_largest, step_size):
    """Raise :class:`AdaptationError` in one line naming the step size when an
    adaptation diverged (see :data:`LOSS_GROWTH_LIMIT`, :data:`WEIGHT_GROWTH_LIMIT`).

    Arguments
    ---------
    losses : list of float
        The support loss before the first step and after each step.
    fast : dict of str to torch.Tensor
        The adapted weights.
    base_largest : float
        The largest absolute weight of the model before adaptation.
    step_size : str
        How the step size is named in the message (``"--lr 5"``).

    Example
    -------
    >>> check_divergence([9.6, 30.0, 2.6e6], {}, 1.0, "lr 5")
    Traceback (most recent call last):
    ...
    sb_meta.adapt.divergence.AdaptationError: adaptation diverged with step size lr 5: the support loss went from 9.6 before the first step to 2.6e+06 after step 2 (over 10x); nothing was adapted or exported: use a smaller step size
    """
    hint = "nothing was adapted or exported: use a smaller step size"
    for i, loss in enumerate(losses):
        if not math.isfinite(loss) or (i and loss > LOSS_GROWTH_LIMIT * max(losses[0], 1e-8)):
            raise AdaptationError(
                f"adaptation diverged with step size {step_size}: the support loss went from "
                f"{losses[0]:.3g} before the first step to {loss:.3g} after step {i} "
                f"(over {LOSS_GROWTH_LIMIT:g}x); {hint}")
    bound = WEIGHT_GROWTH_LIMIT * max(base_largest, 1e-8)
    for name, w in fast.items():
        largest = float(w.detach().abs().max()) if w.numel() else 0.0
        if not math.isfinite(largest) or largest > bound:
            raise AdaptationError(
                f"adaptation diverged with step size {step_size}: {name} reached {largest:.3g}, over "
                f"{WEIGHT_GROWTH_LIMIT:g}x the model's largest weight before adaptation "
                f"({base_largest:.3g}); {hint}")
