"""Knowledge distillation from a teacher recognizer, as an add-on.

The student is the brain's own model (e.g. a smaller CRDNN); the teacher is
any SpeechBrain ASR folder :func:`sb_meta.adapt.load_model` reads (an sb-meta
export or a model sb-meta did not train), run without gradients, or the
student itself before adaptation. Two losses, both on CTC outputs::

    meta_addons: [distill]
    distill_teacher: results/AN4/big/pretrained   # or "self"
    distill_weight: 1.0          # frame-level posterior distillation
    distill_temperature: 2.0
    distill_seq_weight: 0.5      # sequence-level: CTC on the teacher's greedy transcripts
    distill_phases: [outer, adapt]

Frame level
    ``distill_weight * KL(teacher || student)`` of the CTC posteriors per
    frame, both softened by ``distill_temperature`` and the loss multiplied by
    its square (Hinton et al. 2015; :func:`sb_meta.losses.distillation_loss`),
    averaged over each utterance's valid frames.
Sequence level
    ``distill_seq_weight * CTC(student, teacher's greedy CTC hypothesis)``
    (Kim & Rush 2016): the teacher's transcript replaces the reference, so
    the student imitates what the teacher outputs rather than its
    posteriors. Hypotheses too long for the student's frames are skipped.
Frame rates
    When the teacher gives ``T_t`` frames and the student ``T_s != T_t``
    (e.g. a teacher without time pooling), ``distill_frames: interpolate``
    (default) resamples the teacher's posteriors to ``T_s`` frames over time
    (averaging when ``T_t > T_s``, linear interpolation otherwise;
    renormalised); ``distill_frames: match`` makes it an error naming both
    frame counts. Teacher and student must share the output vocabulary (an
    error names both sizes otherwise).
``distill_teacher``
    A model folder (or a cached hub id), loaded once on the brain's device, in
    eval mode; or ``self`` (the default): *the model before adaptation*, i.e.
    the brain's own parameters as they are outside the inner loop (the
    meta-parameters in meta-training, the loaded model at test time), run in
    eval mode without gradients. With ``self`` the loss only measures what
    adaptation changed (plus, in training, what training mode changes:
    dropout, batch statistics; at test time adaptation runs in eval mode and
    the first step's loss is 0) and pulls the adapted model back toward its
    starting point, which keeps test-time adaptation on a few utterances
    from forgetting.
``distill_phases``
    Where the losses are added: ``outer`` (the outer / pooled objective),
    ``inner`` (a regulariser of the inner loop toward the teacher) and
    ``adapt`` (test-time adaptation); default ``[outer, adapt]``. Strategies
    without an outer forward (``reptile``) need ``inner``.

The teacher's outputs of the most recent batch are kept, so the inner steps
over one support batch run the teacher once.

Example
-------
>>> teacher = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]]).log()
>>> align_frames(teacher, 4).exp().round(decimals=2)
tensor([[[0.7000, 0.2000, 0.1000],
         [0.5500, 0.3500, 0.1000],
         [0.2500, 0.6500, 0.1000],
         [0.1000, 0.8000, 0.1000]]])
>>> align_frames(teacher, 4, mode="match")
Traceback (most recent call last):
...
ValueError: distill: the teacher gives 2 output frames and the student 4; ...
"""

import logging

import speechbrain as sb
import torch

from sb_meta.contract import ASRPredictions, Phase
from sb_meta.losses import ctc_loss_abs, distillation_loss
from sb_meta.plugins import hookimpl
from sb_meta.strategy import AddOn

logger = logging.getLogger(__name__)

__all__ = ["Distill", "align_frames", "greedy_hypotheses"]

SELF = "self"


def align_frames(log_probs, frames, mode="interpolate"):
    """Teacher log-probabilities ``[batch, T_t, classes]`` resampled to ``frames`` frames.

    ``mode="match"`` raises a ``ValueError`` naming both frame counts instead.
    """
    have = log_probs.shape[1]
    if have == frames:
        return log_probs
    if mode != "interpolate":
        raise ValueError(
            f"distill: the teacher gives {have} output frames and the student {frames}; "
            "their frame rates must match with distill_frames: match (use "
            "distill_frames: interpolate to resample the teacher's posteriors)"
        )
    probs = log_probs.exp().transpose(1, 2)  # [batch, classes, time]
    if have > frames:
        out = torch.nn.functional.interpolate(probs, size=frames, mode="area")
    else:
        out = torch.nn.functional.interpolate(probs, size=frames, mode="linear", align_corners=False)
    out = out / out.sum(1, keepdim=True).clamp_min(1e-12)
    return out.clamp_min(1e-12).log().transpose(1, 2)


def greedy_hypotheses(log_probs, lengths, blank_index=0):
    """Greedy CTC token sequences (lists of ints) of a batch."""
    return [list(map(int, h)) for h in sb.decoders.ctc_greedy_decode(log_probs, lengths, blank_id=blank_index)]


class _Forward(torch.nn.Module):
    """``brain.compute_forward`` as a module, so ``functional_call`` can run it
    with other parameters (the model before adaptation)."""

    def __init__(self, brain):
        super().__init__()
        self.m = brain.modules
        object.__setattr__(self, "_brain", brain)

    def forward(self, batch):
        return self._brain.compute_forward(batch, sb.Stage.TEST)


class Distill(AddOn):
    """Frame- and sequence-level distillation of CTC posteriors from a teacher (or the model before adaptation)."""

    name = "distill"
    options = {
        "distill_teacher": SELF,
        "distill_weight": 1.0,
        "distill_temperature": 1.0,
        "distill_seq_weight": 0.0,
        "distill_phases": ["outer", "adapt"],
        "distill_frames": "interpolate",
    }

    def __init__(self, brain, config):
        super().__init__(brain, config)
        self.teacher_source = str(self.option("distill_teacher"))
        self.weight = self.number_option("distill_weight", 0.0)
        self.seq_weight = self.number_option("distill_seq_weight", 0.0)
        self.temperature = self.number_option("distill_temperature", 0.0)
        if self.temperature <= 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.option('distill_temperature')!r}")
        self.frames = str(self.option("distill_frames"))
        if self.frames not in ("interpolate", "match"):
            raise ValueError(f"distill_frames must be 'interpolate' or 'match', got {self.frames!r}")
        self.phases = self.phases_option("distill_phases")
        self.teacher = None  # the loaded AdaptableASR (None for "self")
        self._initial = None
        self._cache = None
        if self.teacher_source != SELF:
            self._load_teacher(brain)

    # ---------------------------------------------------------------- teacher
    def _load_teacher(self, brain):
        from sb_meta.adapt import load_model

        self.teacher = load_model(self.teacher_source, device=str(brain.device))
        if "ctc" not in self.teacher.losses:
            raise ValueError(
                f"distill_teacher {self.teacher_source} has no CTC head; distill needs the teacher's "
                "CTC posteriors"
            )
        self.teacher_blank = self.teacher.blank_index
        rate = getattr(getattr(brain, "hparams", None), "sample_rate", None)
        if rate is not None and int(rate) != self.teacher.sample_rate:
            raise ValueError(
                f"distill_teacher {self.teacher_source} expects {self.teacher.sample_rate} Hz audio "
                f"but the student's sample_rate is {rate}"
            )

    @staticmethod
    def _student_blank(brain):
        """The student's CTC blank: its brain's ``blank_index`` (a recipe's, or the adaptation brain's)."""
        blank = getattr(getattr(brain, "hparams", None), "blank_index", None)
        return 0 if blank is None else int(blank)

    def teacher_outputs(self, brain, batch):
        """``(log_probs, lengths)`` of the teacher on ``batch``, without gradients."""
        key = (id(batch.sig.data), brain.optimizer_step if self.teacher is None else 0)
        if self._cache is not None and self._cache[0] == key and self._cache[1] is batch.sig.data:
            return self._cache[2]
        with torch.no_grad():
            if self.teacher is None:
                out = self._self_forward(brain, batch)
            else:
                wavs, lens = batch.sig
                cropped = [w[: max(1, int(round(float(l) * wavs.shape[1])))] for w, l in zip(wavs.detach(), lens)]
                padded, rel = sb.utils.data_utils.batch_pad_right(cropped)
                out = self.teacher.predictions(padded, rel)
            pred = ASRPredictions.coerce(out)
            result = (pred.require("log_probs", "distill (teacher)").detach(), pred.lengths.detach())
        self._cache = (key, batch.sig.data, result)
        return result

    def _self_forward(self, brain, batch):
        """The brain's forward with the parameters it has outside the inner loop, in eval mode."""
        if self._initial is None:
            raise RuntimeError("distill: the brain was not built through sbmeta_modules")
        module = getattr(self, "_forward_module", None)
        if module is None or module.m is not brain.modules:
            module = self._forward_module = _Forward(brain)
        params = {f"m.{n}": p.detach() for n, p in self._initial.items()}
        modes = [(m, m.training) for m in brain.modules.modules()]
        try:
            brain.modules.eval()
            return torch.func.functional_call(module, params, (batch,), strict=False)
        finally:
            for m, mode in modes:
                m.training = mode

    # ---------------------------------------------------------------- losses
    def frame_loss(self, student_log_probs, teacher_log_probs, lengths):
        """``distill_weight`` x the frame-level KL (teacher resampled to the student's frames)."""
        if teacher_log_probs.shape[-1] != student_log_probs.shape[-1]:
            raise ValueError(
                f"distill: the teacher has {teacher_log_probs.shape[-1]} outputs and the student "
                f"{student_log_probs.shape[-1]}; they must share the tokenizer (output vocabulary)"
            )
        teacher = align_frames(teacher_log_probs, student_log_probs.shape[1], self.frames)
        teacher = teacher.to(student_log_probs.dtype)
        return self.weight * distillation_loss(
            student_log_probs, teacher, lengths, temperature=self.temperature
        )

    def sequence_loss(self, student_log_probs, lengths, hypotheses, blank_index):
        """``distill_seq_weight`` x CTC of the student on the teacher's hypotheses."""
        from sb_meta.adapt.support import ctc_min_frames

        frames = torch.round(lengths.float().cpu() * student_log_probs.shape[1]).long().clamp(min=1)
        keep = [i for i, h in enumerate(hypotheses) if ctc_min_frames(h) <= int(frames[i])]
        if not keep:
            return None
        longest = max(1, max(len(hypotheses[i]) for i in keep))
        targets = torch.zeros(len(keep), longest, dtype=torch.long)
        for row, i in enumerate(keep):
            targets[row, : len(hypotheses[i])] = torch.tensor(hypotheses[i], dtype=torch.long)
        index = torch.tensor(keep, device=student_log_probs.device)
        loss = ctc_loss_abs(
            student_log_probs.index_select(0, index), targets.to(student_log_probs.device),
            frames[keep], torch.tensor([len(hypotheses[i]) for i in keep]),
            blank=blank_index, reduction="mean", zero_infinity=True, batch_first=True,
        )
        return self.seq_weight * loss

    # ---------------------------------------------------------------- hooks
    @hookimpl
    def sbmeta_modules(self, brain):
        """No module of its own: keeps the brain's parameters as they are outside
        the inner loop (the ``self`` teacher)."""
        self._initial = dict(brain.modules.named_parameters())
        return None

    @hookimpl
    def sbmeta_loss(self, brain, batch, predictions, phase):
        """The frame-level (``frame``) and sequence-level (``sequence``) terms."""
        if Phase(phase).value not in self.phases or (self.weight == 0 and self.seq_weight == 0):
            return None
        pred = ASRPredictions.coerce(predictions)
        student = pred.require("log_probs", self.name)
        lengths = pred.lengths if pred.lengths is not None else torch.ones(student.shape[0])
        teacher, teacher_lens = self.teacher_outputs(brain, batch)
        terms = {}
        if self.weight > 0:
            terms["frame"] = self.frame_loss(student, teacher.to(student.device), lengths)
        if self.seq_weight > 0:
            blank = self.teacher_blank if self.teacher is not None else self._student_blank(brain)
            hyps = greedy_hypotheses(teacher, teacher_lens, blank)
            seq = self.sequence_loss(student, lengths, hyps, self._student_blank(brain))
            if seq is not None:
                terms["sequence"] = seq
        return terms or None


@hookimpl
def sbmeta_addons():
    return [Distill]
