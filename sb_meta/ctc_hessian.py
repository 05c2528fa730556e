"""The second derivative of CTC: the machinery behind :func:`sb_meta.losses.ctc_loss`.

:class:`CTC` is a :class:`torch.autograd.Function` whose forward and first
backward are torch's native CTC kernels. When that backward runs with
``create_graph=True`` it builds the gradient with :class:`CTCGrad`, whose own
backward is :func:`ctc_hvp`: the exact Hessian-vector product of the CTC loss,
from an expectation-semiring forward-backward pass (:func:`prefix_expectations`
over the forward and the time-reversed problem at once). Users call
:func:`sb_meta.losses.ctc_loss` or :func:`sb_meta.losses.ctc_loss_abs`, which
also say what is supported and what it costs.

Authors
 * sb-meta contributors
"""

import torch

__all__ = ["CTC", "CTCGrad", "ctc_hvp", "native_ctc", "native_ctc_grad", "prefix_expectations"]


def native_ctc(log_probs, targets, input_lengths, target_lengths, blank, zero_infinity):
    return torch.ops.aten._ctc_loss(
        log_probs, targets, input_lengths, target_lengths, blank, zero_infinity
    )


def native_ctc_grad(
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


def prefix_expectations(log_alpha, lp_lab, v_lab, skip):
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


def _extended_labels(targets, Sb, S, blank):
    """[B, S] extended label sequences ``l'`` (blank, y1, blank, y2, ..., blank),
    blank beyond each sequence's ``Sb`` states."""
    B = targets.shape[0]
    s_ar = torch.arange(S, device=targets.device)
    if targets.shape[1] > 0:
        lab_idx = ((s_ar - 1) // 2).clamp(0, targets.shape[1] - 1)
        lprime = torch.where(s_ar % 2 == 1, targets[:, lab_idx], blank)
    else:
        lprime = torch.full((B, S), blank, dtype=torch.long, device=targets.device)
    return torch.where(s_ar < Sb[:, None], lprime, blank)  # [B, S]


def _time_reversed(lp, vb, targets, lprime, il, tl, Sb, input_lengths, target_lengths, blank):
    """The time-reversed problem of each sequence (its native alpha is beta).

    Returns the frame index ``tidx`` [Tm, B] and state index ``sidx`` [B, S]
    of the reversal, the reversed labels, log-probabilities and direction, and
    the native forward variables of the reversed problem.
    """
    Tm, B, C = lp.shape
    S = lprime.shape[1]
    dev = lp.device
    s_ar = torch.arange(S, device=dev)
    t_ar = torch.arange(Tm, device=dev)
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
    _, la_r = native_ctc(lp_r, targets_r, input_lengths, target_lengths, blank, False)
    return tidx, sidx, lprime_r, lp_r, v_r, la_r


def _posterior_derivative(lp, A, LA, LPL, VL, idx, tidx, sidx, nll, finite_nll):
    """``d gamma`` [Tm, B, C] from the prefix expectations ``A`` of the forward
    and reversed problems (side by side in ``A``, ``LA``, ``LPL``, ``VL``)."""
    Tm, B2, S = LA.shape
    B = B2 // 2
    neg_inf = float("-inf")
    # Back to forward coordinates: suffix expectations and log beta.
    b_ar = torch.arange(B, device=lp.device)
    flat = (tidx[:, :, None] * (2 * B) + B + b_ar[:, None]) * S + sidx  # [Tm, B, S]
    A_b = A.reshape(-1)[flat] if A.is_contiguous() else torch.take(A, flat)
    lb = LA.reshape(-1)[flat]
    la, lp_lab, v_lab, A_f = LA[:, :B], LPL[:, :B], VL[:, :B], A[:, :B]
    nll_safe = torch.where(finite_nll, nll, 0.0)
    # posterior of state s at frame t (alpha and beta both include lp)
    q = torch.exp(torch.where(la > neg_inf, la - lp_lab, neg_inf) + lb + nll_safe[:, None])
    ev = (q * v_lab).sum(dim=(0, 2))  # E[V]
    r = q * (A_f + A_b - v_lab - ev[:, None])
    return torch.zeros_like(lp).scatter_add_(2, idx, r)


def _masked(jvp, frame_mask, finite_nll, zero_infinity):
    """``jvp`` on valid frames, 0 elsewhere; NaN (0 with ``zero_infinity``) for
    sequences with an infinite loss."""
    if not bool(finite_nll.all()):
        fill = 0.0 if zero_infinity else float("nan")
        frame_mask_ok = frame_mask & finite_nll[:, None]
        out = torch.where(frame_mask_ok, jvp, 0.0)
        return torch.where(frame_mask & ~finite_nll[:, None], fill, out)
    return torch.where(frame_mask, jvp, 0.0)


def ctc_hvp(
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
    s_ar = torch.arange(S, device=dev)
    t_ar = torch.arange(Tm, device=dev)
    lprime = _extended_labels(targets, Sb, S, blank)
    tidx, sidx, lprime_r, lp_r, v_r, la_r = _time_reversed(
        lp, vb, targets, lprime, il, tl, Sb, input_lengths, target_lengths, blank)

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
    A = prefix_expectations(LA, LPL, VL, skip)

    finite_nll = torch.isfinite(nll)
    dgamma = _posterior_derivative(lp, A, LA, LPL, VL, idx, tidx, sidx, nll, finite_nll)
    frame_mask = (t_ar[:, None] < il)[:, :, None]  # [Tm, B, 1]
    out = _masked(torch.exp(lp) * vb - dgamma, frame_mask, finite_nll, zero_infinity)
    if Tm == T:
        return out
    hvp = torch.zeros_like(log_probs)
    hvp[:Tm] = out
    return hvp


# ---------------------------------------------------------------------------
# autograd Functions
# ---------------------------------------------------------------------------


class CTCGrad(torch.autograd.Function):
    """Native CTC gradient (sequence weight 1) with an exact backward."""

    @staticmethod
    def forward(log_probs, targets, nll, log_alpha, input_lengths, target_lengths, blank, zi):
        return native_ctc_grad(
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
        hvp = ctc_hvp(v, log_probs, targets, nll, log_alpha, il, tl, blank, zi)
        return hvp, None, None, None, None, None, None, None


class CTC(torch.autograd.Function):
    """Per-sequence CTC negative log-likelihood, twice differentiable."""

    @staticmethod
    def forward(log_probs, targets, input_lengths, target_lengths, blank, zi):
        nll, log_alpha = native_ctc(log_probs, targets, input_lengths, target_lengths, blank, zi)
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
            g = CTCGrad.apply(log_probs, targets, nll.detach(), log_alpha, il, tl, blank, zi)
            grad = grad_nll[None, :, None] * g
        else:
            grad = native_ctc_grad(
                grad_nll.contiguous(), log_probs, targets, il, tl, nll, log_alpha, blank, zi
            )
        return grad, None, None, None, None, None
