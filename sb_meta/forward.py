"""One forward per model family, run by training and by test-time adaptation alike.

A recipe's brain and the test-time adaptation brain over a model that sb-meta
exported hold the same modules under the same names (the recipe's
``modules:``, which the export keeps), so both compute their
:class:`~sb_meta.contract.ASRPredictions` with :func:`family_forward`: a hook
sees the same predictions, from the same code, in either phase. The family is
told by the module names (:func:`recipe_family`):

===============  ===============================================  =================================
family           modules                                          forward
===============  ===============================================  =================================
``ssl``          ``ssl`` (a Hugging Face encoder), ``enc``,       waveform -> ``ssl`` features ->
                 ``ctc_lin``                                      ``enc`` -> CTC head
``transformer``  ``CNN``, ``Transformer``, ``ctc_lin``            features -> ``normalize`` ->
                 (``seq_lin`` for attention), ``normalize``       ``CNN`` -> ``Transformer``
``crdnn``        ``enc``, ``ctc_lin``, ``normalize``              features -> ``normalize`` ->
                 (``emb``, ``dec``, ``seq_lin`` for attention)    ``enc`` -> CTC head (and decoder)
===============  ===============================================  =================================

Models that sb-meta did not export (a SpeechBrain or Hugging Face folder) have
no recipe module names; :func:`sb_meta.adapt.objective.view_forward` runs
them as their inference interface does.
"""

import speechbrain as sb
import torch  # noqa: F401  (the examples use it)

from sb_meta.contract import ASRPredictions

__all__ = ["RECIPE_FAMILIES", "recipe_family", "family_forward"]

#: what every recipe YAML names ``log_softmax``: SpeechBrain's (float32, over the last dimension)
_log_softmax = sb.nnet.activations.Softmax(apply_log=True)

#: the recipe families and the modules each one needs, in the order they are recognised
RECIPE_FAMILIES = {
    "ssl": ("ssl", "enc", "ctc_lin"),
    "transformer": ("CNN", "Transformer", "ctc_lin", "normalize"),
    "crdnn": ("enc", "ctc_lin", "normalize"),
}


def recipe_family(modules):
    """The recipe family (a key of :data:`RECIPE_FAMILIES`) whose modules ``modules`` holds, or None.

    Example
    -------
    >>> recipe_family({"enc": None, "ctc_lin": None, "normalize": None})
    'crdnn'
    >>> recipe_family({"encoder": None}) is None
    True
    """
    for family, needed in RECIPE_FAMILIES.items():
        if all(name in modules for name in needed):
            return family
    return None


def family_forward(modules, wavs, wav_lens, compute_features=None, tokens_bos=None, attention=False,
                   pad_index=0, feature_augment=None):
    """The :class:`~sb_meta.contract.ASRPredictions` of a recipe-shaped model on a batch.

    Arguments
    ---------
    modules : mapping
        ``name -> module`` of one of :data:`RECIPE_FAMILIES`.
    wavs : torch.Tensor
        ``[batch, samples]``.
    wav_lens : torch.Tensor
        Relative lengths ``[batch]``.
    compute_features : callable, optional
        ``wavs -> features`` (the recipe's ``compute_features``); every family but ``ssl``.
    tokens_bos : torch.Tensor, optional
        Decoder inputs; with ``attention``, ``seq_log_probs`` is computed from them.
    attention : bool
        Compute the attention decoder's teacher-forced outputs (needs ``seq_lin``).
    pad_index : int
        The Transformer's padding index.
    feature_augment : callable, optional
        ``(feats, wav_lens) -> (feats, _)`` applied after normalisation (training only).

    Returns
    -------
    ASRPredictions

    Example
    -------
    >>> import speechbrain as sb
    >>> from speechbrain.lobes.features import Fbank
    >>> mods = {"normalize": sb.processing.features.InputNormalization(),
    ...         "enc": torch.nn.Linear(40, 8), "ctc_lin": torch.nn.Linear(8, 5)}
    >>> p = family_forward(mods, torch.randn(2, 1600), torch.ones(2), compute_features=Fbank())
    >>> p.log_probs.shape, p.encoder_out.shape
    (torch.Size([2, 11, 5]), torch.Size([2, 11, 8]))
    """
    family = recipe_family(modules)
    if family is None:
        raise ValueError(f"modules {sorted(modules)} are none of the recipe families {sorted(RECIPE_FAMILIES)}")
    attention = attention and tokens_bos is not None and "seq_lin" in modules
    if family == "ssl":
        # extract_features, not forward: a frozen wrapper's forward runs under no_grad, which
        # would stop the gradients of the adapters inside it (its own weights do not require any)
        enc_out = modules["enc"](modules["ssl"].extract_features(wavs, wav_lens))
        return ASRPredictions(_log_softmax(modules["ctc_lin"](enc_out)), wav_lens, enc_out, None)
    if compute_features is None:
        raise ValueError(f"the {family} family reads features: pass compute_features")
    feats = modules["normalize"](compute_features(wavs), wav_lens)
    if feature_augment is not None:
        feats, _ = feature_augment(feats, wav_lens)
    p_seq = None
    if family == "transformer":
        src = modules["CNN"](feats)
        if tokens_bos is not None:  # the recipes' call: encoder and teacher-forced decoder at once
            enc_out, dec_out = modules["Transformer"](src, tokens_bos, wav_lens, pad_idx=pad_index)
            if attention:
                p_seq = _log_softmax(modules["seq_lin"](dec_out))
        else:
            enc_out = modules["Transformer"].encode(src, wav_lens, pad_index)
    else:
        enc_out = modules["enc"](feats)
        if attention:
            h, _ = modules["dec"](modules["emb"](tokens_bos), enc_out, wav_lens)
            p_seq = _log_softmax(modules["seq_lin"](h))
    return ASRPredictions(_log_softmax(modules["ctc_lin"](enc_out)), wav_lens, enc_out, p_seq)
