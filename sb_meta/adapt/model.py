"""``AdaptableASR``: a loaded SpeechBrain recognizer that adapts from a few utterances.

:meth:`AdaptableASR.adapt` runs the inner loop of a registered strategy
(``finetune``, ``fomaml``, ``anil``, ``metasgd`` with the model's learned step
sizes...) on the support utterances, through ``torch.func.functional_call``
on copies of the loaded modules (an :class:`~sb_meta.adapt.objective.AdaptBrain`,
which is a :class:`sb_meta.MetaBrain`), with the losses the model allows (CTC
and/or attention). It returns a *new* model; the original is left untouched.
Dropout is off and BatchNorm uses its running statistics during adaptation
(five utterances give no usable batch statistics), and every normalisation
statistic is frozen (:func:`sb_meta.functional.frozen_statistics`).

What to adapt to is a :class:`~sb_meta.adapt.method.Support` set; how, a
:class:`~sb_meta.adapt.method.Method`. Add-ons apply at test time too
(``Method(addons=["lora"])``, ``["compress"]``, a test-time method such as
``["entropy"]``...): their hooks run during adaptation (phase ``ADAPT``) and
when the adapted model is exported (``sbmeta_before_export``). Plugins read
the model through its public API: :attr:`~AdaptableASR.tokenizer`,
:attr:`~AdaptableASR.labels`, :attr:`~AdaptableASR.blank_index`,
:attr:`~AdaptableASR.losses`, :meth:`~AdaptableASR.predictions` and
:meth:`~AdaptableASR.encoder_features`; any folder :func:`sb_meta.adapt.load_model`
reads (a teacher) offers the same.
"""

import copy
import logging
import tempfile

import speechbrain as sb
import torch

from sb_meta.adapt.divergence import LOSS_GROWTH_LIMIT, WEIGHT_GROWTH_LIMIT, AdaptationError, check_divergence
from sb_meta.adapt.objective import trainable_view, view_forward
from sb_meta.adapt.pretrained import read_pretrained
from sb_meta.adapt.support import load_audio
from sb_meta.utils import quiet

logger = logging.getLogger(__name__)

__all__ = ["AdaptableASR", "AdaptationError", "check_divergence", "LOSS_GROWTH_LIMIT", "WEIGHT_GROWTH_LIMIT"]


class AdaptableASR:
    """A SpeechBrain ``EncoderASR`` / ``EncoderDecoderASR`` that adapts and exports.

    Made by :func:`sb_meta.adapt.load_model` and :meth:`adapt`. Transcription
    is SpeechBrain's own (``self.asr`` is the interface).

    Arguments
    ---------
    asr : speechbrain.inference.interfaces.Pretrained
        The recognizer.
    yaml_text : str
        Its ``hyperparams.yaml``.
    info : dict, optional
        Contents of ``sbmeta.json`` (None for a model sb-meta did not write).
    source : str, optional
        Where it was loaded from.
    files : dict, optional
        Raw bytes of the loadables that are files rather than modules (tokenizers).
    meta_state : dict, optional
        The meta-learned strategy state (Meta-SGD step sizes).
    adapters : dict, optional
        The add-on adapters this model carries (see :meth:`export_adapters`).
    brain : AdaptBrain, optional
        The brain of the adaptation that made this model (its add-ons act at export).
    """

    def __init__(self, asr, yaml_text, info=None, source=None, files=None, meta_state=None,
                 adapters=None, brain=None, registry=None):
        self.asr = asr
        self.yaml_text = yaml_text
        self.info = info
        self.source = source
        self._files = dict(files or {})
        self.meta_state = meta_state
        self.adapters = adapters
        self._brain = brain
        self._registry = registry
        self.last_adaptation = None
        self.decoder = None  # a LexiconDecoder (set_lexicon), else SpeechBrain's own decoding

    def __repr__(self):
        return (
            f"AdaptableASR(source={self.source!r}, interface={self.interface.rsplit('.', 1)[-1]}, "
            f"strategy={self.trained_strategy!r}, adaptations={len(self.adaptations)})"
        )

    # ------------------------------------------------------------ properties
    @property
    def interface(self):
        cls = type(self.asr)
        return f"{cls.__module__}.{cls.__qualname__}"

    @property
    def device(self):
        return self.asr.device

    @property
    def sample_rate(self):
        """Sample rate the model expects (audio is resampled to it)."""
        return int(getattr(self.asr.audio_normalizer, "sample_rate", 16000))

    @property
    def tokenizer(self):
        """The model's tokenizer (``CTCTextEncoder`` or SentencePiece), read-only."""
        return self.asr.tokenizer

    @property
    def blank_index(self):
        """The CTC blank's output index (None for a model without a CTC head)."""
        return self.view.blank_index if "ctc" in self.losses else None

    @property
    def labels(self):
        """The output labels in index order (a ``CTCTextEncoder``'s labels, a SentencePiece
        model's pieces), as strings."""
        tok = self.tokenizer
        if hasattr(tok, "ind2lab"):
            return [str(lab) for _, lab in sorted(tok.ind2lab.items())]
        if hasattr(tok, "get_piece_size"):
            return [tok.id_to_piece(i) for i in range(tok.get_piece_size())]
        raise TypeError(f"cannot list the labels of a {type(tok).__name__} tokenizer")

    @property
    def losses(self):
        """The losses the model adapts with (``ctc``, ``attention``)."""
        return list(self.view.losses)

    @property
    def trained_strategy(self):
        """The strategy the model was meta-trained with (from ``sbmeta.json``)."""
        return (self.info or {}).get("strategy")

    @property
    def meta_config(self):
        return dict((self.info or {}).get("meta_config") or {})

    @property
    def module_names(self):
        return list((self.info or {}).get("module_names") or [])

    @property
    def adaptations(self):
        """Adaptation records, oldest first (kept in ``sbmeta.json``)."""
        return list((self.info or {}).get("adaptations") or [])

    @property
    def state_strategy(self):
        """The strategy whose meta-learned state the model carries, or None."""
        state = (self.info or {}).get("meta_state") or {}
        return state.get("strategy") if self.meta_state else None

    @property
    def has_step_sizes(self):
        """Whether the model carries meta-learned state (e.g. Meta-SGD step sizes)."""
        return self.state_strategy is not None

    @property
    def default_strategy(self):
        """The strategy of the model's meta-learned state when it has some, else ``finetune``."""
        return self.state_strategy or "finetune"

    @property
    def has_adapters(self):
        """Whether this model carries add-on adapters (see :meth:`export_adapters`)."""
        return bool(self.adapters)

    @property
    def view(self):
        """The :class:`~sb_meta.adapt.objective.ModelView` of this model."""
        return trainable_view(self.asr, self.module_names)

    def named_parameters(self):
        """``(name, parameter)`` pairs, named as adaptation (and training) names them."""
        return list(torch.nn.ModuleDict(self.view.modules).named_parameters())

    @property
    def registry(self):
        if self._registry is None:
            from sb_meta.plugins import PluginRegistry

            self._registry = PluginRegistry(extra=self.meta_config.get("plugins") or (), strict=False)
        return self._registry

    # ------------------------------------------------------------ inference
    def load_audio(self, path, what="audio file"):
        """A mono waveform at :attr:`sample_rate`, with clear errors naming ``path``."""
        return load_audio(path, self.asr.audio_normalizer, what)

    def encode_transcript(self, text, name="transcript"):
        """Token ids of ``text`` (errors name ``name``)."""
        from sb_meta.adapt.support import encode_transcript

        return encode_transcript(self.tokenizer, text, name, self.view.blank_index)

    def transcribe_batch(self, wavs, wav_lens):
        """SpeechBrain's ``transcribe_batch``: (words, token ids); with a lexicon
        (:meth:`set_lexicon`), (words, None) from the lexicon-constrained search."""
        if self.decoder is not None:
            return self.decoder(self.log_probs(wavs, wav_lens), wav_lens), None
        return self.asr.transcribe_batch(wavs, wav_lens)

    def set_lexicon(self, words, **options):
        """Decode with a beam search restricted to ``words`` from now on (None: SpeechBrain's
        own decoding again); models adapted from this one decode the same way.

        Arguments
        ---------
        words : list of str, str, pathlib.Path or None
            The words, a text file of words or a CSV manifest (its ``wrd`` column).
        **options
            ``beam_size``, ``word_score``, ``sil_score`` of
            :class:`~sb_meta.adapt.lexicon.LexiconDecoder`.

        Returns
        -------
        AdaptableASR
            This model.
        """
        from sb_meta.adapt.lexicon import LexiconDecoder

        self.decoder = None if words is None else LexiconDecoder.for_model(self, words, **options)
        return self

    def transcribe_file(self, path):
        """The transcript of one audio file."""
        wav = self.load_audio(path)
        words, _ = self.transcribe_batch(wav.unsqueeze(0), torch.tensor([1.0]))
        return str(words[0])

    def transcribe_waveforms(self, wavs, batch_size=8):
        """Transcripts of a list of 1-D waveforms (at :attr:`sample_rate`), in order,
        batched by similar length."""
        order = sorted(range(len(wavs)), key=lambda i: -len(wavs[i]))
        out = [None] * len(wavs)
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start : start + batch_size]
            batch, lens = sb.utils.data_utils.batch_pad_right([wavs[i] for i in idx])
            words, _ = self.transcribe_batch(batch, lens)
            for i, w in zip(idx, words):
                out[i] = str(w)
        return out

    def predictions(self, wavs, wav_lens):
        """The model's :class:`~sb_meta.contract.ASRPredictions` of a batch, without gradients:
        CTC ``log_probs`` (None without a CTC head), ``lengths`` and ``encoder_out``, the
        encoder's features (for an ``EncoderASR``, the input of its output layer).

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` at :attr:`sample_rate`.
        wav_lens : torch.Tensor
            Relative lengths in (0, 1].
        """
        with torch.no_grad():
            return view_forward(self.view, wavs.to(self.device), wav_lens.to(self.device))

    def encoder_features(self, wavs, wav_lens):
        """The encoder's features ``[batch, time, features]`` of a batch (see :meth:`predictions`)."""
        return self.predictions(wavs, wav_lens).encoder_out

    def log_probs(self, wavs, wav_lens):
        """The encoder's output ``[batch, time, outputs]`` (``EncoderASR``: CTC log-probabilities)."""
        with torch.no_grad():
            return self.asr.encode_batch(wavs, wav_lens)

    # ------------------------------------------------------------ strategies
    def check_strategy(self, name):
        """The strategy class for test-time adaptation with ``name``.

        Raises
        ------
        sb_meta.plugins.UnknownPluginError
            For an unregistered name (listing the valid ones).
        ValueError
            For a strategy that cannot adapt at test time, or one whose
            meta-learned state this model lacks.
        """
        cls = self.registry.get_strategy(name)
        if not getattr(cls, "adapts_at_test_time", False):
            usable = sorted(n for n, i in self.registry.strategies.items() if i.cls.adapts_at_test_time)
            raise ValueError(
                f"strategy {name!r} cannot adapt a model at test time; use one of: {', '.join(usable)}"
            )
        from sb_meta.adapt.plan import needs_state

        if needs_state(cls) and self.state_strategy != name:
            raise ValueError(
                f"strategy {name!r} adapts with meta-learned state (e.g. Meta-SGD step "
                f"sizes) that this model does not have (it was trained with "
                f"{self.trained_strategy!r}); use 'finetune' or another strategy"
            )
        return cls

    # ------------------------------------------------------------ copies
    def copy_interface(self):
        """A deep copy of the SpeechBrain interface (modules, decoders, scorers and
        loadables copied together, so that what they share stays shared; the
        tokenizer is read-only and kept): what an adaptation changes."""
        from sb_meta.export.plan import detach_cached_tensors

        detach_cached_tensors(self.asr.mods)
        memo = {id(self.tokenizer): self.tokenizer}
        hparams = {}
        for key, value in vars(self.asr.hparams).items():
            try:
                hparams[key] = copy.deepcopy(value, memo)
            except Exception:  # noqa: BLE001 - objects that cannot be copied are read-only here
                hparams[key] = value
        with quiet("speechbrain"):
            return type(self.asr)(modules=hparams["modules"], hparams=hparams,
                                  run_opts={"device": str(self.device)})

    def derived(self, asr, record=None, adapters=None, brain=None):
        """A model of interface ``asr`` (a :meth:`copy_interface`, frozen here) whose history is
        this model's and, when given, the adaptation ``record`` (then its :attr:`last_adaptation`);
        ``brain``: the adaptation's, whose add-ons act at export."""
        self._freeze(asr)
        info = copy.deepcopy(self.info) if self.info is not None else {}
        if record is not None:
            info["adaptations"] = list(info.get("adaptations") or []) + [record]
        model = AdaptableASR(
            asr, self.yaml_text, info=info, source=self.source, files=self._files,
            meta_state=self.meta_state, adapters=adapters, brain=brain, registry=self._registry,
        )
        model.decoder = self.decoder  # stateless: shared
        model.last_adaptation = record
        return model

    def unchanged(self, strategy, support, asr=None, brain=None, **why):
        """A frozen copy of this model (``asr``: one already made) whose provenance
        records an adaptation of 0 steps on ``support`` and ``why`` it took none."""
        from sb_meta.export.plan import now

        record = {"time": now(), "source": self.source, "strategy": strategy, "steps": 0, **why,
                  "support": support}
        return self.derived(asr if asr is not None else self.copy_interface(), record,
                            adapters=copy.deepcopy(self.adapters), brain=brain)

    @staticmethod
    def _freeze(asr):
        for p in asr.mods.parameters():
            p.requires_grad_(False)
        asr.mods.eval()

    # ------------------------------------------------------------ adaptation
    def adapt(self, support, method=None):
        """A new model adapted to the support utterances (this one is unchanged).

        Arguments
        ---------
        support : Support or (list, list)
            The support utterances (:class:`~sb_meta.adapt.method.Support`: audio
            files or 1-D waveforms at :attr:`sample_rate`, their transcripts, ids
            and task), or an ``(audio, transcripts)`` pair.
        method : Method, str or dict, optional
            How to adapt (:class:`~sb_meta.adapt.method.Method`): strategy,
            steps, step size, adapted parameters, add-ons (adapters, test-time
            methods such as ``entropy`` that adapt from the audio alone,
            compressors...) and their settings; or its string form as
            ``sb-meta evaluate --methods`` reads it (``"head:finetune:ctc_lin.*"``,
            ``"lora"``, ``"entropy"``); default the model's own adaptation
            (:attr:`default_strategy`, 3 steps, its ``inner_lr``).

        Returns
        -------
        AdaptableASR

        Raises
        ------
        AdaptationError
            When the adaptation diverged (:func:`check_divergence`): the support
            loss grew past :data:`LOSS_GROWTH_LIMIT` times its start, or a weight
            past :data:`WEIGHT_GROWTH_LIMIT` times the model's largest; nothing is kept.

        Example
        -------
        >>> import numpy as np
        >>> from sb_meta.adapt import Method, Support
        >>> support = Support([np.zeros(16000, dtype="float32")] * 2, ["YES", "NO"], ids=["u1", "u2"])
        >>> adapted = model.adapt(support, Method(strategy="finetune", steps=3, lr=0.05))  # doctest: +SKIP
        >>> adapted = model.adapt((["a.wav"], None), "entropy")  # doctest: +SKIP
        """
        from sb_meta.adapt.run import adapt_model

        return adapt_model(self, support, method)

    # ------------------------------------------------------------ export
    def export(self, folder, verify=True, force=False):
        """Write this model as a SpeechBrain pretrained folder (atomically).

        The add-ons of the adaptation that made it act first
        (``sbmeta_before_export``): LoRA / LHUC adapters are folded into the
        weights, Houlsby adapters cannot be (write them with
        :meth:`export_adapters`), ``compress`` prunes or quantizes. The
        adaptation history goes into ``sbmeta.json``.

        Returns
        -------
        pathlib.Path
        """
        from sb_meta.adapt.exporting import adapted_plan
        from sb_meta.export.plan import write_export

        plan = adapted_plan(self)
        if self._brain is not None:
            self._brain.call_hook("sbmeta_before_export", plan=plan)
        return write_export(plan, folder, force=force, verify=verify, device=self.device)

    def export_adapters(self, folder, force=False):
        """Write only this model's adapters (see :mod:`sb_meta.adapt.adapters`)."""
        from sb_meta.adapt.adapters import export_adapters

        return export_adapters(self, folder, force=force)

    def with_adapters(self, folder):
        """This (base) model with the adapters of ``folder`` applied (a new model)."""
        from sb_meta.adapt.adapters import with_adapters

        return with_adapters(self, folder)

    def merge_adapters(self):
        """A new model with LoRA / LHUC adapters folded into the layers they wrap.

        It computes the same function up to rounding and carries no adapters;
        Houlsby adapters are non-linear and cannot be merged (``ValueError``).
        """
        if not self.adapters:
            raise ValueError("this model carries no adapters to merge")
        with tempfile.TemporaryDirectory() as tmp:
            self.export(f"{tmp}/merged")
            # this model's own export, from a folder already loaded (and checked or trusted)
            merged = AdaptableASR(**read_pretrained(f"{tmp}/merged", device=self.device, trust=True))
        merged.source = self.source
        return merged
