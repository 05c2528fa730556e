"""Distributed meta-training: what keeps the ranks of a ``torchrun`` job equal.

A :class:`sb_meta.brain.MetaBrain` never wraps its modules in DDP, which does
not work with ``torch.autograd.grad``. :class:`RankSync` is the part of the
brain that does DDP's work instead: it all-reduces the meta-gradients before
each outer step and averages the normalisation statistics after it. With one
process every method returns at once.

Authors
 * sb-meta contributors
"""

import torch

__all__ = ["RankSync"]


class RankSync:
    """Gradient and statistics all-reduce of :class:`sb_meta.brain.MetaBrain` (a mixin
    over ``self.modules``; see the module docstring)."""

    @staticmethod
    def _world():
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
        return 1

    def _all_reduce_gradients(self, episode):
        import torch.distributed as dist

        if self._world() == 1:
            return
        params = [p for p in self.modules.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p))
            offset += n

    def _sync_statistics(self):
        """Average normalisation statistics over ranks after an outer step.

        Modules are not DDP-wrapped, so nothing else keeps BatchNorm running
        statistics (floating-point buffers) and ``InputNormalization``'s
        global mean / standard deviation equal on every rank.
        """
        import torch.distributed as dist

        world = self._world()
        if world == 1:
            return
        tensors = [
            b for b in self.modules.buffers() if b is not None and torch.is_floating_point(b)
        ]
        for m in self.modules.modules():
            for attr in ("glob_mean", "glob_std"):
                value = getattr(m, attr, None)
                if torch.is_tensor(value) and torch.is_floating_point(value) and value.numel() > 1:
                    tensors.append(value)
        if not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        offset = 0
        with torch.no_grad():
            for t in tensors:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
                offset += n

    def _wrap_distributed(self):
        """Never wrap in DDP (see the module docstring)."""
