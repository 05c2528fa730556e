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

Add-ons apply at test time too (``addons=["lora"]``, ``["compress"]``...):
their hooks run during adaptation (phase ``ADAPT``) and when the adapted
model is exported (``sbmeta_before_export``).
"""

import copy
import contextlib
import logging
import math
import tempfile

import speechbrain as sb
import torch

from sb_meta.adapt.hf import adaptable_hf_modules
from sb_meta.adapt.objective import AdaptBrain, trainable_view
from sb_meta.adapt.pretrained import read_pretrained
from sb_meta.adapt.support import ctc_min_frames, load_audio, make_batches, prepare_support
from sb_meta.contract import Phase
from sb_meta.functional import frozen_statistics

logger = logging.getLogger(__name__)

__all__ = ["AdaptableASR", "AdaptationError", "check_divergence", "LOSS_GROWTH_LIMIT", "WEIGHT_GROWTH_LIMIT"]


class AdaptationError(RuntimeError):
    """Test-time adaptation failed (e.g. diverged to non-finite weights)."""


#: Adaptation has diverged, and nothing is kept, when the support loss after a step exceeds
#: this multiple of its value before the first step (gradient steps that work lower it; a step
#: size too large for the model makes it explode within a few steps)...
LOSS_GROWTH_LIMIT = 10.0
#: ... or when an adapted weight is non-finite or exceeds this multiple of the largest weight
#: of the model before adaptation (weights that far out decode nothing useful even where the
#: loss has not caught up yet)
WEIGHT_GROWTH_LIMIT = 100.0


def check_divergence(losses, fast, base_largest, step_size):
    """Raise :class:`AdaptationError` in one line naming the step size when an
    adaptation diverged (see :data:`LOSS_GROWTH_LIMIT`, :data:`WEIGHT_GROWTH_LIMIT`).

    Arguments
    ---------
    losses : list of float
        The support loss before the first step and after each step.
    fast : dict of str to torch.Tensor
        The adapted weights.
    base_largest : float
        The largest absolute weight of the model before adaptation.
    step_size : str
        How the step size is named in the message (``"--lr 5"``).

    Example
    -------
    >>> check_divergence([9.6, 30.0, 2.6e6], {}, 1.0, "lr 5")
    Traceback (most recent call last):
    ...
    sb_meta.adapt.model.AdaptationError: adaptation diverged with step size lr 5: the support loss went from 9.6 before the first step to 2.6e+06 after step 2 (over 10x); nothing was adapted or exported: use a smaller step size
    """
    hint = "nothing was adapted or exported: use a smaller step size"
    for i, loss in enumerate(losses):
        if not math.isfinite(loss) or (i and loss > LOSS_GROWTH_LIMIT * max(losses[0], 1e-8)):
            raise AdaptationError(
                f"adaptation diverged with step size {step_size}: the support loss went from "
                f"{losses[0]:.3g} before the first step to {loss:.3g} after step {i} "
                f"(over {LOSS_GROWTH_LIMIT:g}x); {hint}")
    bound = WEIGHT_GROWTH_LIMIT * max(base_largest, 1e-8)
    for name, w in fast.items():
        largest = float(w.detach().abs().max()) if w.numel() else 0.0
        if not math.isfinite(largest) or largest > bound:
            raise AdaptationError(
                f"adaptation diverged with step size {step_size}: {name} reached {largest:.3g}, over "
                f"{WEIGHT_GROWTH_LIMIT:g}x the model's largest weight before adaptation "
                f"({base_largest:.3g}); {hint}")


@contextlib.contextmanager
def _quiet(name, level=logging.WARNING):
    log = logging.getLogger(name)
    saved = log.level
    log.setLevel(max(level, saved))
    try:
        yield
    finally:
        log.setLevel(saved)


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
        return self.asr.tokenizer

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
        if self._needs_state(cls) and self.state_strategy != name:
            raise ValueError(
                f"strategy {name!r} adapts with meta-learned state (e.g. Meta-SGD step "
                f"sizes) that this model does not have (it was trained with "
                f"{self.trained_strategy!r}); use 'finetune' or another strategy"
            )
        return cls

    @staticmethod
    def _needs_state(cls):
        from sb_meta.strategy import Strategy

        return cls.meta_modules is not Strategy.meta_modules

    def _check_addons(self, addons, peft, addon_config):
        """(add-on names, their configuration) for :meth:`adapt`, validated."""
        from sb_meta.options import check_options
        from sb_meta.strategy import META_KEYS

        if peft is not None:
            if addons:
                raise ValueError("give addons= or peft=, not both")
            addons = [peft]
        if isinstance(addons, str):
            addons = [a.strip() for a in addons.split(",") if a.strip()]
        addons = list(addons or [])
        classes = [self.registry.get_addon(name) for name in addons]  # unknown: lists the valid ones
        if len(set(addons)) != len(addons):
            raise ValueError(f"add-on listed twice: {addons}")
        if self.adapters and any(c.kind == "adapter" for c in classes):
            raise ValueError(
                f"this model already carries {'+'.join(self.adapters['addons'])} adapters; "
                "adapt them further without adapter add-ons, or adapt the base model"
            )
        addon_config = dict(addon_config or {})
        if addon_config and not addons:
            raise ValueError("addon_config is given but no add-on (addons=[...])")
        clash = sorted(set(addon_config) & (set(META_KEYS) | {"sbmeta_view", "ctc_weight"}))
        if clash:
            raise ValueError(f"addon_config cannot set {clash}; pass them to adapt() itself")
        check_options(addon_config, [i.cls for i in self.registry.addons.values()], addons)
        return addons, addon_config

    # ------------------------------------------------------------ copies
    def _copy(self):
        """A deep copy of the interface (modules, decoders, scorers and loadables
        copied together, so that what they share stays shared; the tokenizer is
        read-only and kept)."""
        from sb_meta.export.plan import detach_cached_tensors

        detach_cached_tensors(self.asr.mods)
        memo = {id(self.tokenizer): self.tokenizer}
        hparams = {}
        for key, value in vars(self.asr.hparams).items():
            try:
                hparams[key] = copy.deepcopy(value, memo)
            except Exception:  # noqa: BLE001 - objects that cannot be copied are read-only here
                hparams[key] = value
        with _quiet("speechbrain"):
            return type(self.asr)(modules=hparams["modules"], hparams=hparams,
                                  run_opts={"device": str(self.device)})

    def _derived(self, asr, info, adapters=None, brain=None):
        model = AdaptableASR(
            asr, self.yaml_text, info=info, source=self.source, files=self._files,
            meta_state=self.meta_state, adapters=adapters, brain=brain, registry=self._registry,
        )
        model.decoder = self.decoder  # stateless: shared
        return model

    def _unchanged(self, strategy, support, asr=None, brain=None, **why):
        """A frozen copy of this model (``asr``: one already made) whose provenance
        records an adaptation of 0 steps on ``support`` and ``why`` it took none."""
        asr = asr if asr is not None else self._copy()
        self._freeze(asr)
        record = {"time": _now(), "source": self.source, "strategy": strategy, "steps": 0, **why,
                  "support": support}
        info = copy.deepcopy(self.info) if self.info is not None else {}
        info["adaptations"] = list(info.get("adaptations") or []) + [record]
        unchanged = self._derived(asr, info, adapters=copy.deepcopy(self.adapters), brain=brain)
        unchanged.last_adaptation = record
        return unchanged

    def _brain_for(self, asr, strategy, steps, lr, adapt_params, addons, addon_config, ctc_weight):
        """An :class:`AdaptBrain` over ``asr``'s modules (add-on surgery applied)."""
        view = trainable_view(asr, self.module_names)
        saved = self.meta_config
        hparams = {
            "meta_strategy": strategy,
            "inner_steps": max(int(steps), 1),
            "inner_lr": float(saved.get("inner_lr") or 0.05) if lr is None else float(lr),
            "first_order": True,
            "adapt_params": saved.get("adapt_params") if self._needs_state(
                self.registry.get_strategy(strategy)) else adapt_params,
            "plugins": saved.get("plugins") or [],
            "meta_addons": list(addons),
            "sbmeta_view": view,
            "ctc_weight": float((self.info or {}).get("ctc_weight") or 0.5) if ctc_weight is None
            else float(ctc_weight),
        }
        hparams.update(addon_config)
        for p in (p for m in view.modules.values() for p in m.parameters()):
            p.requires_grad_(True)
        adaptable_hf_modules(view.modules)
        with _quiet("speechbrain.core"):  # no per-adaptation "model statistics" logs
            brain = AdaptBrain(modules=dict(view.modules), hparams=hparams,
                               run_opts={"device": str(self.device), "noprogressbar": True},
                               registry=self.registry)
        encoder = view.encoder
        for name, module in brain.modules.items():  # add-ons may have replaced whole layers
            if isinstance(encoder, sb.nnet.containers.Sequential) and name in encoder and encoder[name] is not module:
                encoder[name] = module
        brain.modules.eval()
        return brain

    @staticmethod
    def _freeze(asr):
        for p in asr.mods.parameters():
            p.requires_grad_(False)
        asr.mods.eval()

    # ------------------------------------------------------------ adaptation
    def adapt(self, wavs_or_paths, transcripts, strategy=None, steps=3, lr=None,
              adapt_params=None, batch_size=None, ids=None, addons=None, peft=None,
              addon_config=None, task=None, ctc_weight=None, unsupervised=None,
              unsupervised_config=None, cmvn=None):
        """A new model adapted to the support utterances (this one is unchanged).

        Arguments
        ---------
        wavs_or_paths : list
            Audio files, or 1-D waveforms at :attr:`sample_rate`.
        transcripts : list of str
            One per utterance.
        strategy : str, optional
            A registered strategy that adapts at test time; default
            :attr:`default_strategy` (``metasgd`` when the model has
            meta-learned step sizes), ``finetune`` with adapter add-ons.
        steps : int
            Gradient steps (>= 1), cycling over the support batches.
        lr : float, optional
            Step size; default: the meta-learned step sizes for ``metasgd``,
            else the model's ``inner_lr`` (0.05 for models sb-meta did not train).
        adapt_params : list of str, optional
            Parameter name patterns to adapt (``["ctc_lin.*"]``); default the
            strategy's (everything, or the output layer for ``anil``).
        batch_size : int, optional
            Support utterances per batch; default all in one batch.
        ids : list of str, optional
            Utterance ids, used in messages and in the provenance record.
        addons : list of str, optional
            Add-ons active during adaptation and at export, e.g. ``["lora"]``
            (only its adapters adapt; :meth:`export_adapters` writes them
            alone) or ``["compress"]``.
        peft : str, optional
            Shorthand for ``addons=[peft]``.
        addon_config : dict, optional
            Add-on settings, e.g. ``{"peft_rank": 4}``.
        task : str, optional
            The task's name (speaker, channel...), handed to the hooks.
        ctc_weight : float, optional
            Weight of CTC against attention for models with both.
        unsupervised : str, optional
            ``"pseudo"``, ``"entropy"`` or ``"cmvn"``: adapt from the audio alone
            (``transcripts`` must be None; see :mod:`sb_meta.adapt.unsupervised`).
        unsupervised_config : dict, optional
            ``confidence``, ``min_improvement``, ``blank_guard``, ``cmvn_weight``...
        cmvn : float, optional
            Feature-space then model-space adaptation: before the update,
            re-estimate the input statistics on the support audio, blended with
            the training statistics with this weight in (0, 1] (as
            ``unsupervised="cmvn"`` does alone); the steps then adapt to the
            renormalised features.

        Returns
        -------
        AdaptableASR

        Raises
        ------
        AdaptationError
            When the adaptation diverged (:func:`check_divergence`): the support
            loss grew past :data:`LOSS_GROWTH_LIMIT` times its start, or a weight
            past :data:`WEIGHT_GROWTH_LIMIT` times the model's largest; nothing is kept.
        """
        from sb_meta.episodes import Task
        from sb_meta.functional import select_params

        addons, addon_config = self._check_addons(addons, peft, addon_config)
        carried = self.adapters
        adapter_addons = [a for a in addons if self.registry.get_addon(a).kind == "adapter"]
        if adapter_addons or carried:
            strategy = strategy or "finetune"
        strategy = strategy or self.default_strategy
        cls = self.check_strategy(strategy)
        uses_state = self._needs_state(cls)
        if (adapter_addons or carried) and uses_state:
            raise ValueError(
                f"strategy {strategy!r} adapts with meta-learned state of the model's own "
                "parameters and cannot adapt add-on adapters; use finetune, fomaml or anil"
            )
        if isinstance(adapt_params, str):
            adapt_params = [adapt_params]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if lr is not None and not (math.isfinite(float(lr)) and float(lr) > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        view = self.view
        from sb_meta.adapt import unsupervised as unsup

        if unsupervised is not None:
            if unsupervised not in unsup.MODES:
                raise ValueError(f"unsupervised must be one of {unsup.MODES}, got {unsupervised!r}")
            if transcripts is not None:
                raise ValueError("unsupervised adaptation never reads transcripts: pass transcripts=None")
            if "ctc" not in view.losses and unsupervised != "cmvn":
                raise ValueError(f"unsupervised adaptation needs a CTC head; this model has {view.losses}")
        elif transcripts is None:
            raise ValueError(f"give the support transcripts, or unsupervised= one of {unsup.MODES}")
        unsup.check_cmvn(cmvn, unsupervised)
        config = dict(unsup.DEFAULTS, **(unsupervised_config or {}))
        unknown = sorted(set(config) - set(unsup.DEFAULTS))
        if unknown:
            raise ValueError(f"unknown unsupervised_config keys {unknown}; keys are {sorted(unsup.DEFAULTS)}")
        wavs, tokens, names, records = prepare_support(
            wavs_or_paths, transcripts, ids, self.asr.audio_normalizer, self.tokenizer, view.blank_index
        )
        new_asr = self._copy()
        brain = self._brain_for(new_asr, strategy, steps, lr, adapt_params, addons, addon_config, ctc_weight)
        size = len(wavs) if not batch_size else int(batch_size)
        unsup_log = None
        if unsupervised == "pseudo":  # the unadapted model's confident hypotheses become transcripts
            labels = unsup.pseudo_labels(brain, make_batches(wavs, None, names, view, size),
                                         self.tokenizer, view.blank_index, config["confidence"])
            keep = [i for i, (hyp, conf) in enumerate(labels) if conf >= config["confidence"] and hyp.strip()]
            unsup_log = {"mode": "pseudo", "confidence": [round(c, 4) for _, c in labels], "kept": len(keep),
                         "hypotheses": [h for h, _ in labels]}
            for i, (hyp, conf) in enumerate(labels):
                records[i]["pseudo_label"], records[i]["confidence"] = hyp, conf
            if not keep:
                return self._unchanged(strategy, records, new_asr, brain,
                                       unsupervised=dict(unsup_log, stopped="no utterance confident enough"))
            wavs, names = [wavs[i] for i in keep], [names[i] for i in keep]
            tokens = [self.encode_transcript(labels[i][0], names[j]) for j, i in enumerate(keep)]
        elif unsupervised == "entropy":
            brain.hparams.unsupervised = "entropy"
        names_to_adapt = brain.strategy.load_state(self.meta_state) if uses_state else None
        if adapt_params:
            chosen = select_params(brain.base_param_names(), adapt_params)
            if names_to_adapt is not None:
                extra = [n for n in chosen if n not in set(names_to_adapt)]
                if extra:
                    raise ValueError(
                        f"adapt_params selects parameters without meta-learned step sizes: "
                        f"{extra[:5]}; they exist for {len(names_to_adapt)} parameters such as "
                        f"{names_to_adapt[:3]}"
                    )
            names_to_adapt = brain.choose_adapted(chosen, Phase.ADAPT)
            if not names_to_adapt:
                raise ValueError(f"adapt_params {adapt_params} selects no parameter the add-ons {addons} adapt")
        if carried:  # adapt the adapters this model carries, nothing else
            pool = names_to_adapt if names_to_adapt is not None else brain.base_param_names()
            names_to_adapt = [n for n in pool if n in set(carried["names"])]
            if not names_to_adapt:
                raise ValueError(
                    f"adapt_params {adapt_params} selects none of the model's adapter parameters "
                    f"(such as {carried['names'][:3]})"
                )
        bv = brain.hparams.sbmeta_view
        with torch.no_grad():  # the scale divergence is judged against
            base_largest = max((float(p.abs().max()) for p in brain.trainable_params().values() if p.numel()),
                               default=1.0)
        batches = make_batches(wavs, tokens, names, bv, size)
        if "ctc" in bv.losses and tokens is not None:
            self._check_lengths(brain, batches, size, tokens, names, records)
        rows = {r["id"] or n: {"wav": r["audio"], "wrd": r["transcript"]} for r, n in zip(records, names)}
        the_task = Task(str(task) if task is not None else "adapt", list(rows), [], rows=rows)
        cudnn_off = (
            torch.backends.cudnn.flags(enabled=False)
            if str(self.device).startswith("cuda") else contextlib.nullcontext()
        )
        # the support's input statistics: alone (unsupervised="cmvn"), or before the update (cmvn=w)
        weight = config["cmvn_weight"] if unsupervised == "cmvn" else cmvn
        with cudnn_off:
            renormalized = None if weight is None else unsup.renormalize(brain, batches, float(weight))
            if unsupervised == "cmvn":  # new input statistics, no gradient step
                unsup_log, fast = dict(mode="cmvn", **renormalized), {}
            elif unsupervised == "entropy":
                names_to_adapt = names_to_adapt or brain.strategy.adapt_names(Phase.ADAPT)
                unsup_log = dict(mode="entropy", **unsup.entropy_steps(
                    brain, batches, steps, lr, names_to_adapt, the_task, Phase.ADAPT, config))
                fast = {n: p for n, p in brain.trainable_params().items() if n in set(names_to_adapt)}
            else:
                with torch.enable_grad():
                    fast = brain.strategy.adapt(batches, steps=steps, lr=lr, names=names_to_adapt,
                                                task=the_task, phase=Phase.ADAPT)
        params = brain.trainable_params()
        support_loss = None
        losses = [float(x) for x in getattr(brain.strategy, "inner_losses", None) or []]
        if unsupervised in (None, "pseudo") and losses:  # gradient steps on a support loss
            # the loss after the last step too; the add-ons' loss-term means cover the steps only
            with torch.no_grad(), frozen_statistics(brain.modules), brain.uncounted_loss_terms():
                after = brain.strategy.loss(fast, batches[steps % len(batches)], Phase.ADAPT, the_task)
            losses.append(float(after))
            support_loss = {"before": losses[0], "after": losses[-1]}
            step_size = f"lr {float(lr):g}" if lr is not None else (
                "the meta-learned step sizes" if uses_state else f"lr {brain.meta_config['inner_lr']:g} "
                "(the model's inner_lr)")
            check_divergence(losses, fast, base_largest, step_size)
        with torch.no_grad():
            for n, w in fast.items():
                if not torch.isfinite(w).all():
                    raise AdaptationError(f"adaptation diverged (non-finite values in {n}); lower the step size")
                params[n].copy_(w.detach())
        self._freeze(new_asr)
        final_loss = getattr(brain.strategy, "last_inner_loss", None)
        record = {
            "time": _now(),
            "source": self.source,
            "strategy": strategy,
            "steps": 0 if unsupervised == "cmvn" else steps,
            "lr": float(lr) if lr is not None else ("meta-learned" if uses_state else brain.meta_config["inner_lr"]),
            "adapt_params": list(adapt_params) if adapt_params else None,
            "adapted_parameters": len(fast),
            "losses": list(bv.losses),
            "support": records,
            "last_inner_loss": float(final_loss) if final_loss is not None else None,
        }
        if support_loss is not None:
            record["support_loss"] = support_loss
        if unsup_log is not None:
            record["unsupervised"] = unsup_log
        if cmvn is not None:
            record["cmvn"] = dict(weight=float(cmvn), **renormalized)
        if addons:
            record["addons"] = list(addons)
            record["addon_config"] = dict(addon_config)
        from sb_meta.adapt.adapters import adapters_record

        adapters = copy.deepcopy(carried) if carried else adapters_record(brain, self, addons, addon_config)
        if adapters is not None:
            adapters["adaptations"] = list(adapters.get("adaptations") or []) + [record]
        info = copy.deepcopy(self.info) if self.info is not None else {}
        info["adaptations"] = list(info.get("adaptations") or []) + [record]
        adapted = self._derived(new_asr, info, adapters=adapters, brain=brain)
        adapted.last_adaptation = record
        return adapted

    @staticmethod
    def _check_lengths(brain, batches, size, tokens, names, records):
        """Every support utterance long enough for its transcript under CTC."""
        with torch.no_grad():
            for start, batch in zip(range(0, len(tokens), size), batches):
                pred = brain.compute_forward(batch, sb.Stage.TEST)
                frames = torch.round(pred.lengths.cpu() * pred.log_probs.shape[1]).long().tolist()
                for i, n in enumerate(frames, start):
                    if n < ctc_min_frames(tokens[i]):
                        raise ValueError(
                            f"{names[i]} is too short for its transcript {records[i]['transcript']!r}: "
                            f"{n} output frames, CTC needs {ctc_min_frames(tokens[i])}"
                        )

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


def _now():
    from sb_meta.export.plan import now

    return now()
