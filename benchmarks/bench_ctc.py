#!/usr/bin/env python
"""Benchmark the twice-differentiable CTC loss of ``sb_meta.losses``.

Times, at realistic ASR sizes (batch 8, 150 frames, target length ~30):

* ``native``: torch's native CTC, forward + backward (first order only);
* ``ours-1st``: ``sb_meta.losses.ctc_loss_abs``, forward + backward;
* ``ours-2nd``: forward, ``autograd.grad(..., create_graph=True)``, then
  backward of a scalar function of that gradient (what second-order MAML
  does);
* ``naive-2nd``: the same with a pure-PyTorch log-space CTC (Python loop
  over time with ``logsumexp``, differentiated twice by autograd).

All include ``log_softmax`` of the logits. Reports the median over repeats.

Example::

    python benchmarks/bench_ctc.py --json results/bench_ctc.json
"""

import argparse
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from sb_meta.losses import ctc_loss_abs

NEG = -1e30


def naive_ctc_nll(log_probs, targets, input_lengths, target_lengths, blank=0):
    """Pure-PyTorch log-space CTC (any-order autograd), [T, B, C] input."""
    T, B, C = log_probs.shape
    L = max(target_lengths)
    S = 2 * L + 1
    dev = log_probs.device
    s_ar = torch.arange(S, device=dev)
    tl = torch.tensor(target_lengths, device=dev)
    lab = torch.where(
        s_ar % 2 == 1, targets[:, ((s_ar - 1) // 2).clamp(0, targets.shape[1] - 1)], blank
    )
    lab = torch.where(s_ar < 2 * tl[:, None] + 1, lab, blank)
    skip = (s_ar >= 2) & (s_ar % 2 == 1) & (lab != torch.roll(lab, 2, dims=1))
    lp_lab = log_probs.gather(2, lab[None].expand(T, B, S))
    neg = torch.full((B, 1), NEG, dtype=log_probs.dtype, device=dev)
    neg2 = torch.full((B, 2), NEG, dtype=log_probs.dtype, device=dev)
    alpha = torch.where(s_ar < 2, lp_lab[0], NEG)
    alphas = [alpha]
    for t in range(1, T):
        a1 = torch.cat([neg, alpha[:, :-1]], 1)
        a2 = torch.where(skip, torch.cat([neg2, alpha[:, :-2]], 1), NEG)
        alpha = torch.logsumexp(torch.stack([alpha, a1, a2]), 0) + lp_lab[t]
        alphas.append(alpha)
    A = torch.stack(alphas)  # [T, B, S]
    il = torch.tensor(input_lengths, device=dev)
    final = A[il - 1, torch.arange(B, device=dev)]  # [B, S]
    end1 = final.gather(1, (2 * tl)[:, None])
    end2 = torch.where(tl[:, None] > 0, final.gather(1, (2 * tl - 1).clamp_min(0)[:, None]), NEG)
    return -torch.logsumexp(torch.cat([end1, end2], 1), 1)


def make_case(B, T, C, L, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, B, C, generator=g, dtype=dtype).to(device)
    targets = torch.randint(1, C, (B, L), generator=g).to(device)
    il = [T - int(x) for x in torch.randint(0, T // 5, (B,), generator=g)]
    tl = [L - int(x) for x in torch.randint(0, L // 5 + 1, (B,), generator=g)]
    il[0], tl[0] = T, L
    v = torch.randn(T, B, C, generator=g, dtype=dtype).to(device)
    return logits, targets, il, tl, v


def time_interleaved(fns, warmup, sync):
    """Median and min seconds of each function, run round-robin.

    Interleaving spreads any background load evenly over the implementations.
    ``fns``: list of (name, fn, repeats); an implementation with fewer
    repeats just drops out of the later rounds.
    """
    for _, fn, _ in fns:
        for _ in range(warmup):
            fn()
    times = {name: [] for name, _, _ in fns}
    for i in range(max(r for _, _, r in fns)):
        for name, fn, reps in fns:
            if i >= reps:
                continue
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def bench_config(B, T, C, L, args):
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    logits, targets, il, tl, v = make_case(B, T, C, L, dtype, device)

    def native_1st():
        x = logits.clone().requires_grad_()
        F.ctc_loss(x.log_softmax(-1), targets, il, tl, reduction="mean").backward()

    def ours_1st():
        x = logits.clone().requires_grad_()
        ctc_loss_abs(x.log_softmax(-1), targets, il, tl, reduction="mean").backward()

    def second_order(loss_fn):
        def run():
            x = logits.clone().requires_grad_()
            (g,) = torch.autograd.grad(loss_fn(x.log_softmax(-1)), x, create_graph=True)
            (g * v).sum().backward()

        return run

    ours_2nd = second_order(lambda lp: ctc_loss_abs(lp, targets, il, tl, reduction="mean"))

    def naive_loss(lp):
        nll = naive_ctc_nll(lp, targets, il, tl)
        return (nll / torch.tensor(tl, dtype=nll.dtype, device=device).clamp_min(1)).mean()

    naive_2nd = second_order(naive_loss)

    # sanity: second-order result of ours (in the benchmark dtype) vs the
    # naive implementation in float64
    def hvp(loss_fn, x, v):
        x = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss_fn(x.log_softmax(-1)), x, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), x)
        return h

    h_ours = hvp(lambda lp: ctc_loss_abs(lp, targets, il, tl, reduction="mean"), logits, v)
    h_ref = hvp(naive_loss, logits.double(), v.double())
    rel_err = float((h_ours.double() - h_ref).abs().max() / h_ref.abs().max())

    fns = [
        ("native", native_1st, args.repeats),
        ("ours-1st", ours_1st, args.repeats),
        ("ours-2nd", ours_2nd, args.repeats),
        ("naive-2nd", naive_2nd, args.naive_repeats),
    ]
    res = time_interleaved(fns, args.warmup, sync)
    rows = []
    for name, _, reps in fns:
        med, best = res[name]
        rows.append({"impl": name, "median_ms": med * 1e3, "min_ms": best * 1e3, "repeats": reps})
    base = rows[0]["median_ms"]
    for r in rows:
        r["x_native"] = r["median_ms"] / base
    return {
        "B": B,
        "T": T,
        "C": C,
        "L": L,
        "input_lengths": il,
        "target_lengths": tl,
        "hvp_max_rel_err_vs_float64_naive": rel_err,
        "rows": rows,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--classes", type=int, nargs="+", default=[30, 100])
    p.add_argument("--target-len", type=int, default=30)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--naive-repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    results = []
    for C in args.classes:
        results.append(bench_config(args.batch, args.frames, C, args.target_len, args))

    print(
        f"# torch {torch.__version__}, {args.device}, {args.dtype}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'B':>3} {'T':>4} {'C':>4} {'L':>3}  {'impl':<10} {'median ms':>10} {'min ms':>8} {'x native':>9}")
    for res in results:
        for r in res["rows"]:
            print(
                f"{res['B']:>3} {res['T']:>4} {res['C']:>4} {res['L']:>3}  {r['impl']:<10} "
                f"{r['median_ms']:>10.2f} {r['min_ms']:>8.2f} {r['x_native']:>9.1f}"
            )
        err = res["hvp_max_rel_err_vs_float64_naive"]
        print(f"    ours-2nd HVP vs float64 naive: max abs error / max abs value = {err:.1e}")
    if args.json:
        meta = {
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "device": args.device,
            "dtype": args.dtype,
            "threads": torch.get_num_threads(),
            "command": " ".join(sys.argv),
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
