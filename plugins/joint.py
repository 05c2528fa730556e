"""Built-in transfer-learning baselines: joint (multi-task) training and fine-tuning."""

import torch

from sb_meta.plugins import hookimpl
from sb_meta.strategy import GradientStrategy


class Joint(GradientStrategy):
    """Joint (pooled multi-task) training on the same tasks and data budget.

    Each episode's support and query utterances are pooled into one batch and
    trained on exactly as plain SpeechBrain training would; at test time the
    model adapts with plain gradient steps.
    """

    name = "joint"

    def episode_backward(self, episode, scale=1.0):
        if not episode.tasks:
            return torch.tensor(0.0)
        ids = [i for t in episode.tasks for i in t.support_ids + t.query_ids]
        batch = episode.tasks[0]._collate(ids)
        loss = self.loss({}, batch, outer=True)
        self.brain.check_loss_isfinite(loss)
        # ranks hold equal shares of tasks: weight by this rank's share
        (loss * scale * len(episode.tasks) / episode.n_global_tasks).backward()
        return loss.detach()


class FineTune(Joint):
    """Plain fine-tuning: ordinary pooled training from the loaded
    initialisation (e.g. a pretrained SpeechBrain model), and gradient-step
    fine-tuning on the support set as the test-time adaptation baseline."""

    name = "finetune"


@hookimpl
def sbmeta_strategies():
    return [Joint, FineTune]
