"""Learning-rate schedules for training within a time budget.

SpeechBrain's schedulers count steps or react to validation; a run limited
by ``train_budget_minutes`` does not know its number of steps in advance, so
:class:`TimeBudgetCosine` anneals over the *fraction of the budget used*
instead. SpeechBrain has no such schedule, hence this small one.

Example
-------
>>> import torch
>>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
>>> sched = TimeBudgetCosine(lr_initial=1.0, warmup_steps=2, final_lr_frac=0.1)
>>> [round(sched(opt, progress), 3) for progress in (0.0, 0.0, 0.5, 1.0)]
[0.5, 1.0, 0.55, 0.1]
"""

import math

from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

__all__ = ["TimeBudgetCosine"]


@register_checkpoint_hooks
class TimeBudgetCosine:
    """Linear warm-up over ``warmup_steps`` steps, then a cosine from
    ``lr_initial`` down to ``final_lr_frac * lr_initial`` over the training budget.

    Arguments
    ---------
    lr_initial : float
        The peak learning rate.
    warmup_steps : int
        Steps of linear warm-up.
    final_lr_frac : float
        The learning rate at the end of the budget, as a fraction of the peak.
    """

    def __init__(self, lr_initial, warmup_steps=200, final_lr_frac=0.02):
        self.lr_initial = float(lr_initial)
        self.warmup_steps = int(warmup_steps)
        self.final_lr_frac = float(final_lr_frac)
        self.steps = 0

    def __call__(self, optimizer, progress):
        """Set and return the learning rate of the next step.

        ``progress`` is the fraction of the budget used (``brain.train_minutes /
        train_budget_minutes``), clipped to [0, 1].
        """
        self.steps += 1
        if self.steps <= self.warmup_steps:
            lr = self.lr_initial * self.steps / max(self.warmup_steps, 1)
        else:
            frac = min(max(float(progress), 0.0), 1.0)
            lr = self.lr_initial * (self.final_lr_frac + (1 - self.final_lr_frac)
                                    * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    @mark_as_saver
    def _save(self, path):
        with open(path, "w") as f:
            f.write(f"{self.steps}\n")

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        with open(path) as f:
            self.steps = int(f.read())
