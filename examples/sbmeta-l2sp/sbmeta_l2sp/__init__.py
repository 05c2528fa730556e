"""L2-SP fine-tuning as an sb-meta strategy (a third-party plugin).

``loss + l2sp_alpha / 2 * ||w - w0||^2`` with ``w0`` the weights at the start
(Li, Grandvalet & Davoine, "Explicit inductive bias for transfer learning with
convolutional networks", ICML 2018). Written only against sb-meta's documented
contract: a :class:`sb_meta.strategy.GradientStrategy` declaring its option
``l2sp_alpha`` (read with ``number_option``), with the hooks
``sbmeta_modules`` (the starting weights, a module it owns) and
``sbmeta_loss`` (the penalty), found through the ``sb_meta.plugins`` entry
point declared in ``pyproject.toml``.

Example
-------
>>> from sb_meta.testing import make_toy_brain, toy_dataset
>>> brain = make_toy_brain({"meta_strategy": "l2sp", "l2sp_alpha": 1.0, "k_support": 2,
...                         "k_query": 2, "meta_batch_tasks": 2})
>>> episode = next(iter(brain.make_episode_loader(toy_dataset(n_tasks=2, utts_per_task=4))))
>>> _ = brain.fit_batch(episode)
>>> brain.loss_term_means()["outer_l2sp_penalty"]  # 0 at the start: w == w0
0.0
>>> _ = brain.fit_batch(episode)
>>> brain.loss_term_means()["outer_l2sp_penalty"] > 0
True
"""

import torch

from sb_meta.contract import FastWeights, Phase
from sb_meta.strategy import GradientStrategy

__version__ = "0.1.0"
__all__ = ["L2SP", "StartingPoint", "sbmeta_strategies"]


class StartingPoint(torch.nn.Module):
    """Frozen copies of the starting weights, keyed by parameter name."""

    def __init__(self, params):
        super().__init__()
        self.names = {}
        for i, (name, p) in enumerate(params.items()):
            key = f"w{i}"
            self.register_parameter(key, torch.nn.Parameter(p.detach().clone(), requires_grad=False))
            self.names[name] = key

    def items(self):
        """``(parameter name, starting value)`` pairs."""
        return [(name, getattr(self, key)) for name, key in self.names.items()]


class L2SP(GradientStrategy):
    """L2-SP fine-tuning: pooled training plus l2sp_alpha/2 * ||w - w0||^2 toward the starting weights."""

    name = "l2sp"
    default_first_order = True
    #: its YAML key and default (validated: a misspelt ``l2sp_*`` key is an error)
    options = {"l2sp_alpha": 0.01}

    def __init__(self, brain, config):
        super().__init__(brain, config)
        self.alpha = self.number_option("l2sp_alpha", minimum=0)

    # ------------------------------------------------------------ hooks
    def sbmeta_modules(self, brain):
        """The starting weights ``w0`` of the model's trainable parameters."""
        return {"start": StartingPoint(brain.base_params())}

    def sbmeta_loss(self, brain, phase):
        """``l2sp_alpha / 2 * ||w - w0||^2`` (``w``: the fast weights where they are adapted)."""
        if self.alpha == 0:
            return None
        start = brain.modules["sbmeta_addons"][self.name]["start"]
        # inside the functional forward, the adapted parameters are the fast weights
        current = dict(brain.modules.named_parameters())
        penalty = sum(((current[n] - w0) ** 2).sum() for n, w0 in start.items())
        return {"penalty": 0.5 * self.alpha * penalty}

    # ------------------------------------------------------------ training
    def episode_backward(self, episode, scale=1.0):
        """Ordinary training on each task's support + query utterances (``finetune``'s objective)."""
        if not episode.tasks:
            return torch.tensor(0.0)
        sizes = [len(t.support_ids) + len(t.query_ids) for t in episode.tasks]
        total = sum(sizes)
        weight = scale * len(episode.tasks) / episode.n_global_tasks
        value = 0.0
        for task, n in zip(episode.tasks, sizes):
            loss = self.forward(FastWeights(), task.pooled(), Phase.OUTER, task)[0]
            self.brain.check_loss_isfinite(loss)
            (loss * (n / total * weight)).backward()
            value = value + loss.detach() * (n / total)
        return value


def sbmeta_strategies():
    return [L2SP]
