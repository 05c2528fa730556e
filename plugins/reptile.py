"""Built-in Reptile strategy."""

from sb_meta.plugins import hookimpl
from sb_meta.strategy import GradientStrategy


class Reptile(GradientStrategy):
    """Reptile: ``inner_steps`` plain gradient steps cycling over the task's
    support then query batches; the outer pseudo-gradient is
    ``theta - theta'`` (averaged over the episode's tasks), so an outer SGD
    step of size epsilon moves the initialisation towards the adapted weights.

    Reptile has no outer forward pass, so the first inner forward of each
    task updates the normalisation statistics (once per task, as the query
    forward does for the MAML family).
    """

    name = "reptile"
    default_first_order = True

    def task_backward(self, task, weight):
        batches = [task.support] + ([task.query] if task.query is not None else [])
        fast = self.adapt(batches, create_graph=False, update_statistics=True, task=task)
        base = self.brain.trainable_params()
        for name, w in fast.items():
            p = base[name]
            g = (p.detach() - w.detach()) * weight
            p.grad = g if p.grad is None else p.grad + g
        return self.last_inner_loss


@hookimpl
def sbmeta_strategies():
    return [Reptile]
