"""Losses that can be differentiated twice (for second-order meta-learning).

Second-order MAML differentiates through the inner-loop gradients
(``torch.autograd.grad(..., create_graph=True)``) and then backpropagates the
outer loss through them. PyTorch's native CTC cannot do this: its backward
(``aten::_ctc_loss_backward``) has no derivative. :func:`ctc_loss` here is a
drop-in replacement that

* computes the value and the first gradient with the native kernels, so both
  are the native ones to the last bit, and first-order use (a plain
  ``loss.backward()``) costs the same as native CTC;
* when the backward pass runs with ``create_graph=True``, builds the gradient
  with a second :class:`torch.autograd.Function` whose backward computes the
  exact Hessian-vector product of the CTC loss with an expectation-semiring
  forward-backward pass (vectorised over batch and CTC states, a short Python
  loop over time, forward and backward directions batched together).

The first gradient follows native semantics: with respect to ``log_probs`` it
is ``exp(log_probs) - gamma`` (``gamma`` being the CTC posteriors), i.e. the
gradient with respect to the logits when ``log_probs`` come from
``log_softmax``. The second derivative is the exact derivative of that
expression, so composed with ``log_softmax`` (the way CTC is always used) both
derivatives are exact.

Supported: ``autograd.grad(..., create_graph=True)`` followed by a backward
(reverse over reverse), also through ``torch.func.grad`` of ``torch.func.grad``;
padding, empty targets, repeated labels, any blank index, float32 and
float64, CPU and CUDA (the kernels are native, the rest is plain tensor ops).
Not supported: third derivatives and forward-mode AD (``torch.func.jvp``,
``jacfwd``). In float32 the Hessian-vector product carries the rounding of
float32 log-space CTC: at 150 frames its error is a few 1e-4 of its largest
entry, the same order as the error of native CTC's float32 gradient.

What it costs against torch's native CTC: ``benchmarks/bench_ctc.py``.

Authors
 * sb-meta contributors
"""

import math

import torch

from sb_meta.ctc_hessian import CTC

__all__ = ["ctc_loss", "ctc_loss_abs", "distillation_loss"]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _as_int_list(lengths):
    """Returns absolute lengths (tensor, list or tuple) as a list of ints."""
    if torch.is_tensor(lengths):
        return [int(x) for x in lengths.reshape(-1).tolist()]
    return [int(x) for x in lengths]


def _pad_targets(targets, target_lengths):
    """Concatenated (1-D) targets -> padded [B, max_len] (long)."""
    L = max(target_lengths) if target_lengths else 0
    padded = targets.new_zeros(len(target_lengths), L, dtype=torch.long)
    offset = 0
    for b, n in enumerate(target_lengths):
        padded[b, :n] = targets[offset : offset + n]
        offset += n
    return padded


def _time_first(log_probs, targets, input_lengths, target_lengths, batch_first):
    """The arguments of :func:`ctc_loss_abs` as the native kernels take them:
    ``[T, B, C]`` log-probabilities, padded long targets on their device, lists
    of int lengths."""
    if log_probs.dim() == 2:  # unbatched
        log_probs = log_probs.unsqueeze(1)
        if targets.dim() == 1:
            targets = targets.unsqueeze(0)
    elif batch_first:
        log_probs = log_probs.transpose(0, 1)
    il = _as_int_list(input_lengths)
    tl = _as_int_list(target_lengths)
    if targets.dim() == 1:
        targets = _pad_targets(targets, tl)
    return log_probs, targets.to(device=log_probs.device, dtype=torch.long), il, tl


def _reduced(nll, tl, reduction, zero_infinity, unbatched):
    """The per-sequence losses ``nll`` reduced as :func:`ctc_loss_abs` says."""
    if zero_infinity:
        nll = torch.where(nll == math.inf, torch.zeros((), dtype=nll.dtype, device=nll.device), nll)
    if reduction == "mean":
        tlen = torch.tensor(tl, dtype=nll.dtype, device=nll.device).clamp_min(1)
        return (nll / tlen).mean()
    if reduction == "sum":
        return nll.sum()
    return nll.squeeze(0) if unbatched else nll


def ctc_loss_abs(
    log_probs,
    targets,
    input_lengths,
    target_lengths,
    blank=0,
    reduction="mean",
    zero_infinity=False,
    batch_first=False,
):
    """CTC loss with absolute lengths, twice differentiable.

    Same semantics as :func:`torch.nn.functional.ctc_loss` (value and first
    gradient come from the native kernels), but it also supports double
    backward: gradients computed with ``create_graph=True`` can be
    differentiated again (exact Hessian-vector products), as second-order
    MAML needs. Without ``create_graph`` it costs what native CTC costs.

    As with native CTC, the gradient with respect to ``log_probs`` is
    ``exp(log_probs) - posteriors``, which assumes ``log_probs`` come from
    ``log_softmax`` (composed with it, first and second derivatives are
    exact). Third derivatives are not supported.

    Arguments
    ---------
    log_probs : torch.Tensor
        Log-probabilities, ``[T, B, C]`` (or ``[B, T, C]`` with
        ``batch_first=True``; or ``[T, C]`` unbatched). float32 or float64.
    targets : torch.Tensor
        Padded ``[B, L]`` targets or 1-D concatenated targets (no blanks).
    input_lengths : torch.Tensor or list of int
        Number of valid frames of each sequence.
    target_lengths : torch.Tensor or list of int
        Number of labels of each target.
    blank : int
        Blank index.
    reduction : str
        ``"mean"`` (each loss divided by its target length, clamped to at
        least 1, then averaged over the batch, like torch), ``"sum"`` or
        ``"none"``.
    zero_infinity : bool
        Replace infinite losses (impossible alignments, e.g. a target
        longer than its input) and their gradients by zeros, like torch.
        Without it such a sequence has loss ``inf`` and NaN gradients, as
        with torch.
    batch_first : bool
        Whether ``log_probs`` is ``[B, T, C]``.

    Returns
    -------
    torch.Tensor
        The loss (a scalar, or ``[B]`` for ``reduction="none"``).

    Example
    -------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> logits = torch.randn(6, 2, 4, dtype=torch.float64, requires_grad=True)
    >>> targets = torch.tensor([[1, 2, 2], [3, 1, 0]])
    >>> loss = ctc_loss_abs(logits.log_softmax(-1), targets, [6, 5], [3, 2])
    >>> ref = torch.nn.functional.ctc_loss(logits.log_softmax(-1), targets, [6, 5], [3, 2])
    >>> torch.allclose(loss, ref)
    True
    >>> (g,) = torch.autograd.grad(loss, logits, create_graph=True)
    >>> (g**2).sum().backward()  # second order: native CTC would fail here
    >>> logits.grad.shape
    torch.Size([6, 2, 4])
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction {reduction!r}")
    unbatched = log_probs.dim() == 2
    log_probs, targets, il, tl = _time_first(log_probs, targets, input_lengths, target_lengths,
                                             batch_first)
    nll, _ = CTC.apply(log_probs, targets, il, tl, int(blank), bool(zero_infinity))
    return _reduced(nll, tl, reduction, zero_infinity, unbatched)


def ctc_loss(log_probs, targets, input_lens, target_lens, blank_index, reduction="mean"):
    """CTC loss with SpeechBrain's interface, twice differentiable.

    Drop-in replacement for :func:`speechbrain.nnet.losses.ctc_loss` (same
    arguments, relative lengths, ``zero_infinity=True`` and reductions, same
    values and first gradients), whose gradients can be differentiated again
    (see :func:`ctc_loss_abs`).

    Arguments
    ---------
    log_probs : torch.Tensor
        Predicted log-probabilities, ``[batch, time, chars]``.
    targets : torch.Tensor
        Targets without blanks, ``[batch, target_len]``.
    input_lens : torch.Tensor
        Relative length of each utterance (in [0, 1]).
    target_lens : torch.Tensor
        Relative length of each target sequence (in [0, 1]).
    blank_index : int
        The location of the blank symbol among the character indexes.
    reduction : str
        ``"mean"``, ``"sum"``, ``"none"`` as in torch; ``"batch"`` returns
        one loss per item divided by its target length; ``"batchmean"``
        returns sum / batch size.

    Returns
    -------
    torch.Tensor
        The computed CTC loss.

    Example
    -------
    >>> import torch
    >>> import speechbrain.nnet.losses as sb_losses
    >>> _ = torch.manual_seed(0)
    >>> log_probs = torch.randn(2, 8, 5).log_softmax(-1)
    >>> targets = torch.tensor([[1, 2, 3], [4, 4, 0]])
    >>> lens, tlens = torch.tensor([1.0, 0.75]), torch.tensor([1.0, 2 / 3])
    >>> loss = ctc_loss(log_probs, targets, lens, tlens, blank_index=0)
    >>> ref = sb_losses.ctc_loss(log_probs, targets, lens, tlens, blank_index=0)
    >>> torch.allclose(loss, ref)
    True
    """
    input_lens = (input_lens * log_probs.shape[1]).round().int()
    target_lens = (target_lens * targets.shape[1]).round().int()

    if reduction == "batchmean":
        reduction_loss = "sum"
    elif reduction == "batch":
        reduction_loss = "none"
    else:
        reduction_loss = reduction
    loss = ctc_loss_abs(
        log_probs,
        targets,
        input_lens,
        target_lens,
        blank=blank_index,
        reduction=reduction_loss,
        zero_infinity=True,
        batch_first=True,
    )
    if reduction == "batchmean":
        return loss / targets.shape[0]
    elif reduction == "batch":
        N = loss.size(0)
        return loss.view(N, -1).sum(1) / target_lens.view(N, -1).sum(1)
    return loss


def distillation_loss(
    student_log_probs, teacher_log_probs, lens=None, temperature=1.0, reduction="mean"
):
    """Frame-level knowledge-distillation loss ``KL(teacher || student)``.

    For each frame ``t``: ``sum_c p_t(c) (log p_t(c) - log q_t(c))`` with
    ``p`` the teacher and ``q`` the student distribution. With
    ``temperature`` ``tau != 1`` both distributions are softened first
    (``log_softmax(log_probs / tau)``) and the loss is multiplied by
    ``tau ** 2`` (Hinton et al., 2015), so gradient magnitudes stay
    comparable. The teacher is not detached: pass ``teacher.detach()`` for
    the usual one-way distillation.

    Arguments
    ---------
    student_log_probs : torch.Tensor
        ``[batch, time, classes]`` student log-probabilities.
    teacher_log_probs : torch.Tensor
        ``[batch, time, classes]`` teacher log-probabilities.
    lens : torch.Tensor, optional
        Relative lengths (in [0, 1]) of the sequences; frames beyond
        ``round(lens * time)`` are ignored. ``None``: all frames count.
    temperature : float
        Softening temperature.
    reduction : str
        ``"mean"``: average over all valid frames of the batch;
        ``"batch"``: ``[batch]`` average over each sequence's valid frames;
        ``"sum"``: sum over valid frames.

    Returns
    -------
    torch.Tensor
        The loss.

    Example
    -------
    >>> import torch
    >>> teacher = torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.3, 0.7]]]).log()
    >>> distillation_loss(teacher, teacher)
    tensor(0.)
    >>> student = torch.full((1, 3, 2), 0.5).log()
    >>> loss = distillation_loss(student, teacher, lens=torch.tensor([2 / 3]))
    >>> round(loss.item(), 4)  # mean of KL over the first two frames
    0.184
    """
    if reduction not in ("mean", "batch", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}")
    if temperature != 1.0:
        student_log_probs = torch.log_softmax(student_log_probs / temperature, dim=-1)
        teacher_log_probs = torch.log_softmax(teacher_log_probs / temperature, dim=-1)
    p = teacher_log_probs.exp()
    # 0 * log 0 = 0, without NaNs in either direction (-inf teacher entries)
    diff = torch.where(p > 0, teacher_log_probs - student_log_probs, 0.0)
    kl = (p * diff).sum(-1)  # [B, T]
    kl = kl * temperature**2
    B, T = kl.shape
    if lens is None:
        mask = torch.ones_like(kl)
    else:
        n = torch.round(lens.to(kl.device).float() * T)
        mask = (torch.arange(T, device=kl.device)[None, :] < n[:, None]).to(kl.dtype)
    kl = kl * mask
    if reduction == "sum":
        return kl.sum()
    if reduction == "batch":
        return kl.sum(1) / mask.sum(1).clamp_min(1)
    return kl.sum() / mask.sum().clamp_min(1)
