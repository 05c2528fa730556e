"""Built-in transfer-learning baselines: joint (multi-task) training and fine-tuning."""

from sb_meta.contract import FastWeights, Phase
from sb_meta.plugins import hookimpl
from sb_meta.strategy import GradientStrategy


class Joint(GradientStrategy):
    """Joint (pooled multi-task) training on the same tasks and data budget.

    Each episode's support and query utterances are pooled and trained on as
    plain SpeechBrain training would: the objective is the mean loss over the
    pooled utterances (:meth:`~sb_meta.strategy.GradientStrategy.pooled_backward`,
    one task's utterances per batch unless ``joint_pooled: True``). At test
    time the model adapts with plain gradient steps.
    """

    name = "joint"

    #: it is the joint objective already
    supports_outer_joint = False

    def episode_backward(self, episode, scale=1.0):
        return self.pooled_backward(episode, scale)

    def batch_backward(self, batch, task, scale=1.0):
        """Ordinary training on a plain SpeechBrain batch (shuffled utterances of
        any task), through the same forward and hooks as the episodes (phase ``OUTER``)."""
        loss = self.forward(FastWeights(), batch, Phase.OUTER, task)[0]
        self.brain.check_loss_isfinite(loss)
        (loss * scale).backward()
        return loss.detach()


class FineTune(Joint):
    """Plain fine-tuning: ordinary pooled training from the loaded
    initialisation (e.g. a pretrained SpeechBrain model), and gradient-step
    fine-tuning on the support set as the test-time adaptation baseline."""

    name = "finetune"


@hookimpl
def sbmeta_strategies():
    return [Joint, FineTune]
