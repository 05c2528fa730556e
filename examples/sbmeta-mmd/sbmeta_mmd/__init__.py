"""A domain-confusion loss on encoder features as an sb-meta add-on (a third-party plugin).

Linear maximum mean discrepancy (Tzeng et al., "Deep domain confusion", 2014):
the utterances of a batch are grouped by a manifest column (``mmd_column``,
e.g. ``age_group`` or ``accent``), each utterance's encoder output is averaged
over its frames, and the loss is ``mmd_weight`` x the mean squared distance of
each domain's mean feature to the mean of the domains' means. It pulls the
domains' features together, so the recognizer sees less of what tells them
apart. A batch with a single domain adds nothing: use it with batches that mix
domains (``meta_strategy: joint`` with ``joint_pooled: True``). Written only
against sb-meta's documented contract: an :class:`sb_meta.strategy.AddOn`
declaring its ``options``, the ``sbmeta_loss`` hook, and the
``sb_meta.plugins`` entry point in ``pyproject.toml``.

Example
-------
>>> from types import SimpleNamespace
>>> from sb_meta.contract import ASRPredictions, Phase
>>> mmd = MMD(SimpleNamespace(hparams={"mmd_column": "accent", "mmd_weight": 1.0}), {})
>>> rows = {"a": "north", "b": "north", "c": "south"}
>>> task = SimpleNamespace(value=lambda uid, column: rows[uid])
>>> batch = SimpleNamespace(id=["a", "b", "c"])
>>> feats = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]], [[0.0, 0.0]]])  # [batch, frames, features]
>>> pred = ASRPredictions(None, torch.ones(3), feats)
>>> mmd.sbmeta_loss(None, batch, pred, task, Phase.OUTER)  # means (2, 0) and (0, 0)
{'confusion': tensor(1.)}
>>> mmd.sbmeta_loss(None, SimpleNamespace(id=["a", "b"]), pred, task, Phase.OUTER) is None
True
"""

import torch
from speechbrain.dataio.dataio import length_to_mask

from sb_meta.contract import ASRPredictions, Phase
from sb_meta.strategy import AddOn

__version__ = "0.1.0"
__all__ = ["MMD", "sbmeta_addons"]


class MMD(AddOn):
    """``mmd_weight`` x linear MMD between the domains (``mmd_column``) of a batch."""

    name = "mmd"
    options = {"mmd_column": "age_group", "mmd_weight": 0.1, "mmd_phases": ["outer"]}

    def __init__(self, brain, config):
        super().__init__(brain, config)
        self.column = str(self.option("mmd_column"))
        self.weight = self.number_option("mmd_weight", 0.0)
        self.phases = self.phases_option("mmd_phases")

    def sbmeta_loss(self, brain, batch, predictions, task, phase):
        """The confusion term, or None when the phase is not one of ``mmd_phases``
        or the batch holds one domain."""
        if Phase(phase).value not in self.phases or task is None or self.weight == 0:
            return None
        pred = ASRPredictions.coerce(predictions)
        feats = pred.require("encoder_out", self.name)
        frames = feats.shape[1]
        valid = torch.round(pred.lengths.to(feats.device).float() * frames).clamp(1, frames)
        mask = length_to_mask(valid, frames, dtype=feats.dtype, device=feats.device)
        pooled = (feats * mask[..., None]).sum(1) / valid[:, None].to(feats.dtype)
        labels = [task.value(uid, self.column) for uid in batch.id]
        domains = sorted(set(labels))
        if len(domains) < 2:
            return None
        means = torch.stack([pooled[[i for i, lab in enumerate(labels) if lab == d]].mean(0) for d in domains])
        return {"confusion": self.weight * ((means - means.mean(0)) ** 2).sum(1).mean()}


def sbmeta_addons():
    """The add-ons of this distribution (sb-meta's ``sbmeta_addons`` hook)."""
    return [MMD]
