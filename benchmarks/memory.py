"""Peak memory of one outer step vs the number of inner steps.

Every measurement runs in a fresh Python process (``python benchmarks/memory.py
--worker SPEC``) so that nothing allocated by another measurement is counted:

1. build the model and the episode (the baseline: model + data loaded);
2. one untimed first-order warm-up outer step at ``inner_steps=1`` (optimizer
   state, lazy initialisations and thread pools exist afterwards);
3. garbage-collect, read the RSS, reset the kernel's peak-RSS mark (VmHWM via
   ``/proc/self/clear_refs``), run one outer step at ``inner_steps=k`` and
   report ``peak - RSS before the step`` (a thread sampling RSS every 2 ms is a
   cross-check and the fallback where the mark cannot be reset).

glibc is told to return large buffers to the OS when freed
(``MALLOC_MMAP_THRESHOLD_``), so the RSS before the step is not inflated by
the allocator's cache from the warm-up (with glibc's default dynamic
threshold the RSS of this workload is several times the memory it holds, and
a later step would reuse that cache and look nearly free). The malloc setting
slows the step (every large buffer is a fresh mapping): the step times
recorded here are not timings. Measurements run two at a time on two cores
(one torch thread each); peak RSS is per process, so they do not disturb each
other's numbers.

Checks: first order (FOMAML) is flat in k; second order (MAML) is at most
linear in k.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

FLAT_RATIO = 1.3  # first order: max / min peak within this factor...
FLAT_SLACK_MIB = 16.0  # ...or within this many MiB
LINEAR_FACTOR = 1.1  # second order: peak(k) <= peak(1) * k * 1.1 + slack
LINEAR_SLACK_MIB = 16.0


def worker(spec):
    """Measure one outer step in this (fresh) process; returns a dict."""
    import torch

    import peers

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    setup = common.make_setup(spec["setup"], spec.get("workdir"))
    k = int(spec["k"])
    second_order = spec["strategy"] == "maml"
    if spec.get("peer_mode"):
        brain = peers.make_brain(setup, k, second_order, dropout=spec.get("dropout", False))
    else:
        brain = setup.brain(
            meta_strategy=spec["strategy"], inner_steps=k, meta_batch_tasks=1,
            k_support=4, k_query=4,
        )
    episode = setup.episode(brain, seed=0, meta_batch_tasks=1)
    if spec.get("peer_mode"):
        peers.prime(brain, episode)
    net = peers.PeerNet(brain) if spec["impl"] != "ours" else None
    loaded = common.rss_mib()
    # warm-up at one inner step (the inner loop reads inner_steps at each call)
    if spec.get("warmup", True):
        # one first-order step at k=1: the optimizer state, lazy initialisations and
        # thread pools exist afterwards; a first-order step is much cheaper than a
        # second-order one, and anything it leaves uninitialised is counted against
        # the measured step (conservative)
        brain.meta_config["inner_steps"] = 1
        brain.strategy.first_order = True
        peers.make_step(spec["impl"], brain, net, episode, 1, False)()
        brain.strategy.first_order = not second_order
        brain.meta_config["inner_steps"] = k
    step = peers.make_step(spec["impl"], brain, net, episode, k, second_order)
    out = common.measure_peak(step)
    out.update(
        rss_after_setup_mib=loaded,
        torch_threads=torch.get_num_threads(),
        spec=spec,
    )
    return out


def run_worker_subprocess(spec, timeout=900):
    """Run :func:`worker` in a fresh interpreter; returns its dict."""
    env = dict(os.environ)
    env.update(common.MALLOC_ENV)
    env.setdefault("PYTHONWARNINGS", "ignore")
    proc = subprocess.run(
        [sys.executable, str(HERE / "memory.py"), "--worker", json.dumps(spec)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=str(common.REPO),
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"memory worker {spec} failed (rc={proc.returncode}): {tail}")
    return json.loads(lines[-1][len("RESULT "):])


def default_jobs():
    """Measurements run side by side (peak RSS is per process), each with its
    share of the cores; 1 job where there is a single core."""
    cores = common.machine_info()["usable_cores"] or 1
    return 2 if cores >= 2 else 1


def run_workers(specs, jobs=None):
    """Run many measurements, ``jobs`` fresh processes at a time; results in order.

    A failed measurement gives ``{"error": ...}`` instead of its dict.
    """
    from concurrent.futures import ThreadPoolExecutor

    jobs = jobs or default_jobs()
    cores = common.machine_info()["usable_cores"] or 1
    threads = max(1, cores // jobs)
    specs = [dict(s, threads=s.get("threads") or threads) for s in specs]

    def one(spec):
        try:
            return run_worker_subprocess(spec)
        except Exception as exc:  # noqa: BLE001 - recorded in the results
            return {"error": str(exc)[-1500:], "spec": spec}

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, specs))


def check_flat(peaks):
    lo, hi = min(peaks.values()), max(peaks.values())
    return (hi <= lo * FLAT_RATIO) or (hi - lo <= FLAT_SLACK_MIB)


def check_linear(peaks):
    p1 = peaks.get(1)
    if p1 is None:
        return None
    return all(v <= p1 * k * LINEAR_FACTOR + LINEAR_SLACK_MIB for k, v in peaks.items())


def run(quick, setup_kind="an4", workdir=None, ks=None, strategies=("fomaml", "maml"), jobs=None):
    """The ``memory`` section."""
    if setup_kind == "an4":
        reason = common.an4_missing_reason()
        if reason:
            raise common.SkipSection(reason)
        common.make_setup("an4", workdir)  # prepare the manifests once, here
    ks = ks or ([1, 2, 4] if quick else list(range(1, 9)))
    result = {
        "status": "ok",
        "model": common.AN4Setup.name if setup_kind == "an4" else common.ToySetup.name,
        "ks": ks,
        "meta_batch_tasks": 1,
        "k_support": 4,
        "k_query": 4,
        "method": (
            "fresh process per point; peak RSS during one outer step (fit_batch) minus the "
            "RSS just before it, after a warm-up step; MALLOC_MMAP_THRESHOLD_=65536"
        ),
        "targets": {
            "fomaml": f"flat: max/min <= {FLAT_RATIO} or max-min <= {FLAT_SLACK_MIB} MiB",
            "maml": f"at most linear: peak(k) <= peak(1)*k*{LINEAR_FACTOR} + {LINEAR_SLACK_MIB} MiB",
        },
        "results": {},
    }
    specs = [
        {"setup": setup_kind, "workdir": str(workdir) if workdir else None,
         "impl": "ours", "strategy": strategy, "k": k}
        for strategy in strategies
        for k in ks
    ]
    # largest first: the slowest measurements start early when run side by side
    order = sorted(range(len(specs)), key=lambda i: -specs[i]["k"])
    done = run_workers([specs[i] for i in order], jobs)
    measured = {i: done[j] for j, i in enumerate(order)}
    result["jobs"] = jobs or default_jobs()
    result["torch_threads_per_measurement"] = next(
        (m.get("torch_threads") for m in measured.values() if "torch_threads" in m), None
    )
    failures = []
    for strategy in strategies:
        points = {
            spec["k"]: measured[i] for i, spec in enumerate(specs) if spec["strategy"] == strategy
        }
        failures += [f"{strategy} k={k}: {p['error']}" for k, p in points.items() if "error" in p]
        points = {k: p for k, p in points.items() if "error" not in p}
        if not points:
            result["results"][strategy] = {"status": "error"}
            continue
        peaks = {k: p["delta_mib"] for k, p in points.items()}
        entry = {
            "peak_delta_mib": {str(k): v for k, v in peaks.items()},
            "raw": {str(k): p for k, p in points.items()},
        }
        if strategy == "fomaml":
            entry["check"] = "flat"
            entry["target_met"] = check_flat(peaks)
        else:
            entry["check"] = "at most linear"
            entry["target_met"] = check_linear(peaks)
            if peaks.get(1):
                entry["per_k_over_k1"] = {str(k): v / (peaks[1] * k) for k, v in peaks.items()}
        result["results"][strategy] = entry
    if failures:
        result["status"] = "partial"
        result["errors"] = failures
    return result



def attach_peer_memory(result, quick, setup_kind="an4", workdir=None):
    """Add peak memory per implementation to the ``peers`` section ``result``
    (what :func:`peers.run` measured), one fresh process per point."""
    import peers

    # quick mode: second order only (where the implementations differ most)
    mem_rows = [r for r in result["results"] if not quick or r["algorithm"] == "maml"]
    specs = [
        {"setup": setup_kind, "workdir": str(workdir) if workdir else None, "impl": impl,
         "strategy": row["algorithm"], "k": row["k"], "dropout": False, "peer_mode": True}
        for row in mem_rows
        for impl in peers.impls_for(row["algorithm"] == "maml")
    ]
    measured = iter(run_workers(specs))
    result["memory_method"] = (
        "as the memory section: fresh process per point, peak RSS of one outer step over "
        "the RSS before it (after a warm-up step), MALLOC_MMAP_THRESHOLD_=65536"
    )
    if quick:
        result["memory_note"] = "quick mode: peak memory measured for MAML only"
    for row in mem_rows:
        mem = {impl: next(measured) for impl in peers.impls_for(row["algorithm"] == "maml")}
        row["memory"] = mem
        if "delta_mib" in mem["ours"]:
            row["memory_ratio_peer_over_ours"] = {
                i: m["delta_mib"] / max(mem["ours"]["delta_mib"], 1e-9)
                for i, m in mem.items()
                if i != "ours" and "delta_mib" in m and row["gradient_check"][i]["match"]
            }
        peers._judge(row)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help="JSON spec of one measurement (internal)")
    args = parser.parse_args(argv)
    if args.worker:
        import logging

        logging.disable(logging.WARNING)
        out = worker(json.loads(args.worker))
        print("RESULT " + json.dumps(out), flush=True)
        return 0
    parser.error("run the memory section with: python benchmarks/run.py --only memory")


if __name__ == "__main__":
    sys.exit(main())
