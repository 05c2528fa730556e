"""Data augmentation per phase with SpeechBrain's ``speechbrain.augment``, as an add-on.

A batch transform (``sbmeta_transform_batch``) that runs SpeechBrain's
:class:`speechbrain.augment.augmenter.Augmenter` on the waveforms of the
batches of the phases chosen: support sets in the inner loop (``inner``),
outer / pooled batches (``outer``) and test-time support sets (``adapt``);
never on validation or test batches. It composes with any strategy::

    meta_addons: [augment]
    augment_phases: [inner, adapt]        # augment support sets only
    augment_methods: [speed, dropfreq, dropchunk, noise]
    augment_speeds: [95, 100, 105]
    augment_noise_snr: [15, 30]

Methods (all time domain, from ``speechbrain.augment.time_domain``)
    ``speed``      ``SpeedPerturb`` (one speed per batch from ``augment_speeds``, in %)
    ``dropfreq``   ``DropFreq``: notch filters at 1-``augment_drop_freq_count`` random frequencies
    ``dropchunk``  ``DropChunk``: 1-``augment_drop_chunk_count`` chunks of
                   ``augment_drop_chunk_length`` samples set to zero (time masking)
    ``noise``      ``AddNoise`` without noise files: generated white noise at an SNR
                   drawn from ``augment_noise_snr`` (dB)

    Masking of feature bins (SpecAugment's frequency masks) needs the
    features, which the recipe computes inside ``compute_forward``: a batch
    transform only sees waveforms, so this add-on masks frequencies with
    ``dropfreq`` and time with ``dropchunk``; the recipes' own ``fea_augment``
    hparam (``speechbrain.augment.freq_domain``) applies to feature batches.
Batch size
    By default every utterance is replaced by one augmented copy (all
    ``augment_methods`` in sequence). ``augment_concat_original: True`` keeps
    the originals too, ``augment_parallel: True`` makes one copy per method:
    the batch grows and every per-utterance field (``id``, ``wrd``,
    ``tokens``, ``tokens_bos``, ``tokens_eos``, and any other) is replicated
    so that row ``j`` of every field still describes utterance ``j``; copies
    keep their utterance ``id`` (so the task's manifest row is found for
    them, e.g. by ``dann``).
Never in place
    The transform builds a new ``PaddedBatch``; the input batch (a support set
    reused across inner steps) is left as it was. Each inner step therefore
    sees a fresh augmentation of the support set.

Example
-------
>>> from speechbrain.dataio.batch import PaddedBatch
>>> batch = PaddedBatch([{"id": "a", "sig": torch.ones(800), "wrd": "A", "tokens": torch.LongTensor([1])},
...                      {"id": "b", "sig": torch.ones(400), "wrd": "BB", "tokens": torch.LongTensor([2, 2])}])
>>> new = rebuild_batch(batch, torch.zeros(4, 800), torch.tensor([1.0, 0.5, 1.0, 0.5]), torch.tensor([0, 1, 0, 1]))
>>> new.id, new.wrd, new.tokens.data.tolist()
(['a', 'b', 'a', 'b'], ['A', 'BB', 'A', 'BB'], [[1, 0], [2, 2], [1, 0], [2, 2]])
>>> float(batch.sig.data.sum())  # the input is unchanged
1200.0
"""

import logging

import torch

from sb_meta.contract import Phase
from sb_meta.plugins import hookimpl
from sb_meta.strategy import AddOn

logger = logging.getLogger(__name__)

__all__ = ["Augment", "rebuild_batch", "batch_keys"]

METHODS = ("speed", "dropfreq", "dropchunk", "noise")


def batch_keys(batch):
    """The field names of a ``PaddedBatch``, in order."""
    keys = getattr(batch, "_PaddedBatch__keys", None)
    if keys is None:
        keys = [k for k in vars(batch) if not k.startswith("_")]
    return list(keys)


def _example_value(value, i):
    """Utterance ``i``'s own value of a batch field (padding removed)."""
    from speechbrain.dataio.batch import PaddedData

    if isinstance(value, PaddedData):
        data, lens = value
        if data.dim() == 1:
            return data[i]
        n = int(round(float(lens[i]) * data.shape[1]))
        return data[i, :n]
    return value[i]


def rebuild_batch(batch, wavs, wav_lens, source, key="sig"):
    """A new ``PaddedBatch``: row ``j`` is utterance ``source[j]`` of ``batch``
    with its ``key`` field replaced by ``wavs[j]`` (its valid part, ``wav_lens[j]``)."""
    from speechbrain.dataio.batch import PaddedBatch

    keys = batch_keys(batch)
    fields = {k: getattr(batch, k) for k in keys}
    items = []
    for j, i in enumerate(source.tolist()):
        item = {k: (_example_value(v, i) if k != key else None) for k, v in fields.items()}
        n = max(1, int(round(float(wav_lens[j]) * wavs.shape[1])))
        item[key] = wavs[j, :n]
        items.append(item)
    return PaddedBatch(items)


class Augment(AddOn):
    """Waveform augmentation (speed, frequency/chunk dropping, noise) of the batches of chosen phases."""

    name = "augment"
    options = {
        "augment_phases": ["inner", "outer", "adapt"],
        "augment_methods": ["speed", "dropfreq", "dropchunk"],
        "augment_speeds": [95, 100, 105],
        "augment_drop_freq_count": 3,
        "augment_drop_chunk_count": 3,
        "augment_drop_chunk_length": [1000, 2000],
        "augment_noise_snr": [15.0, 30.0],
        "augment_concat_original": False,
        "augment_parallel": False,
        "augment_prob": 1.0,
    }

    def __init__(self, brain, config):
        super().__init__(brain, config)
        self.phases = self.phases_option("augment_phases")
        methods = self.option("augment_methods")
        if isinstance(methods, str):
            methods = [m.strip() for m in methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ValueError(f"augment_methods has {bad or 'nothing'}; methods are: {', '.join(METHODS)}")
        self.methods = list(methods)
        prob = float(self.option("augment_prob"))
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"augment_prob must be in [0, 1], got {prob!r}")
        hp = getattr(brain, "hparams", None)
        self.sample_rate = int(getattr(hp, "sample_rate", 16000) or 16000)
        self.augmenter = self.build(self.sample_rate, prob)

    def build(self, sample_rate, prob):
        """SpeechBrain's ``Augmenter`` over the chosen methods."""
        from speechbrain.augment.augmenter import Augmenter
        from speechbrain.augment.time_domain import AddNoise, DropChunk, DropFreq, SpeedPerturb

        def pair(key):
            value = self.option(key)
            if isinstance(value, (int, float)):
                value = [value, value]
            if len(value) != 2 or float(value[0]) > float(value[1]):
                raise ValueError(f"{key} must be [low, high], got {value!r}")
            return value

        made = []
        for method in self.methods:
            if method == "speed":
                speeds = [float(s) for s in self.option("augment_speeds")]
                if not speeds or min(speeds) <= 0:
                    raise ValueError(f"augment_speeds must be positive percentages, got {speeds!r}")
                made.append(SpeedPerturb(orig_freq=sample_rate, speeds=speeds))
            elif method == "dropfreq":
                made.append(DropFreq(drop_freq_count_low=1,
                                     drop_freq_count_high=int(self.option("augment_drop_freq_count"))))
            elif method == "dropchunk":
                low, high = pair("augment_drop_chunk_length")
                made.append(DropChunk(drop_length_low=int(low), drop_length_high=int(high), drop_count_low=1,
                                      drop_count_high=int(self.option("augment_drop_chunk_count"))))
            elif method == "noise":
                low, high = pair("augment_noise_snr")
                made.append(AddNoise(snr_low=float(low), snr_high=float(high)))
        n = len(made)
        return Augmenter(
            parallel_augment=bool(self.option("augment_parallel")),
            concat_original=bool(self.option("augment_concat_original")),
            min_augmentations=n, max_augmentations=n,
            augment_prob=prob, augmentations=made,
        )

    def augment(self, batch):
        """A new, augmented batch (the input is not modified)."""
        wavs, lens = batch.sig
        with torch.no_grad():
            out, out_lens = self.augmenter(wavs.detach().clone(), lens.detach().clone())
            source = self.augmenter.replicate_labels(torch.arange(len(lens)))
        return rebuild_batch(batch, out, out_lens, source)

    @hookimpl
    def sbmeta_transform_batch(self, batch, phase):
        """Augment batches of the phases in ``augment_phases``; others pass unchanged."""
        if Phase(phase).value not in self.phases:
            return None
        return self.augment(batch)




@hookimpl
def sbmeta_addons():
    return [Augment]
