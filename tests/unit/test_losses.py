"""Tests for sb_meta.losses: twice-differentiable CTC and distillation loss."""

import math

import pytest
import speechbrain.nnet.losses as sb_losses
import torch
import torch.nn.functional as F

from sb_meta.losses import ctc_loss, ctc_loss_abs, distillation_loss

NEG = -1e30  # finite "log 0": keeps the reference free of NaN gradients


# ---------------------------------------------------------------------------
# Slow reference: pure-torch log-space CTC, fully autograd (any order).
# ---------------------------------------------------------------------------


def reference_ctc_nll(log_probs, targets, input_lengths, target_lengths, blank=0):
    """Per-sequence CTC negative log-likelihood, [T, B, C] log_probs."""
    T, B, C = log_probs.shape
    L = max(max(target_lengths), 0)
    S = 2 * L + 1
    lprime = torch.full((B, S), blank, dtype=torch.long)
    skip = torch.zeros(B, S, dtype=torch.bool)
    for b, n in enumerate(target_lengths):
        for j in range(n):
            s = 2 * j + 1
            lprime[b, s] = int(targets[b, j])
            if j > 0 and int(targets[b, j]) != int(targets[b, j - 1]):
                skip[b, s] = True
    lp_lab = log_probs.gather(2, lprime[None].expand(T, B, S))  # [T, B, S]
    neg = torch.full((B, 1), NEG, dtype=log_probs.dtype)
    neg2 = torch.full((B, 2), NEG, dtype=log_probs.dtype)
    init_ok = torch.arange(S) < 2
    alpha = torch.where(init_ok, lp_lab[0], torch.full_like(lp_lab[0], NEG))
    alphas = [alpha]
    for t in range(1, T):
        a1 = torch.cat([neg, alpha[:, :-1]], 1)
        a2 = torch.cat([neg2, alpha[:, :-2]], 1)[:, :S]
        a2 = torch.where(skip, a2, torch.full_like(a2, NEG))
        alpha = torch.logsumexp(torch.stack([alpha, a1, a2]), 0) + lp_lab[t]
        alphas.append(alpha)
    out = []
    for b in range(B):
        T_b, L_b = input_lengths[b], target_lengths[b]
        if T_b == 0:
            out.append(log_probs.new_tensor(0.0 if L_b == 0 else math.inf))
            continue
        final = alphas[T_b - 1][b]
        ends = [final[2 * L_b]] + ([final[2 * L_b - 1]] if L_b > 0 else [])
        out.append(-torch.logsumexp(torch.stack(ends), 0))
    return torch.stack(out)


def reference_mean(nll, target_lengths):
    tlen = torch.tensor(target_lengths, dtype=nll.dtype).clamp_min(1)
    return (nll / tlen).mean()


def random_case(B, T, C, L, seed, dtype=torch.float64, repeats=True, full=False):
    """Random logits [T, B, C], padded targets and lengths."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, B, C, generator=g, dtype=dtype)
    targets = torch.randint(1, C, (B, L), generator=g)
    if repeats and L >= 3:
        targets[0, 1] = targets[0, 0]  # repeated label -> no skip transition
        targets[-1, 2] = targets[-1, 1]
    if full:
        il = [T] * B
        tl = [L] * B
    else:
        il = [T - (b % 3) for b in range(B)]
        tl = [max(0, L - (b % 2) * 2) for b in range(B)]
        il[0], tl[0] = T, L
    # keep all alignments possible (room for repeats' blanks)
    for b in range(B):
        while tl[b] > 0 and 2 * tl[b] + 1 > il[b]:
            tl[b] -= 1
    return logits, targets, il, tl


# ---------------------------------------------------------------------------
# Value and first gradient vs native
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_and_grad_match_native(dtype, reduction):
    logits, targets, il, tl = random_case(5, 20, 7, 6, seed=1, dtype=dtype)
    tl[2] = 0  # empty target
    x1 = logits.clone().requires_grad_()
    x2 = logits.clone().requires_grad_()
    ours = ctc_loss_abs(x1.log_softmax(-1), targets, il, tl, reduction=reduction)
    ref = F.ctc_loss(x2.log_softmax(-1), targets, il, tl, reduction=reduction)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, ref, **tol)
    w = torch.rand(ours.shape, dtype=dtype)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **tol)


def test_grad_wrt_log_probs_is_native():
    """The raw gradient w.r.t. log_probs (exp(lp) - gamma) matches native exactly."""
    logits, targets, il, tl = random_case(3, 12, 5, 4, seed=2)
    lp1 = logits.log_softmax(-1).requires_grad_()
    lp2 = lp1.detach().clone().requires_grad_()
    ctc_loss_abs(lp1, targets, il, tl, reduction="sum").backward()
    F.ctc_loss(lp2, targets, il, tl, reduction="sum").backward()
    torch.testing.assert_close(lp1.grad, lp2.grad, rtol=0, atol=0)


def test_concatenated_targets_batch_first_and_unbatched():
    logits, targets, il, tl = random_case(3, 10, 5, 4, seed=3)
    lp = logits.log_softmax(-1)
    flat = torch.cat([targets[b, : tl[b]] for b in range(3)])
    ref = F.ctc_loss(lp, targets, il, tl, reduction="none")
    torch.testing.assert_close(ctc_loss_abs(lp, flat, il, tl, reduction="none"), ref)
    bf = ctc_loss_abs(lp.transpose(0, 1), targets, il, tl, reduction="none", batch_first=True)
    torch.testing.assert_close(bf, ref)
    single = ctc_loss_abs(lp[: il[1], 1], targets[1, : tl[1]], [il[1]], [tl[1]], reduction="none")
    torch.testing.assert_close(single, ref[1])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batch", "batchmean"])
def test_speechbrain_semantics(reduction):
    g = torch.Generator().manual_seed(4)
    B, T, C, L = 4, 16, 6, 5
    logits = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    targets = torch.randint(1, C, (B, L), generator=g)
    targets[1, 2] = targets[1, 1]
    lens = torch.tensor([1.0, 0.8, 0.9, 0.55])
    tlens = torch.tensor([1.0, 0.6, 0.8, 0.4])
    x1 = logits.clone().requires_grad_()
    x2 = logits.clone().requires_grad_()
    ours = ctc_loss(x1.log_softmax(-1), targets, lens, tlens, 0, reduction=reduction)
    ref = sb_losses.ctc_loss(x2.log_softmax(-1), targets, lens, tlens, 0, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-10)


def test_impossible_alignment_like_native():
    """Target longer than the input: inf loss / NaN grad, or zeros with zero_infinity."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 2, 4, generator=g, dtype=torch.float64)
    targets = torch.tensor([[1, 2, 3], [1, 1, 2]])
    il, tl = [6, 4], [3, 3]  # "1 1 2" needs 4 frames... plus nothing: 1,_,1,2 fits in 4
    il[1] = 3  # now impossible
    for zi in (False, True):
        x1 = logits.clone().requires_grad_()
        x2 = logits.clone().requires_grad_()
        ours = ctc_loss_abs(x1.log_softmax(-1), targets, il, tl, reduction="none", zero_infinity=zi)
        ref = F.ctc_loss(x2.log_softmax(-1), targets, il, tl, reduction="none", zero_infinity=zi)
        torch.testing.assert_close(ours, ref, equal_nan=True)
        assert (ours[1].item() == 0) if zi else math.isinf(ours[1].item())
        ours.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, equal_nan=True)
    # second order with zero_infinity: the impossible sequence contributes zeros
    x = logits.clone().requires_grad_()
    loss = ctc_loss_abs(x.log_softmax(-1), targets, il, tl, reduction="sum", zero_infinity=True)
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    (gx**2).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[:, 1] == 0).all()
    # and equals the second order of the possible sequence alone
    y = logits[:, :1].clone().requires_grad_()
    loss0 = ctc_loss_abs(y.log_softmax(-1), targets[:1], il[:1], tl[:1], reduction="sum")
    (gy,) = torch.autograd.grad(loss0, y, create_graph=True)
    (gy**2).sum().backward()
    torch.testing.assert_close(x.grad[:, :1], y.grad)


def test_native_has_no_double_backward():
    """Documents why this module exists."""
    x = torch.randn(6, 1, 4, dtype=torch.float64, requires_grad=True)
    loss = F.ctc_loss(x.log_softmax(-1), torch.tensor([[1, 2]]), [6], [2])
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        g.sum().backward()


# ---------------------------------------------------------------------------
# Second order
# ---------------------------------------------------------------------------


def test_gradgradcheck():
    logits, targets, il, tl = random_case(2, 7, 4, 3, seed=6)
    tl[1] = 2
    il[1] = 6
    x = logits.clone().requires_grad_()

    def f(z):
        return ctc_loss_abs(z.log_softmax(-1), targets, il, tl, reduction="none")

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def _hvp(loss_fn, x, v):
    x = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss_fn(x), x, create_graph=True)
    (h,) = torch.autograd.grad((g * v).sum(), x)
    return g.detach(), h


CASES = [
    # B, T, C, L, seed, full
    (1, 5, 3, 2, 10, True),
    (3, 9, 4, 3, 11, False),
    (4, 12, 6, 5, 12, False),
    (2, 8, 3, 3, 13, False),  # few classes -> many repeats
]


@pytest.mark.parametrize("B,T,C,L,seed,full", CASES)
def test_hvp_matches_reference_through_log_softmax(B, T, C, L, seed, full):
    logits, targets, il, tl = random_case(B, T, C, L, seed=seed, full=full)
    if B >= 3:
        tl[2] = 0  # empty target
    v = torch.randn(logits.shape, dtype=logits.dtype, generator=torch.Generator().manual_seed(seed))
    w = torch.rand(B, dtype=logits.dtype) + 0.5  # per-sequence weights (grad_out != 1)

    def ours(z):
        return (ctc_loss_abs(z.log_softmax(-1), targets, il, tl, reduction="none") * w).sum()

    def ref(z):
        return (reference_ctc_nll(z.log_softmax(-1), targets, il, tl) * w).sum()

    g1, h1 = _hvp(ours, logits, v)
    g2, h2 = _hvp(ref, logits, v)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(h1, h2, rtol=1e-8, atol=1e-9)


EDGE_CASES = {
    # name: (T, C, targets, input_lengths, target_lengths, blank)
    "one-frame-empty-targets": (1, 3, [[], []], [1, 1], [0, 0], 0),
    "all-empty-targets": (5, 3, [[], []], [5, 3], [0, 0], 0),
    "empty-input-and-target": (6, 4, [[1, 2], [1, 1], [2, 3]], [6, 0, 5], [2, 0, 2], 0),
    "blank-last": (8, 5, [[0, 1, 1], [2, 2, 2], [3, 0, 1]], [8, 7, 6], [3, 3, 2], 4),
    "frames-beyond-all-lengths": (10, 4, [[1, 2, 2], [3, 1, 1]], [6, 5], [3, 2], 0),
    "exact-fit-with-repeats": (5, 4, [[1, 1, 1]], [5], [3], 0),
    "exact-fit": (3, 4, [[1, 2, 3]], [3], [3], 0),
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edge_cases_value_grad_hvp(name):
    T, C, tg, il, tl, blank = EDGE_CASES[name]
    targets = torch.tensor(tg, dtype=torch.long).reshape(len(tg), -1)
    B = len(il)
    g = torch.Generator().manual_seed(19)
    x = torch.randn(T, B, C, generator=g, dtype=torch.float64)
    v = torch.randn(T, B, C, generator=g, dtype=torch.float64)

    def ours(z):
        return ctc_loss_abs(z.log_softmax(-1), targets, il, tl, blank=blank, reduction="sum")

    def ref(z):
        return reference_ctc_nll(z.log_softmax(-1), targets, il, tl, blank=blank).sum()

    xn = x.clone().requires_grad_()
    native = F.ctc_loss(xn.log_softmax(-1), targets, il, tl, blank=blank, reduction="sum")
    native.backward()
    torch.testing.assert_close(ours(x), native.detach(), rtol=1e-12, atol=1e-12)
    g1, h1 = _hvp(ours, x, v)
    g2, h2 = _hvp(ref, x, v)
    torch.testing.assert_close(g1, xn.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(h1, h2, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("B,T,C,L,seed,full", CASES[1:3])
def test_hvp_wrt_log_probs_matches_native_gradient_jacobian(B, T, C, L, seed, full):
    """d/dlp of native's (exp(lp) - gamma), lp off the simplex too."""
    logits, targets, il, tl = random_case(B, T, C, L, seed=seed, full=full)
    lp = logits.log_softmax(-1) + 0.1 * torch.randn(logits.shape, dtype=logits.dtype)
    v = torch.randn(logits.shape, dtype=logits.dtype)

    def ref_native_grad(x):
        nll = reference_ctc_nll(x, targets, il, tl).sum()
        (dlogz,) = torch.autograd.grad(-nll, x, create_graph=True)  # gamma
        mask = (torch.arange(T)[:, None] < torch.tensor(il)[None, :])[..., None]
        return torch.where(mask, x.exp() - dlogz, torch.zeros_like(x))

    x = lp.clone().requires_grad_()
    (g1,) = torch.autograd.grad(ctc_loss_abs(x, targets, il, tl, reduction="sum"), x, create_graph=True)
    (h1,) = torch.autograd.grad((g1 * v).sum(), x)
    x = lp.clone().requires_grad_()
    g2 = ref_native_grad(x)
    (h2,) = torch.autograd.grad((g2 * v).sum(), x)
    torch.testing.assert_close(g1.detach(), g2.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(h1, h2, rtol=1e-8, atol=1e-9)


def test_hvp_float32_close_to_float64():
    logits, targets, il, tl = random_case(4, 40, 10, 12, seed=14)
    v = torch.randn(logits.shape, dtype=logits.dtype)

    def f(z):
        return ctc_loss_abs(z.log_softmax(-1), targets, il, tl, reduction="mean")

    _, h64 = _hvp(f, logits, v)
    _, h32 = _hvp(f, logits.float(), v.float())
    torch.testing.assert_close(h32.double(), h64, rtol=1e-4, atol=1e-5)


def test_second_order_speechbrain_interface():
    g = torch.Generator().manual_seed(15)
    B, T, C, L = 3, 10, 5, 4
    logits = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    targets = torch.randint(1, C, (B, L), generator=g)
    lens = torch.tensor([1.0, 0.9, 0.7])
    tlens = torch.tensor([1.0, 0.75, 0.5])
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    il = (lens * T).round().int().tolist()
    tl = (tlens * L).round().int().tolist()

    def ours(z):
        return ctc_loss(z.log_softmax(-1), targets, lens, tlens, 0, reduction="mean")

    def ref(z):
        nll = reference_ctc_nll(z.log_softmax(-1).transpose(0, 1), targets, il, tl)
        return reference_mean(nll, tl)

    _, h1 = _hvp(ours, logits, v)
    _, h2 = _hvp(ref, logits, v)
    torch.testing.assert_close(h1, h2, rtol=1e-8, atol=1e-9)


def test_mini_maml_second_order():
    """One inner SGD step with create_graph, outer loss on the adapted params."""
    g = torch.Generator().manual_seed(16)
    B, T, F_in, C, L = 3, 10, 6, 5, 4
    model = torch.nn.Linear(F_in, C).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    x_s = torch.randn(B, T, F_in, generator=g, dtype=torch.float64)
    x_q = torch.randn(B, T, F_in, generator=g, dtype=torch.float64)
    y_s = torch.randint(1, C, (B, L), generator=g)
    y_q = torch.randint(1, C, (B, L), generator=g)
    y_s[0, 1] = y_s[0, 0]
    lens = torch.tensor([1.0, 0.8, 0.9])
    tlens = torch.tensor([1.0, 0.5, 0.75])
    lr = 0.5

    def ref_loss(lp, y):
        il = (lens * T).round().int().tolist()
        tl = (tlens * L).round().int().tolist()
        return reference_mean(reference_ctc_nll(lp.transpose(0, 1), y, il, tl), tl)

    def ours_loss(lp, y):
        return ctc_loss(lp, y, lens, tlens, 0)

    def meta_grads(loss_fn):
        params = dict(model.named_parameters())
        out = torch.func.functional_call(model, params, (x_s,)).log_softmax(-1)
        grads = torch.autograd.grad(loss_fn(out, y_s), list(params.values()), create_graph=True)
        fast = {n: p - lr * gr for (n, p), gr in zip(params.items(), grads)}
        out_q = torch.func.functional_call(model, fast, (x_q,)).log_softmax(-1)
        outer = loss_fn(out_q, y_q)
        return outer.detach(), torch.autograd.grad(outer, list(params.values()))

    o1, g1 = meta_grads(ours_loss)
    o2, g2 = meta_grads(ref_loss)
    torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    # second-order term is not negligible here: differs from first-order MAML
    params = dict(model.named_parameters())
    out = torch.func.functional_call(model, params, (x_s,)).log_softmax(-1)
    grads = torch.autograd.grad(ours_loss(out, y_s), list(params.values()))
    fast = {n: (p - lr * gr).detach().requires_grad_() for (n, p), gr in zip(params.items(), grads)}
    out_q = torch.func.functional_call(model, fast, (x_q,)).log_softmax(-1)
    fo = torch.autograd.grad(ours_loss(out_q, y_q), list(fast.values()))
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(g1, fo))


def test_torch_func_grad_of_grad():
    logits, targets, il, tl = random_case(2, 8, 4, 3, seed=20)
    v = torch.randn(logits.shape, dtype=logits.dtype)

    def f(z):
        return ctc_loss_abs(z.log_softmax(-1), targets, il, tl)

    def ref(z):
        return reference_mean(reference_ctc_nll(z.log_softmax(-1), targets, il, tl), tl)

    h1 = torch.func.grad(lambda z: (torch.func.grad(f)(z) * v).sum())(logits)
    _, h2 = _hvp(ref, logits, v)
    torch.testing.assert_close(h1, h2, rtol=1e-8, atol=1e-9)


def test_first_order_backward_does_not_build_hvp_graph():
    """Plain backward goes through native only (no graph kept on the grad)."""
    logits, targets, il, tl = random_case(2, 8, 4, 3, seed=17)
    x = logits.clone().requires_grad_()
    (gx,) = torch.autograd.grad(ctc_loss_abs(x.log_softmax(-1), targets, il, tl), x)
    assert gx.grad_fn is None


# ---------------------------------------------------------------------------
# Distillation
# ---------------------------------------------------------------------------


def test_distillation_loss():
    g = torch.Generator().manual_seed(18)
    B, T, C = 3, 7, 5
    s = torch.randn(B, T, C, generator=g, dtype=torch.float64).log_softmax(-1)
    t = torch.randn(B, T, C, generator=g, dtype=torch.float64).log_softmax(-1)
    lens = torch.tensor([1.0, 4 / 7, 5 / 7])
    n = [7, 4, 5]
    per_frame = (t.exp() * (t - s)).sum(-1)
    expect = sum(per_frame[b, : n[b]].sum() for b in range(B)) / sum(n)
    torch.testing.assert_close(distillation_loss(s, t, lens), expect)
    torch.testing.assert_close(
        distillation_loss(s, t, lens, reduction="batch"),
        torch.stack([per_frame[b, : n[b]].mean() for b in range(B)]),
    )
    # agrees with torch's kl_div without masking
    ref = F.kl_div(s, t, log_target=True, reduction="sum") / (B * T)
    torch.testing.assert_close(distillation_loss(s, t), ref)
    assert distillation_loss(t, t).abs() < 1e-12
    assert distillation_loss(s, t) > 0
    # temperature: softened distributions, scaled by tau**2
    tau = 2.0
    st, tt = (s / tau).log_softmax(-1), (t / tau).log_softmax(-1)
    torch.testing.assert_close(
        distillation_loss(s, t, temperature=tau),
        tau**2 * F.kl_div(st, tt, log_target=True, reduction="sum") / (B * T),
    )
    # zero-probability teacher classes: no NaN value or gradient
    t0 = t.clone()
    t0[..., 0] = -math.inf
    s1 = s.clone().requires_grad_()
    t1 = t0.clone().requires_grad_()
    loss = distillation_loss(s1, t1, lens)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(s1.grad).all() and torch.isfinite(t1.grad).all()
    # gradient only from valid frames
    assert (s1.grad[1, 4:] == 0).all()
