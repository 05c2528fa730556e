"""Test-time methods that adapt without transcripts: ``entropy``, ``pseudo``, ``cmvn``.

Users rarely have transcripts for a new speaker or channel; they have audio.
These three add-ons (:class:`sb_meta.adapt.testtime.TestTimeMethod`, the same
contract as any third-party test-time method) adapt from audio alone, the
transcripts never read: ``Method(addons=["entropy"])``, ``model.adapt((wavs,
None), "entropy")``, ``sb-meta adapt --unsupervised entropy``,
``sb-meta evaluate --methods entropy``.

``pseudo``
    The unadapted model transcribes the support utterances (greedy CTC); an
    utterance is kept when its confidence, the mean over its frames of the
    highest CTC posterior, reaches ``pseudo_confidence`` (default 0.9); the model is
    then adapted on the kept utterances and their hypotheses as if they were
    transcripts. No utterance confident enough: the model is returned unchanged.
``entropy``
    Entropy minimisation of the CTC posteriors over the support frames, as in
    SUTA (Lin et al. 2022, single-utterance test-time adaptation for CTC
    models): the loss is the mean per-frame entropy (padding excluded).
``cmvn``
    No gradient step: the model's global ``InputNormalization`` statistics
    are re-estimated on the support audio (per-speaker or per-channel cepstral
    mean and variance normalisation, the classic remedy for a convolutional
    channel), blended with the training statistics by ``cmvn_weight`` (1: the
    support's alone). With ``cmvn_update: true`` (``sb-meta adapt --cmvn W``)
    the transcripts are read and the strategy's steps follow on the
    renormalised features (feature-space, then model-space adaptation).

Safeguards against making the model worse (the known failure of entropy
minimisation is a collapse onto one label, often the blank): steps are taken
one at a time and adaptation stops, keeping the best weights so far, when the
support entropy stops decreasing (``entropy_min_improvement``, relative), when the
share of frames whose best label is not the blank falls below ``entropy_blank_guard``
(default 0.5) of its value before adaptation, or when fewer than
``entropy_agreement_guard`` (default 0.6) of the frames keep the best label the
unadapted model gave them (entropy minimisation should sharpen the posteriors,
not rewrite the transcript). Step count and step size should be chosen on dev
tasks (:func:`sb_meta.evaluation.select_on_dev`).

Example
-------
>>> import torch
>>> lp = torch.log_softmax(torch.zeros(1, 4, 3), dim=-1)   # uniform posteriors
>>> round(float(frame_entropy(lp, torch.ones(1))), 4) == round(float(torch.log(torch.tensor(3.0))), 4)
True
"""

import speechbrain as sb
import torch

from sb_meta.adapt.testtime import TestTimeMethod
from sb_meta.contract import CommandOption, Phase
from sb_meta.plugins import hookimpl

__all__ = ["Entropy", "Pseudo", "Cmvn", "frame_entropy", "nonblank_share", "pseudo_labels", "entropy_steps",
           "renormalize"]

#: ``sb-meta adapt --unsupervised NAME``: each of these methods is one of its choices
UNSUPERVISED = "--unsupervised"


def _mask(log_probs, lengths):
    frames = torch.round(lengths * log_probs.shape[1]).long().clamp(min=1)
    return torch.arange(log_probs.shape[1], device=log_probs.device)[None, :] < frames[:, None]


def frame_entropy(log_probs, lengths):
    """Mean entropy (nats) of the per-frame posteriors over the valid frames."""
    mask = _mask(log_probs, lengths).to(log_probs.dtype)
    ent = -(log_probs.exp() * log_probs).sum(-1)
    return (ent * mask).sum() / mask.sum()


def nonblank_share(log_probs, lengths, blank_index=0):
    """Share of valid frames whose most likely label is not the blank."""
    mask = _mask(log_probs, lengths)
    nonblank = log_probs.argmax(-1) != blank_index
    return float((nonblank & mask).sum()) / float(mask.sum())


def pseudo_labels(brain, batches, tokenizer, blank_index, threshold):
    """Greedy CTC hypotheses and confidences of the support batches (no gradients).

    Returns
    -------
    list of (str, float)
        One ``(hypothesis, confidence)`` per utterance, in order.
    """
    from sb_meta.recipe import ctc_greedy_words

    out = []
    with torch.no_grad():
        for batch in batches:
            pred = brain.compute_forward(batch, sb.Stage.TEST)
            if pred.log_probs is None:
                raise ValueError("pseudo-label adaptation needs a CTC head; use entropy")
            hyps = ctc_greedy_words(pred.log_probs, pred.lengths, tokenizer, blank_index)
            mask = _mask(pred.log_probs, pred.lengths)
            best = pred.log_probs.exp().max(-1).values
            conf = ((best * mask).sum(1) / mask.sum(1)).tolist()
            out.extend(zip(hyps, conf))
    return out


def _objective(brain, batches, blank_index):
    """(entropy, non-blank share, best label of every valid frame) on the support."""
    with torch.no_grad():
        ents, shares, weights, labels = [], [], [], []
        for batch in batches:
            pred = brain.compute_forward(batch, sb.Stage.TEST)
            ents.append(float(frame_entropy(pred.log_probs, pred.lengths)))
            shares.append(nonblank_share(pred.log_probs, pred.lengths, blank_index))
            weights.append(len(batch.id))
            labels.append(pred.log_probs.argmax(-1)[_mask(pred.log_probs, pred.lengths)])
    total = sum(weights)
    return (sum(e * w for e, w in zip(ents, weights)) / total,
            sum(s * w for s, w in zip(shares, weights)) / total,
            torch.cat(labels))


def entropy_steps(brain, batches, steps, lr, names, task, phase, config):
    """Entropy-minimisation steps with the safeguards of the module documentation.

    The brain's parameters are updated in place (they belong to the adapted
    copy). Returns the log: entropy and non-blank share before each step, the
    steps kept and why adaptation stopped.
    """
    params = brain.trainable_params()
    blank = brain.hparams.blank_index
    entropy, share, start_labels = _objective(brain, batches, blank)
    log = {"entropy": [entropy], "nonblank_share": [share], "agreement": [1.0], "steps_kept": 0,
           "stopped": "steps done"}
    start_share = share
    best = {n: params[n].detach().clone() for n in names}
    best_entropy = entropy
    for step in range(steps):
        with torch.enable_grad():
            fast = brain.strategy.adapt(batches, steps=1, lr=lr, names=names, task=task, phase=phase)
        with torch.no_grad():
            for n, w in fast.items():
                params[n].copy_(w.detach())
        entropy, share, labels = _objective(brain, batches, blank)
        agreement = float((labels == start_labels).float().mean())
        log["entropy"].append(entropy)
        log["nonblank_share"].append(share)
        log["agreement"].append(agreement)
        if not (entropy == entropy) or share < config["entropy_blank_guard"] * start_share:
            log["stopped"] = f"step {step + 1}: collapse guard (non-blank share {share:.2f})"
            break
        if agreement < config["entropy_agreement_guard"]:
            log["stopped"] = f"step {step + 1}: drift guard ({agreement:.2f} of frames keep their label)"
            break
        if entropy >= best_entropy * (1.0 - config["entropy_min_improvement"]):
            log["stopped"] = f"step {step + 1}: entropy stopped decreasing"
            if entropy < best_entropy:
                best, best_entropy = {n: params[n].detach().clone() for n in names}, entropy
                log["steps_kept"] = step + 1
            break
        best, best_entropy = {n: params[n].detach().clone() for n in names}, entropy
        log["steps_kept"] = step + 1
    with torch.no_grad():
        for n, w in best.items():
            params[n].copy_(w)
    return log


def renormalize(brain, batches, weight=1.0):
    """Re-estimate the global ``InputNormalization`` statistics on the support (no gradients).

    The features reaching each normaliser are captured with a forward pre-hook
    while the support is transcribed, so any recipe's feature pipeline is used as
    it is; mean and standard deviation over the valid frames replace the
    training statistics in the share ``weight``. The normalisers belong to the
    adapted copy. Returns the log: how many frames and how far the mean moved.
    """
    from speechbrain.processing.features import InputNormalization, make_padding_mask

    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"cmvn_weight must be in [0, 1], got {weight!r}")
    norms = [m for m in brain.modules.modules() if isinstance(m, InputNormalization) and m.norm_type == "global"]
    if not norms:
        raise ValueError("cmvn needs a global InputNormalization in the model (norm_type: global)")
    frames = {id(m): [] for m in norms}

    def capture(module, args, kwargs):  # the valid frames as the normaliser itself masks them
        x = args[0]
        mask = make_padding_mask(x, args[1] if len(args) > 1 else kwargs.get("lengths"), length_dim=1)
        frames[id(module)].append(x[mask.reshape(mask.shape[:2])].detach())

    handles = [m.register_forward_pre_hook(capture, with_kwargs=True) for m in norms]
    try:
        with torch.no_grad():
            for batch in batches:
                brain.compute_forward(batch, sb.Stage.TEST)
    finally:
        for h in handles:
            h.remove()
    log = {"frames": 0, "mean_shift": []}
    with torch.no_grad():
        for m in norms:
            x = torch.cat(frames[id(m)])
            mean, std = x.mean(0), x.std(0).clamp(min=m.epsilon)
            new_mean = weight * mean + (1.0 - weight) * m.glob_mean
            log["mean_shift"].append(round(float((new_mean - m.glob_mean).abs().mean()), 4))
            m.glob_mean.copy_(new_mean)
            m.glob_std.copy_(weight * std + (1.0 - weight) * m.glob_std)
            log["frames"] = int(x.shape[0])
    return log


class Entropy(TestTimeMethod):
    """Entropy minimisation of the CTC posteriors, step by step under the safeguards."""

    name = "entropy"
    options = {"entropy_min_improvement": 0.01, "entropy_blank_guard": 0.5, "entropy_agreement_guard": 0.6}
    command_options = (CommandOption(UNSUPERVISED, "adapt from the audio alone (the manifest needs no "
                                     "transcripts): the method's name", selects=True),)

    @classmethod
    def reads_transcripts(cls, config):
        return False

    def update(self, run):
        brain = run.brain
        if "ctc" not in brain.view.losses:
            raise ValueError(f"entropy minimisation needs a CTC head; this model has {brain.view.losses}")
        names = run.names_to_adapt or brain.strategy.adapt_names(Phase.ADAPT)
        config = {k: self.number_option(k, 0.0) for k in self.options}
        with brain.objective_replaced(lambda pred, batch: frame_entropy(pred.log_probs, pred.lengths)):
            log = entropy_steps(brain, run.batches(), run.steps, run.lr, names, run.task, Phase.ADAPT, config)
        params = brain.trainable_params()
        return {n: p for n, p in params.items() if n in set(names)}, log

    @classmethod
    def describe(cls, log):
        return [f"Without transcripts: entropy {log['entropy'][0]:.3f} -> {min(log['entropy']):.3f}, "
                f"{log['steps_kept']} step(s) kept ({log['stopped']})"]


class Pseudo(TestTimeMethod):
    """The unadapted model's confident greedy transcripts become the support's labels."""

    name = "pseudo"
    options = {"pseudo_confidence": 0.9}
    command_options = Entropy.command_options

    @classmethod
    def reads_transcripts(cls, config):
        return False

    def prepare(self, run):
        if "ctc" not in run.brain.view.losses:
            raise ValueError(f"pseudo-label adaptation needs a CTC head; this model has {run.brain.view.losses}")
        threshold = self.number_option("pseudo_confidence", 0.0)
        labels = pseudo_labels(run.brain, run.batches(with_tokens=False), run.model.tokenizer,
                               run.model.blank_index, threshold)
        keep = [i for i, (hyp, conf) in enumerate(labels) if conf >= threshold and hyp.strip()]
        for i, (hyp, conf) in enumerate(labels):
            run.records[i]["pseudo_label"], run.records[i]["confidence"] = hyp, conf
        log = {"confidence": [round(c, 4) for _, c in labels], "kept": len(keep),
               "hypotheses": [h for h, _ in labels]}
        if not keep:
            run.stop("no utterance confident enough")
            return dict(log, stopped=run.stopped)
        run.wavs, run.names = [run.wavs[i] for i in keep], [run.names[i] for i in keep]
        run.tokens = [run.model.encode_transcript(labels[i][0], run.names[j]) for j, i in enumerate(keep)]
        return log

    @classmethod
    def describe(cls, log):
        return [f"Without transcripts: {log['kept']} of {len(log['confidence'])} utterance(s) confident "
                "enough to serve as pseudo-labels" + (f"; {log['stopped']}" if log.get("stopped") else "")]


def _cmvn_option(text):
    """``--cmvn W``: the statistics blended with weight ``W`` in (0, 1], then the update."""
    try:
        weight = float(text)
    except ValueError:
        weight = float("nan")
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"--cmvn must be a weight in (0, 1], got {text}")
    return {"cmvn_weight": weight, "cmvn_update": True}


class Cmvn(TestTimeMethod):
    """The global input statistics re-estimated on the support audio (then, optionally, the update)."""

    name = "cmvn"
    options = {"cmvn_weight": 1.0, "cmvn_update": False}
    command_options = Entropy.command_options + (CommandOption(
        "--cmvn", "before the update, re-estimate the input statistics on the support audio and blend "
        "them into the training ones with weight W in (0, 1] (feature-space, then model-space adaptation)",
        parse=_cmvn_option, metavar="W", activates=True),)

    @classmethod
    def reads_transcripts(cls, config):
        return bool(config.get("cmvn_update", cls.options["cmvn_update"]))

    def prepare(self, run):
        weight = self.number_option("cmvn_weight")
        return dict(weight=weight, **renormalize(run.brain, run.batches(), weight))

    @classmethod
    def describe(cls, log):
        return [f"Input statistics re-estimated on {log['frames']} support frames (weight {log['weight']}), "
                f"mean moved by {log['mean_shift']} on average per feature"]


@hookimpl
def sbmeta_addons():
    return [Entropy, Pseudo, Cmvn]
