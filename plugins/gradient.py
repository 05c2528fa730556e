"""Built-in gradient-based strategies: MAML, first-order MAML, ANIL and Meta-SGD.

All share :class:`sb_meta.strategy.GradientStrategy`'s inner loop (plain
gradient steps over the parameters chosen by ``adapt_params``); they differ in
the order of the meta-gradient, which parameters adapt, and whether the step
sizes are meta-learned.
"""

import torch

from sb_meta.contract import Phase
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

    def load_state(self, state):
        """Load exported step sizes; only parameters that have some adapt.

        An export of a model whose inner loop adapted a subset (``adapt_params``,
        a PEFT add-on) carries step sizes for that subset alone.
        """
        own = {f"metasgd_lr.{k}" for k in self.lrs}
        unexpected = sorted(set(state) - own)
        if unexpected:
            raise ValueError(
                f"the Meta-SGD step sizes do not match the model's parameters: unexpected "
                f"{[k.split('.', 1)[1].replace('__', '.') for k in unexpected[:5]]}"
            )
        try:
            torch.nn.ModuleDict(self.meta_modules()).load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes
            raise ValueError(f"the Meta-SGD step sizes do not fit the model: {exc}") from None
        covered = {k.split(".", 1)[1] for k in state}
        names = [n for n in self.adapt_names(Phase.ADAPT) if _key(n) in covered]
        if not names:
            raise ValueError("the Meta-SGD step sizes cover no parameter of this model")
        return names


@hookimpl
def sbmeta_strategies():
    return [MAML, FOMAML, ANIL, MetaSGD]
