"""Models built on SpeechBrain's Hugging Face integration (wav2vec2, HuBERT, WavLM, Whisper).

Their ``hyperparams.yaml`` names a wrapper of ``speechbrain.integrations.huggingface``
(or its older names ``speechbrain.lobes.models.huggingface_transformers`` /
``huggingface_wav2vec`` / ``huggingface_whisper``), which needs the
``transformers`` package: the ``hf`` extra of sb-meta
(``pip install sb-meta[hf]``), pinned to a version SpeechBrain 1.1.2 works with.
"""

import re

__all__ = ["HF_EXTRA", "uses_transformers", "require_transformers", "adaptable_hf_modules"]

#: how to install what these models need
HF_EXTRA = "pip install 'sb-meta[hf]'"

_HF_MODULES = re.compile(
    r"speechbrain\.(integrations\.huggingface|lobes\.models\.huggingface_transformers"
    r"|lobes\.models\.huggingface_wav2vec|lobes\.models\.huggingface_whisper)\b"
)


def uses_transformers(yaml_text):
    """Whether a ``hyperparams.yaml`` builds a Hugging Face wrapper.

    Example
    -------
    >>> uses_transformers("ssl: !new:speechbrain.integrations.huggingface.wav2vec2.Wav2Vec2")
    True
    >>> uses_transformers("enc: !new:speechbrain.lobes.models.CRDNN.CRDNN")
    False
    """
    return bool(_HF_MODULES.search(yaml_text or ""))


def require_transformers(what):
    """The ``transformers`` module, or a one-line ``ImportError`` naming the extra.

    Arguments
    ---------
    what : str
        What needs it (named in the message).
    """
    try:
        import transformers
    except ImportError:
        raise ImportError(f"{what} needs the transformers package: {HF_EXTRA}") from None
    return transformers


def adaptable_hf_modules(modules):
    """Prepare the Hugging Face wrappers among ``modules`` (a dict) for adaptation, in place.

    A wrapper built with ``freeze: True`` runs its model under ``no_grad``,
    which would stop every gradient (adapters inside it included): the switch
    is turned off, and what adapts is decided by ``requires_grad`` alone. The
    convolutional front end stays frozen
    (:func:`sb_meta.adapt.families.front_end_params`).
    """
    import torch

    from sb_meta.adapt.families import front_end_params

    root = torch.nn.ModuleDict(dict(modules))
    for m in root.modules():
        if type(m).__module__.startswith("speechbrain.integrations.huggingface") and getattr(m, "freeze", False):
            m.freeze = False
    frozen = set(front_end_params(root))
    for n, p in root.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
