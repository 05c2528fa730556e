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

__all__ = ["ctc_loss", "ctc_loss_abs", "distillation_loss"]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _as_int_list(lengths):
    """Returns absolute lengths (tensor, list or tuple) as a list of ints."""
    if torch.is_tensor(lengths):
        return [int(x) for x in lengths.reshape(-1).tolist()]
    return [int(x) for x in lengths]


def _native_ctc(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity):
    return torch.ops.aten._ctc_loss(
        log_probs, targets, input_lengths, target_lengths, blank, zero_infinity
    )


def _native_ctc_grad(
    grad, log_probs, targets, input_lengths, target_lengths, nll, log_alpha, blank, zero_infinity
):
    return torch.ops.aten._ctc_loss_backward(
        grad,
        log_probs,
        targets,
        input_lengths,
        target_lengths,
        nll,
        log_alpha,
        blank,
        zero_infinity,
    )


def _prefix_expectations(log_alpha, lp_lab, v_lab, skip):
    """Expected prefix sums of ``v`` given the CTC state, for every frame.

    With the CTC path weights restricted to prefixes (``alpha``), returns
    ``A[t, n, s] = E[sum_{t' <= t} v[t', n, l'(pi_t')] | pi is at state s at
    frame t]``, via ``A_t(s) = v_t(l'_s) + sum_{s' in pred(s)} w_t(s', s)
    A_{t-1}(s')`` with ``w`` the normalised alpha weights of the
    predecessors. This is the derivative of ``log alpha`` in direction ``v``.

    Arguments
    ---------
    log_alpha : torch.Tensor
        [T, N, S] forward variables, ``-inf`` where a state is unreachable
        or invalid (padding).
    lp_lab : torch.Tensor
        [T, N, S] log-probability of each state's label.
    v_lab : torch.Tensor
        [T, N, S] direction ``v`` at each state's label.
    skip : torch.Tensor
        [N, S] bool, whether the skip transition ``s - 2 -> s`` is allowed.

    Returns
    -------
    torch.Tensor
        [T, N, S] (a view of a padded buffer).
    """
    T, N, S = log_alpha.shape
    neg_inf = float("-inf")
    out = log_alpha.new_zeros(T, N, S + 2)
    A = out[:, :, 2:]
    A.copy_(v_lab)  # the recursion accumulates in place onto v
    if T == 1:
        return A
    prev = log_alpha[:-1]
    cur = log_alpha[1:]
    # log of the normalised predecessor weights: prev + lp - cur, because
    # the (native) recursion is cur = lp + logsumexp(predecessors).
    base = torch.where(cur > neg_inf, lp_lab[1:] - cur, neg_inf)
    w0 = torch.exp(prev + base)  # s -> s
    w1 = torch.zeros_like(w0)  # s-1 -> s
    w1[..., 1:] = torch.exp(prev[..., :-1] + base[..., 1:])
    w2 = torch.zeros_like(w0)  # s-2 -> s
    if S > 2:
        w2[..., 2:] = torch.exp(
            torch.where(skip[:, 2:], prev[..., :-2], neg_inf) + base[..., 2:]
        )
    # Sequential part: three fused multiply-adds per frame on [N, S] views.
    dst = A.unbind(0)
    a0 = out[:, :, 2:].unbind(0)
    a1 = out[:, :, 1:-1].unbind(0)
    a2 = out[:, :, :-2].unbind(0)
    w0, w1, w2 = w0.unbind(0), w1.unbind(0), w2.unbind(0)
    for t in range(1, T):
        dst[t].addcmul_(w0[t - 1], a0[t - 1]).addcmul_(w1[t - 1], a1[t - 1]).addcmul_(
            w2[t - 1], a2[t - 1]
        )
    return A


def _ctc_hvp(
    v, log_probs, targets, nll, log_alpha, input_lengths, target_lengths, blank, zero_infinity
):
    """Jacobian-vector product of the native CTC gradient (sequence weight 1).

    The native gradient is ``G[t, c] = exp(lp[t, c]) - gamma[t, c]`` for
    ``t < input_length``. Its Jacobian is symmetric (``gamma`` is the gradient
    of ``log Z``), so this is also the vector-Jacobian product. With
    ``V(pi) = sum_t v[t, pi_t]``:
    ``d gamma[t, c] = E[1(pi_t = c) V] - gamma[t, c] E[V]``, computed from
    prefix (alpha) and suffix (beta) expectations of ``V``. Beta comes from
    the native forward pass on the time-reversed problem; the forward and
    reversed problems share one loop over time.

    Arguments
    ---------
    v : torch.Tensor
        [T, B, C] direction.
    log_probs : torch.Tensor
        [T, B, C]
    targets : torch.Tensor
        [B, L] padded targets (long).
    nll : torch.Tensor
        [B] native negative log-likelihoods.
    log_alpha : torch.Tensor
        [B, T, S] native forward variables.
    input_lengths, target_lengths : list of int
        Absolute lengths.
    blank : int
        Blank index.
    zero_infinity : bool
        Whether infinite losses (impossible alignments) get zero gradients.

    Returns
    -------
    torch.Tensor
        [T, B, C]
    """
    T, B, C = log_probs.shape
    S = log_alpha.shape[2]
    dev = log_probs.device
    neg_inf = float("-inf")
    Tm = max(input_lengths) if B > 0 else 0
    if Tm == 0:
        return torch.zeros_like(log_probs)

    il = torch.tensor(input_lengths, device=dev)
    tl = torch.tensor(target_lengths, device=dev)
    Sb = 2 * tl + 1
    lp = log_probs[:Tm]  # [Tm, B, C]
    vb = v[:Tm]

    # Extended label sequences l' (blank, y1, blank, y2, ..., blank).
    s_ar = torch.arange(S, device=dev)
    t_ar = torch.arange(Tm, device=dev)
    if targets.shape[1] > 0:
        lab_idx = ((s_ar - 1) // 2).clamp(0, targets.shape[1] - 1)
        lprime = torch.where(s_ar % 2 == 1, targets[:, lab_idx], blank)
    else:
        lprime = torch.full((B, S), blank, dtype=torch.long, device=dev)
    lprime = torch.where(s_ar < Sb[:, None], lprime, blank)  # [B, S]

    # Per-sequence reversal of time and of states (beta from native alpha).
    tidx = torch.where(t_ar[:, None] < il, il - 1 - t_ar[:, None], t_ar[:, None])  # [Tm, B]
    sidx = torch.where(s_ar < Sb[:, None], Sb[:, None] - 1 - s_ar, s_ar)  # [B, S]
    lprime_r = lprime.gather(1, sidx)
    if targets.shape[1] > 0:
        j_ar = torch.arange(targets.shape[1], device=dev)
        jidx = torch.where(j_ar < tl[:, None], tl[:, None] - 1 - j_ar, j_ar)
        targets_r = targets.gather(1, jidx)
    else:
        targets_r = targets
    lp_r = lp.gather(0, tidx[:, :, None].expand(Tm, B, C))
    v_r = vb.gather(0, tidx[:, :, None].expand(Tm, B, C))
    _, la_r = _native_ctc(lp_r, targets_r, input_lengths, target_lengths, blank, False)

    # Forward and reversed problems side by side: [Tm, 2B, S].
    valid = (t_ar[:, None, None] < il[:, None]) & (s_ar < Sb[:, None])  # [Tm, B, S]
    LA = torch.cat([log_alpha[:, :Tm].transpose(0, 1), la_r[:, :Tm].transpose(0, 1)], 1)
    LA = torch.where(valid.repeat(1, 2, 1), LA, neg_inf)  # native leaves padding unset
    idx = lprime.expand(Tm, B, S)
    idx_r = lprime_r.expand(Tm, B, S)
    LPL = torch.cat([lp.gather(2, idx), lp_r.gather(2, idx_r)], 1)
    VL = torch.cat([vb.gather(2, idx), v_r.gather(2, idx_r)], 1)
    lprime2 = torch.cat([lprime, lprime_r])
    skip = (s_ar >= 2) & (s_ar % 2 == 1) & (lprime2 != torch.roll(lprime2, 2, dims=1))
    A = _prefix_expectations(LA, LPL, VL, skip)

    # Back to forward coordinates: suffix expectations and log beta.
    b_ar = torch.arange(B, device=dev)
    flat = (tidx[:, :, None] * (2 * B) + B + b_ar[:, None]) * S + sidx  # [Tm, B, S]
    A_b = A.reshape(-1)[flat] if A.is_contiguous() else torch.take(A, flat)
    lb = LA.reshape(-1)[flat]
    la, lp_lab, v_lab, A_f = LA[:, :B], LPL[:, :B], VL[:, :B], A[:, :B]

    finite_nll = torch.isfinite(nll)
    nll_safe = torch.where(finite_nll, nll, 0.0)
    # posterior of state s at frame t (alpha and beta both include lp)
    q = torch.exp(torch.where(la > neg_inf, la - lp_lab, neg_inf) + lb + nll_safe[:, None])
    ev = (q * v_lab).sum(dim=(0, 2))  # E[V]
    r = q * (A_f + A_b - v_lab - ev[:, None])
    dgamma = torch.zeros_like(lp).scatter_add_(2, idx, r)
    frame_mask = (t_ar[:, None] < il)[:, :, None]  # [Tm, B, 1]
    if not bool(finite_nll.all()):
        fill = 0.0 if zero_infinity else float("nan")
        frame_mask_ok = frame_mask & finite_nll[:, None]
        out = torch.where(frame_mask_ok, torch.exp(lp) * vb - dgamma, 0.0)
        out = torch.where(frame_mask & ~finite_nll[:, None], fill, out)
    else:
        out = torch.where(frame_mask, torch.exp(lp) * vb - dgamma, 0.0)
    if Tm == T:
        return out
    hvp = torch.zeros_like(log_probs)
    hvp[:Tm] = out
    return hvp


# ---------------------------------------------------------------------------
# autograd Functions
# ---------------------------------------------------------------------------


class _CTCGrad(torch.autograd.Function):
    """Native CTC gradient (sequence weight 1) with an exact backward."""

    @staticmethod
    def forward(log_probs, targets, nll, log_alpha, input_lengths, target_lengths, blank, zi):
        return _native_ctc_grad(
            torch.ones_like(nll),
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            nll,
            log_alpha,
            blank,
            zi,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        log_probs, targets, nll, log_alpha, il, tl, blank, zi = inputs
        ctx.save_for_backward(log_probs, targets, nll, log_alpha)
        ctx.args = (il, tl, blank, zi)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, v):
        log_probs, targets, nll, log_alpha = ctx.saved_tensors
        il, tl, blank, zi = ctx.args
        hvp = _ctc_hvp(v, log_probs, targets, nll, log_alpha, il, tl, blank, zi)
        return hvp, None, None, None, None, None, None, None


class _CTC(torch.autograd.Function):
    """Per-sequence CTC negative log-likelihood, twice differentiable."""

    @staticmethod
    def forward(log_probs, targets, input_lengths, target_lengths, blank, zi):
        nll, log_alpha = _native_ctc(log_probs, targets, input_lengths, target_lengths, blank, zi)
        return nll, log_alpha

    @staticmethod
    def setup_context(ctx, inputs, output):
        log_probs, targets, il, tl, blank, zi = inputs
        nll, log_alpha = output
        ctx.mark_non_differentiable(log_alpha)
        ctx.save_for_backward(log_probs, targets, nll, log_alpha)
        ctx.args = (il, tl, blank, zi)

    @staticmethod
    def backward(ctx, grad_nll, _grad_log_alpha):
        log_probs, targets, nll, log_alpha = ctx.saved_tensors
        il, tl, blank, zi = ctx.args
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        if torch.is_grad_enabled():
            # create_graph=True: differentiable gradient.
            g = _CTCGrad.apply(log_probs, targets, nll.detach(), log_alpha, il, tl, blank, zi)
            grad = grad_nll[None, :, None] * g
        else:
            grad = _native_ctc_grad(
                grad_nll.contiguous(), log_probs, targets, il, tl, nll, log_alpha, blank, zi
            )
        return grad, None, None, None, None, None


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def _pad_targets(targets, target_lengths):
    """Concatenated (1-D) targets -> padded [B, max_len] (long)."""
    L = max(target_lengths) if target_lengths else 0
    padded = targets.new_zeros(len(target_lengths), L, dtype=torch.long)
    offset = 0
    for b, n in enumerate(target_lengths):
        padded[b, :n] = targets[offset : offset + n]
        offset += n
    return padded


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
    if unbatched:
        log_probs = log_probs.unsqueeze(1)
        if targets.dim() == 1:
            targets = targets.unsqueeze(0)
    elif batch_first:
        log_probs = log_probs.transpose(0, 1)
    il = _as_int_list(input_lengths)
    tl = _as_int_list(target_lengths)
    if targets.dim() == 1:
        targets = _pad_targets(targets, tl)
    targets = targets.to(device=log_probs.device, dtype=torch.long)

    nll, _ = _CTC.apply(log_probs, targets, il, tl, int(blank), bool(zero_infinity))
    if zero_infinity:
        nll = torch.where(nll == math.inf, torch.zeros((), dtype=nll.dtype, device=nll.device), nll)
    if reduction == "mean":
        tlen = torch.tensor(tl, dtype=nll.dtype, device=nll.device).clamp_min(1)
        return (nll / tlen).mean()
    if reduction == "sum":
        return nll.sum()
    return nll.squeeze(0) if unbatched else nll


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
