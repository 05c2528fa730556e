"""Model families and what adapting each one touches by default.

Four families of SpeechBrain recognizers are told apart by the modules they hold:

===============  ==========================================  ==========================================
family           recognised by                               default adapter targets (``peft_targets``)
===============  ==========================================  ==========================================
``crdnn``        anything else (CRDNN, RNN encoders)         ``*DNN*`` and ``*ctc_lin*`` linear layers
``transformer``  SpeechBrain's Transformer / Conformer       attention output and feed-forward
                 (``speechbrain.lobes.models.transformer``)  projections, and the CTC head
``ssl``          a Hugging Face wav2vec2 / HuBERT / WavLM    attention q/k/v/out (not WavLM's) and
                 (``speechbrain.integrations.huggingface``)  feed-forward projections, the CTC head
``whisper``      a Hugging Face Whisper                      attention q/k/v/out and ``fc1``/``fc2``
                                                             of encoder and decoder layers
===============  ==========================================  ==========================================

SpeechBrain's ``RelPosMHAXL`` (Conformer) and ``torch.nn.MultiheadAttention``
(Transformer ``regularMHA``) keep their query/key/value projection as one
raw parameter, not a linear layer, so adapters there wrap only the
``RelPosMHAXL`` output projection; ``torch.nn.MultiheadAttention`` and
WavLM's attention hand their projection weights to
``torch.nn.functional.multi_head_attention_forward`` themselves, so a wrapper
would break them: only their layers' feed-forward projections are wrapped.

The convolutional front end of the Hugging Face encoders (wav2vec2's
``feature_extractor``, Whisper's ``conv1``/``conv2``) stays frozen during
adaptation (:func:`front_end_params`): a few utterances cannot retrain it, as
SpeechBrain's ``freeze_feature_extractor`` recipes also hold.
"""

import torch

__all__ = ["FAMILIES", "model_family", "projection_layers", "default_adapter_targets",
           "front_end_params"]

FAMILIES = ("crdnn", "transformer", "ssl", "whisper")
#: adapter targets of the ``crdnn`` family (and of models with no projection layer)
CRDNN_TARGETS = ("*DNN*", "*ctc_lin*")
_SSL_PACKAGES = ("transformers.models.wav2vec2.", "transformers.models.hubert.", "transformers.models.wavlm.",
                 "transformers.models.wav2vec2_conformer.", "transformers.models.data2vec.")


def _where(module):
    return type(module).__module__ + "."


def model_family(modules):
    """The family (one of :data:`FAMILIES`) of the model whose modules are ``modules``.

    Example
    -------
    >>> model_family(torch.nn.ModuleDict({"ctc_lin": torch.nn.Linear(4, 3)}))
    'crdnn'
    >>> from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
    >>> model_family(torch.nn.ModuleDict({"enc": ConformerEncoder(1, 8, 4, 2)}))
    'transformer'
    """
    found = set()
    for m in modules.modules():
        where = _where(m)
        if where.startswith("transformers.models.whisper."):
            return "whisper"
        if where.startswith(_SSL_PACKAGES):
            found.add("ssl")
        elif where.startswith("speechbrain.lobes.models.transformer."):
            found.add("transformer")
    for family in ("ssl", "transformer"):
        if family in found:
            return family
    return "crdnn"


def _is_projection(parent, name):
    """Whether the linear layer ``name`` of module ``parent`` is an attention or
    feed-forward projection of a Transformer-style layer."""
    ptype = type(parent).__name__
    hf = _where(parent).startswith("transformers.")
    if hf and ptype.endswith("Attention"):  # WavLM hands these weights to torch's attention
        return ptype != "WavLMAttention" and name in ("q_proj", "k_proj", "v_proj", "out_proj")
    if hf and ptype.endswith("FeedForward"):
        return name in ("intermediate_dense", "output_dense")
    if hf and ptype.endswith(("EncoderLayer", "DecoderLayer")):
        return name in ("fc1", "fc2")
    if ptype == "RelPosMHAXL" and _where(parent).startswith("speechbrain."):
        return name == "out_proj"
    return False


def projection_layers(modules):
    """Names of the attention and feed-forward projection layers of ``modules``, in order.

    Linear layers inside SpeechBrain's ``PositionalwiseFeedForward`` count as
    feed-forward projections; see :func:`_is_projection` for the rest.

    Example
    -------
    >>> from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
    >>> mods = torch.nn.ModuleDict({"enc": ConformerEncoder(1, 8, 4, 2)})
    >>> projection_layers(mods)  # doctest: +NORMALIZE_WHITESPACE
    ['enc.layers.0.mha_layer.out_proj', 'enc.layers.0.ffn_module1.1.ffn.0', 'enc.layers.0.ffn_module1.1.ffn.3',
     'enc.layers.0.ffn_module2.1.ffn.0', 'enc.layers.0.ffn_module2.1.ffn.3']
    """
    out = []
    named = dict(modules.named_modules())
    for name, module in named.items():
        if not name or not isinstance(module, torch.nn.Linear):
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = named[parent_name] if parent_name else modules
        if isinstance(parent, torch.nn.MultiheadAttention):
            continue  # it reads out_proj.weight directly: a wrapper would break it
        grand = named.get(parent_name.rpartition(".")[0]) if parent_name else None
        in_ffn = type(grand).__name__ == "PositionalwiseFeedForward" and _where(grand).startswith("speechbrain.")
        if in_ffn or _is_projection(parent, leaf):
            out.append(name)
    return out


def default_adapter_targets(modules):
    """The ``peft_targets`` adapters take when none are given: the projection layers
    (plus the linear layers of a ``ctc_lin`` head) for Transformer-style models,
    :data:`CRDNN_TARGETS` otherwise.

    Returns
    -------
    list of str
        Module names or shell-style patterns, as ``peft_targets`` takes them.

    Example
    -------
    >>> default_adapter_targets(torch.nn.ModuleDict({"DNN": torch.nn.Linear(2, 2)}))
    ['*DNN*', '*ctc_lin*']
    """
    projections = projection_layers(modules)
    if not projections:
        return list(CRDNN_TARGETS)
    head = [n for n, m in modules.named_modules()
            if isinstance(m, torch.nn.Linear) and "ctc_lin" in n.split(".")]
    return projections + [n for n in head if n not in projections]


def front_end_params(modules):
    """Names of the parameters of the convolutional front end of Hugging Face speech
    encoders in ``modules`` (kept frozen when adapting).

    Example
    -------
    >>> front_end_params(torch.nn.ModuleDict({"lin": torch.nn.Linear(2, 2)}))
    []
    """
    names = []
    for prefix, module in modules.named_modules():
        if not _where(module).startswith("transformers."):
            continue
        cls = type(module).__name__
        if cls.endswith("FeatureEncoder"):  # wav2vec2, HuBERT, WavLM
            names += [f"{prefix}.{n}" for n, _ in module.named_parameters()]
        elif cls == "WhisperEncoder":
            names += [f"{prefix}.{n}" for n, _ in module.named_parameters() if n.startswith(("conv1.", "conv2."))]
    return list(dict.fromkeys(names))
