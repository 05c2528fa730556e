"""A trainable view of a loaded SpeechBrain ASR model: its modules and its losses.

SpeechBrain's inference interfaces (``EncoderASR``, ``EncoderDecoderASR``)
only decode. Adapting one needs its parts as a brain: :func:`trainable_view`
finds them and :class:`AdaptBrain` computes the losses they allow:

* **CTC** when the model has a CTC head: an ``EncoderASR`` encoder ending in
  a linear layer and a (log-)softmax, or the ``ctc_fc`` of an
  ``EncoderDecoderASR`` decoder's ``CTCScorer``;
* **attention** (teacher-forced negative log-likelihood) when the decoder is
  an ``S2SRNNBeamSearcher`` (``emb``, ``dec``, ``fc``), an
  ``S2STransformerBeamSearcher`` (``model.decode``, ``fc``) or the searcher of
  a ``WhisperASR`` (the Hugging Face Whisper's decoder, after the searcher's
  prompt tokens);

weighted by ``ctc_weight`` when both exist. Module names: a model exported by
sb-meta lists the recipe's trained modules in its ``modules:`` (and their
names in ``sbmeta.json``), so parameters are named exactly as in training
(``enc.…``, ``ctc_lin.…``); for any other model the encoder's layers (when it
is a ``Sequential``) are named as in the encoder, the decoder ``decoder`` and
a CTC head outside both ``ctc_lin``, a Whisper ``whisper``.
"""

import contextlib
import logging
from dataclasses import dataclass, field

import speechbrain as sb
import torch

from sb_meta.brain import MetaBrain
from sb_meta.contract import ASRPredictions
from sb_meta.forward import family_forward, recipe_family

logger = logging.getLogger(__name__)

__all__ = ["ModelView", "trainable_view", "view_forward", "AdaptBrain"]

_ACTIVATIONS = (torch.nn.LogSoftmax, torch.nn.Softmax, sb.nnet.activations.Softmax)
_LINEAR = (torch.nn.Linear, sb.nnet.linear.Linear)


@dataclass
class ModelView:
    """The parts of a loaded model that adaptation uses.

    Attributes
    ----------
    modules : dict
        ``name -> module``: the adaptation brain's modules (what parameter
        names and ``adapt_params`` patterns refer to).
    encoder : torch.nn.Module
        ``encoder(wavs, wav_lens)`` as the interface runs it.
    encoder_gives_log_probs : bool
        The encoder's output is the CTC log-probabilities (``EncoderASR``).
    ctc_head : torch.nn.Module or None
        Linear layer on the encoder output giving CTC logits (``EncoderDecoderASR``).
    tap : torch.nn.Module or None
        For ``EncoderASR``: the encoder's last linear layer, whose input is
        reported as ``encoder_out``.
    decoder : torch.nn.Module or None
        The beam searcher of an ``EncoderDecoderASR``.
    attention : str or None
        ``"rnn"``, ``"transformer"`` or ``"whisper"`` when a teacher-forced
        attention loss is possible.
    prefix : list of int or None
        Tokens the decoder reads before the transcript (Whisper's prompt);
        None: ``[bos_index]``.
    transformer_encode : torch.nn.Module or None
        Older SpeechBrain Transformer models encode in two stages.
    losses : list of str
        The losses the model allows (``ctc``, ``attention``).
    family : str or None
        For a model sb-meta exported, its recipe family
        (:func:`sb_meta.forward.recipe_family`): the model then runs the
        recipe's own forward (:func:`sb_meta.forward.family_forward`) on
        :attr:`modules`. None: the interface's parts are run as it runs them.
    compute_features : callable or None
        The exported model's ``compute_features`` (recipe families that read features).
    pad_index : int
        The exported model's ``pad_index`` (the Transformer family).
    """

    modules: dict
    encoder: object
    encoder_gives_log_probs: bool = False
    ctc_head: object = None
    tap: object = None
    decoder: object = None
    attention: str = None
    transformer_encode: object = None
    bos_index: int = None
    eos_index: int = None
    blank_index: int = 0
    losses: list = field(default_factory=list)
    prefix: list = None
    family: str = None
    compute_features: object = None
    pad_index: int = 0


class _WhisperEncode:
    """``encoder(wavs, wav_lens)`` of a Whisper wrapper, as ``WhisperASR.encode_batch`` runs it."""

    def __init__(self, whisper):
        self.whisper = whisper

    def __call__(self, wavs, wav_lens):
        return self.whisper.forward_encoder(self.whisper._get_mel(wavs))


def _whisper_view(asr, module_names):
    """The view of a ``WhisperASR``: attention loss only, the searcher's prompt as prefix."""
    whisper, searcher = asr.mods["whisper"], asr.mods["decoder"]
    names = module_names or ["whisper"]
    missing = [n for n in names if n not in asr.mods]
    if missing:
        raise ValueError(f"the model's modules lack {missing}, which its sbmeta.json lists")
    return ModelView(
        modules={n: asr.mods[n] for n in names}, encoder=_WhisperEncode(whisper), decoder=searcher,
        attention="whisper", bos_index=int(searcher.initial_tokens[-1]), eos_index=int(whisper.eos),
        blank_index=None, losses=["attention"], prefix=[int(t) for t in searcher.initial_tokens],
    )


def _ctc_scorer(decoder):
    scorer = getattr(decoder, "scorer", None)
    if scorer is None:
        return None
    for table in (getattr(scorer, "full_scorers", {}), getattr(scorer, "partial_scorers", {})):
        for impl in table.values():
            if hasattr(impl, "ctc_fc"):
                return impl
    return None


def _runs_recipe_pipeline(children, modules, compute_features):
    """Whether the interface's encoder runs nothing but the recipe's pipeline over ``modules``:
    each of its steps is one of them, the features, the output activation or the
    Transformer's encoder wrapper. Then the recipe family's forward computes what the
    interface computes; a folder whose encoder adds any other step keeps its own forward."""
    if not children:
        return False
    known = {id(m) for m in modules.values()} | {id(compute_features)}
    for _, step in children:
        wrapped = getattr(step, "transformer", None)
        if id(step) in known or isinstance(step, _ACTIVATIONS) or (wrapped is not None and id(wrapped) in known):
            continue
        return False
    return compute_features is not None or "ssl" in modules


def trainable_view(asr, module_names=None):
    """The :class:`ModelView` of a SpeechBrain ASR interface ``asr``.

    Arguments
    ---------
    asr : speechbrain.inference.ASR.EncoderASR or EncoderDecoderASR
    module_names : list of str, optional
        Names of the trained modules listed in the model's ``modules:``
        (``sbmeta.json``'s ``module_names``).
    """
    mods = asr.mods
    if "whisper" in mods and "decoder" in mods:
        return _whisper_view(asr, module_names)
    if "encoder" not in mods:
        raise ValueError("the model has no `encoder` module; sb-meta adapts SpeechBrain ASR interfaces")
    encoder = mods["encoder"]
    decoder = mods["decoder"] if "decoder" in mods else None
    view = ModelView(modules={}, encoder=encoder)
    children = list(encoder.named_children()) if isinstance(encoder, sb.nnet.containers.Sequential) else []
    if decoder is None:  # EncoderASR: the encoder's output is decoded by CTC
        fn = getattr(asr.hparams, "decoding_function", None)
        view.blank_index = int(getattr(fn, "keywords", {}).get("blank_id", 0))
        view.encoder_gives_log_probs = True
        if len(children) >= 2 and isinstance(children[-1][1], _ACTIVATIONS) and isinstance(children[-2][1], _LINEAR):
            view.tap = children[-2][1]
        view.losses = ["ctc"]
    else:
        scorer = _ctc_scorer(decoder)
        if scorer is not None:
            view.ctc_head = scorer.ctc_fc
            view.blank_index = int(scorer.blank_index)
            view.losses.append("ctc")
        if hasattr(decoder, "emb") and hasattr(decoder, "dec") and hasattr(decoder, "fc"):
            view.attention = "rnn"
        elif hasattr(decoder, "model") and hasattr(decoder.model, "decode") and hasattr(decoder, "fc"):
            view.attention = "transformer"
        if view.attention:
            view.losses.append("attention")
            view.bos_index, view.eos_index = int(decoder.bos_index), int(decoder.eos_index)
        view.decoder = decoder
        if getattr(asr, "transformer_beam_search", False) and "transformer" in mods:
            view.transformer_encode = mods["transformer"]
    if not view.losses:
        raise ValueError(
            "cannot adapt this model: it has neither a CTC head nor an attention decoder that "
            f"sb-meta can train ({type(decoder).__name__ if decoder is not None else 'no decoder'})"
        )
    if module_names:
        missing = [n for n in module_names if n not in mods]
        if missing:
            raise ValueError(f"the model's modules lack {missing}, which its sbmeta.json lists")
        view.modules = {n: mods[n] for n in module_names}
        family = recipe_family(view.modules)
        features = getattr(asr.hparams, "compute_features", None)
        if family is not None and _runs_recipe_pipeline(children, view.modules, features):
            view.family, view.compute_features = family, features
            view.pad_index = int(getattr(asr.hparams, "pad_index", 0) or 0)
    else:
        view.modules = dict(children) if children else {"encoder": encoder}
        if decoder is not None and any(True for _ in decoder.parameters()):
            view.modules["decoder"] = decoder
        if view.ctc_head is not None:
            reachable = {id(m) for mod in view.modules.values() for m in mod.modules()}
            if id(view.ctc_head) not in reachable:
                view.modules["ctc_lin"] = view.ctc_head
    return view


def view_forward(view, wavs, wav_lens, tokens_bos=None, modules=None):
    """The :class:`ASRPredictions` of the model ``view`` shows on a batch of waveforms.

    ``encoder_out`` holds the encoder's features (for an ``EncoderASR``, the
    input of its last linear layer); ``seq_log_probs`` the teacher-forced
    attention outputs when ``tokens_bos`` is given and the model has a decoder.
    A model with a recipe :attr:`~ModelView.family` runs the recipe's forward on
    ``modules`` (default: the view's; an adaptation brain passes its own, which add-ons
    may have changed).
    """
    if view.family is not None:
        modules = view.modules if modules is None else modules
        return family_forward(modules, wavs, wav_lens, compute_features=view.compute_features,
                              tokens_bos=tokens_bos, attention=True, pad_index=view.pad_index)
    tapped = []
    handle = None
    if view.tap is not None:
        handle = view.tap.register_forward_pre_hook(lambda m, args: tapped.append(args[0]))
    try:
        out = view.encoder(wavs, wav_lens)
    finally:
        if handle is not None:
            handle.remove()
    if isinstance(out, tuple):
        out = out[0]
    if view.transformer_encode is not None:
        out = view.transformer_encode.encode(out, wav_lens)
    if view.encoder_gives_log_probs:
        log_probs = out
        if not torch.allclose(out.exp().sum(-1), torch.ones(()), atol=1e-3):
            log_probs = torch.log_softmax(out, dim=-1)
        return ASRPredictions(log_probs, wav_lens, tapped[-1] if tapped else None)
    log_probs = None
    if view.ctc_head is not None:
        log_probs = torch.log_softmax(view.ctc_head(out), dim=-1)
    seq = None
    if view.attention and tokens_bos is not None:
        dec = view.decoder
        if view.attention == "whisper":  # logits from the prompt's last token on
            logits, _, _ = dec.model.forward_decoder(out, tokens_bos, use_cache=False)
            return ASRPredictions(None, wav_lens, out, torch.log_softmax(logits[:, len(view.prefix) - 1:], dim=-1))
        if view.attention == "rnn":
            h, _ = dec.dec(dec.emb(tokens_bos), out, wav_lens)
        else:
            enc_lens = torch.round(wav_lens * out.shape[1]).int()
            # TransformerASR.decode is wrapped in no_grad (it serves the beam search):
            # call the function it wraps, or no gradient would reach encoder or decoder
            decode = getattr(type(dec.model).decode, "__wrapped__", None)
            h, _ = decode(dec.model, tokens_bos, out, enc_lens) if decode else dec.model.decode(
                tokens_bos, out, enc_lens)
        seq = torch.log_softmax(dec.fc(h), dim=-1)
    return ASRPredictions(log_probs, wav_lens, out, seq)


class AdaptBrain(MetaBrain):
    """The brain test-time adaptation runs: a :class:`ModelView`'s losses.

    ``view`` (the :class:`ModelView`) is its :attr:`view`; ``hparams["ctc_weight"]``
    weighs CTC against attention when the model has both, and
    ``hparams["blank_index"]`` is the CTC blank, as in a recipe. Batches carry
    ``sig``, ``tokens`` (CTC targets) and, for attention, ``tokens_bos`` /
    ``tokens_eos``. A test-time method that adapts to another objective than
    the transcripts' swaps it in with :meth:`objective_replaced`.

    Arguments
    ---------
    view : ModelView
        The model's parts.
    *args, **kwargs
        :class:`sb_meta.MetaBrain`'s.
    """

    def __init__(self, view, *args, **kwargs):
        self.view = view
        self.objective = None
        super().__init__(*args, **kwargs)

    @contextlib.contextmanager
    def objective_replaced(self, objective):
        """Within the block, the loss is ``objective(predictions, batch)`` (no transcript is read)."""
        saved, self.objective = self.objective, objective
        try:
            yield self
        finally:
            self.objective = saved

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        tokens_bos = batch.tokens_bos[0] if hasattr(batch, "tokens_bos") else None
        return view_forward(self.view, wavs, wav_lens, tokens_bos, modules=self.modules)

    def compute_objectives(self, predictions, batch, stage):
        from sb_meta.losses import ctc_loss

        if self.objective is not None:
            return self.objective(predictions, batch)
        terms = []
        if predictions.log_probs is not None:
            tokens, tokens_lens = batch.tokens
            terms.append(("ctc", ctc_loss(predictions.log_probs, tokens, predictions.lengths,
                                          tokens_lens, blank_index=self.view.blank_index)))
        if predictions.seq_log_probs is not None:
            tokens_eos, lens = batch.tokens_eos
            terms.append(("attention", sb.nnet.losses.nll_loss(predictions.seq_log_probs, tokens_eos, length=lens)))
        if len(terms) == 2:
            w = float(self.hparams.ctc_weight)
            return w * terms[0][1] + (1 - w) * terms[1][1]
        return terms[0][1]
