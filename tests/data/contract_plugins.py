"""Plugins written only against sb-meta's documented contract (sb_meta.hookspecs,
sb_meta.strategy, sb_meta.contract), loaded by path as a YAML ``plugins:`` entry.

* ``probe``: an add-on owning a trainable module and adding a loss on encoder features;
* ``noisy_support``: an add-on transforming support batches (inner loop only);
* ``signsgd``: a strategy replacing the inner update (sign of the gradient);
* ``clamp``: an add-on post-processing fast weights after every adaptation;
* ``zero_bias``: an add-on post-processing the model before export.
"""

import torch
from speechbrain.dataio.batch import PaddedBatch

from sb_meta.contract import ASRPredictions, Phase
from sb_meta.strategy import AddOn, GradientStrategy

SEEN = {"transform": [], "loss": [], "after_adapt": []}


class Probe(AddOn):
    """A linear probe on the encoder output, trained in the outer loop."""

    name = "probe"
    options = {"probe_weight": 0.1, "probe_features": 8}

    def sbmeta_modules(self, brain):
        return {"head": torch.nn.Linear(int(self.option("probe_features")), 1).double()}

    def sbmeta_loss(self, brain, predictions, task, phase):
        SEEN["loss"].append((phase, task.name if task is not None else None))
        if phase is not Phase.OUTER:
            return None
        enc = ASRPredictions.coerce(predictions).require("encoder_out", self.name)
        head = brain.modules["sbmeta_addons"]["probe"]["head"]
        return {"energy": float(self.option("probe_weight")) * head(enc).pow(2).mean()}


class NoisySupport(AddOn):
    """Shifts the inputs of support batches (inner loop only)."""

    name = "noisy_support"
    options = {"noisy_support_shift": 0.5}

    def sbmeta_transform_batch(self, batch, task, phase):
        SEEN["transform"].append(phase)
        if phase is not Phase.INNER:
            return None
        shift = float(self.option("noisy_support_shift"))
        items = [{"id": i, "x": x + shift, "y": y}
                 for i, x, y in zip(batch.id, batch.x.data, batch.y.data)]
        return PaddedBatch(items)


class SignSGD(GradientStrategy):
    """Inner steps of ``-lr * sign(grad)``."""

    name = "signsgd"

    def inner_update(self, params, grads, step, state):
        return {n: w if grads[n] is None else w - state["lrs"][n] * torch.sign(grads[n])
                for n, w in params.items()}


class Clamp(AddOn):
    """Clamps adapted weights to [-c, c]."""

    name = "clamp"
    options = {"clamp_value": 0.05}

    def sbmeta_after_adapt(self, params, phase):
        SEEN["after_adapt"].append(phase)
        c = float(self.option("clamp_value"))
        return {n: w.clamp(-c, c) for n, w in params.items()}


class ZeroBias(AddOn):
    """Zeroes every bias of the exported model and says so in hyperparams.yaml."""

    name = "zero_bias"

    def sbmeta_before_export(self, plan):
        n = 0
        for module in plan.modules.values():
            for name, p in module.named_parameters():
                if name.endswith("bias"):
                    with torch.no_grad():
                        p.zero_()
                    n += 1
        plan.yaml["zeroed_biases"] = n
        plan.info["zero_bias"] = n
        plan.tolerance = None  # the model changed on purpose


def sbmeta_strategies():
    return [SignSGD]


def sbmeta_addons():
    return [Probe, NoisySupport, Clamp, ZeroBias]
