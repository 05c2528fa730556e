"""Built-in gradient-based strategies: MAML, first-order MAML, ANIL and Meta-SGD.

All share :class:`sb_meta.strategy.GradientStrategy`'s inner loop (plain
gradient steps over the parameters chosen by ``adapt_params``); they differ in
the order of the meta-gradient, which parameters adapt, and whether the step
sizes are meta-learned.
"""

import torch

from sb_meta.plugins import hookimpl
from sb_meta.strategy import GradientStrategy


class MAML(GradientStrategy):
    """MAML with the exact second-order meta-gradient through the inner steps.

    Set ``first_order: True`` for its first-order approximation (= ``fomaml``).
    """

    name = "maml"
    default_first_order = False


class FOMAML(GradientStrategy):
    """First-order MAML: the query gradient at the fast weights is applied to
    the initial weights (inner gradients treated as constants)."""

    name = "fomaml"
    default_first_order = True


class ANIL(GradientStrategy):
    """Almost No Inner Loop: only the output layers adapt in the inner loop
    (``adapt_params``, default ``*ctc_lin*``, ``*seq_lin*``, ``*output*``);
    the outer loop trains every parameter. Second order by default, which is
    cheap since only the head is differentiated twice."""

    name = "anil"
    default_first_order = False
    default_adapt_params = ("*ctc_lin*", "*seq_lin*", "*output*", "*out*")


def _key(name):
    return name.replace(".", "__")


class MetaSGD(GradientStrategy):
    """Meta-SGD: a meta-learned step size per parameter element.

    The step sizes start at ``inner_lr``, are optimized by the outer
    optimizer with the model, checkpointed under ``meta_strategy`` and used
    again at test-time adaptation.
    """

    name = "metasgd"
    default_first_order = False

    def __init__(self, brain, config):
        super().__init__(brain, config)
        lr = float(config["inner_lr"])
        params = brain.base_params()
        self.lrs = torch.nn.ParameterDict(
            {
                _key(n): torch.nn.Parameter(torch.full_like(params[n].detach(), lr))
                for n in self.adapt_names()
            }
        )

    def meta_modules(self):
        return {"metasgd_lr": self.lrs}

    def inner_lrs(self, names):
        return {n: self.lrs[_key(n)] for n in names}


@hookimpl
def sbmeta_strategies():
    return [MAML, FOMAML, ANIL, MetaSGD]
