#!/usr/bin/env python
"""Render ``RESULTS.json`` as ``RESULTS.md``.

    python benchmarks/report.py [benchmarks/RESULTS.json] [-o benchmarks/RESULTS.md]

``benchmarks/run.py`` calls :func:`render` after every section, so the
Markdown never disagrees with the JSON. Every section renders; one that did
not run says so and why.
"""

import argparse
import json
import pathlib
import sys

SECTIONS = (
    ("meta_step", "1. Outer-step time vs plain SpeechBrain training"),
    ("peers", "2. Against higher and torchopt"),
    ("memory", "3. Peak memory vs inner steps"),
    ("adaptation_latency_s", "4. Test-time adaptation latency"),
    ("ddp", "5. Distributed meta-training (gloo)"),
)


# ------------------------------------------------------------------ helpers
def fmt(x, digits=3):
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 1:
            return f"{x:.{digits}g}" if abs(x) < 10 else f"{x:.1f}"
        return f"{x:.{digits}g}"
    return str(x)


def ratio(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}x"


def status(met):
    if met is None:
        return "n/a"
    return "**MET**" if met else "**MISSED**"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


def provenance(sec):
    """Command, mode, time and (short) machine of a section."""
    out = []
    if sec.get("command"):
        out.append(f"Command: `{sec['command']}` ({sec.get('mode', '?')} mode"
                   + (f", {fmt(sec.get('elapsed_s'))} s" if sec.get("elapsed_s") is not None else "")
                   + (f", {sec['started_at']}" if sec.get("started_at") else "")
                   + ").")
    m = sec.get("machine")
    if m:
        load = ""
        start, end = m.get("loadavg_at_start"), sec.get("loadavg_at_end")
        if start and end:
            load = f"; 1-min load average {start[0]:.1f} at the start, {end[0]:.1f} at the end"
        out.append(f"Machine: {machine_line(m)}{load}.")
    return "\n".join(out)


def machine_line(m):
    return (f"{m.get('cpu_model', '?')}, {m.get('usable_cores', m.get('cores', '?'))} cores, "
            f"torch {m.get('torch', '?')} with {m.get('torch_threads', '?')} threads")


def not_run(sec):
    s = (sec or {}).get("status", "not run")
    why = (sec or {}).get("reason") or (sec or {}).get("error") or "no result recorded"
    return f"**{s}**: {why}"


# ------------------------------------------------------------------ sections
def render_meta_step(sec):
    parts = []
    ep = sec.get("episode") or []
    if ep:
        t = ep[0]
        sup, qry = t.get("support") or {}, t.get("query") or {}
        parts.append(
            f"Model: {sec.get('model')} ({fmt(sec.get('trainable_parameters'))} trainable "
            f"parameters); one episode of {sec.get('meta_batch_tasks')} task(s) "
            f"(speaker {t.get('task')}): support {sup.get('utterances')} utterances "
            f"({fmt(sup.get('padded_seconds'))} s padded), query {qry.get('utterances')} "
            f"utterances ({fmt(qry.get('padded_seconds'))} s padded); inner_lr "
            f"{fmt(sec.get('inner_lr'))}; median of {sec.get('repeats')} interleaved repeats "
            f"after {sec.get('warmup_rounds')} warm-up round(s), {sec.get('torch_threads')} "
            "torch threads."
        )
    plain = sec.get("plain") or {}
    parts.append(
        f"Plain step (`sb.Brain.fit_batch` on the support batch): "
        f"**{fmt(plain.get('median_s'))} s** (on the query batch: "
        f"{fmt((plain.get('query_batch') or {}).get('median_s'))} s)."
    )
    rows = []
    for r in sec.get("results", []):
        rows.append([
            r["name"], r["inner_steps"], "1st" if r.get("first_order") else "2nd",
            fmt(r["median_s"]),
            f"{ratio(r.get('ratio_to_plain'))} of {r.get('plain_passes')}",
            ratio(r.get("ratio_to_plain_matched")),
            ratio(r.get("ratio_to_fomaml") or r.get("ratio_to_first_order")),
            r.get("target", "–"),
            status(r.get("target_met")),
        ])
    parts.append(table(
        ["configuration", "k", "order", "median s", "vs plain steps", "vs matched plain",
         "vs first order", "target", "status"], rows))
    parts.append(
        "\"vs plain steps\" divides by (k+1) plain steps on the support batch (k for Reptile, "
        "which has no separate outer pass); \"vs matched plain\" uses k plain steps on the "
        "support batch plus one on the query batch (the query batch has another length). "
        "Targets are judged on \"vs plain steps\"."
    )
    return "\n\n".join(parts)


PEER_LABELS = {
    "ours": "ours",
    "higher": "higher",
    "torchopt": "torchopt",
    "higher_our_kernels": "higher, our kernels",
    "torchopt_our_kernels": "torchopt, our kernels",
}


def render_peers(sec):
    parts = []
    parts.append(
        f"Model: {sec.get('model')}. higher {sec.get('higher_version')}, torchopt "
        f"{sec.get('torchopt_version')}. Conditions: {sec.get('conditions')}. Median of "
        f"{sec.get('repeats')} interleaved repeats. \"our kernels\": the peer's inner loop "
        "runs inside our brain's `inner_loop_context` (the kernel choice MetaBrain makes for "
        "second-order inner loops); without it the peer runs as its users write it."
    )
    results = sec.get("results", [])
    impls = [i for i in PEER_LABELS if any(i in (r.get("time") or {}) or
                                          i in (r.get("gradient_check") or {}) for r in results)]
    peers_ = [i for i in impls if i != "ours"]
    grad_rows, time_rows, mem_rows = [], [], []
    for r in results:
        label = f"{r['algorithm']} k={r['k']}"
        for impl, c in (r.get("gradient_check") or {}).items():
            grad_rows.append([label, PEER_LABELS.get(impl, impl), fmt(c.get("max_abs_diff")),
                              fmt(c.get("max_abs_grad_ours")), c.get("tolerance"),
                              "equal" if c.get("match") else "**DIFFERENT**"])
        t = r.get("time") or {}
        tr = r.get("time_ratio_peer_over_ours") or {}

        def tcell(impl):
            if impl not in t:
                return "–"
            return fmt(t[impl]["median_s"]) + (f" ({ratio(tr[impl])})" if impl in tr else "")

        verdict = f"{ratio(r.get('speedup_vs_faster_peer'))} {status(r.get('speed_target_met'))}"
        if "speed_target_met_same_kernels" in r:
            verdict += (f"; our kernels: {ratio(r.get('speedup_vs_faster_peer_same_kernels'))} "
                        f"{status(r.get('speed_target_met_same_kernels'))}")
        time_rows.append([label] + [tcell(i) for i in impls] + [verdict])
        mem = r.get("memory")
        if mem:
            mr = r.get("memory_ratio_peer_over_ours") or {}

            def mcell(impl):
                m = mem.get(impl)
                if m is None:
                    return "–"
                if "delta_mib" not in m:
                    return "error"
                return fmt(m["delta_mib"]) + (f" ({ratio(mr[impl], 3)})" if impl in mr else "")

            verdict = (f"{ratio(r.get('memory_ratio_vs_leaner_peer'), 3)} "
                       f"{status(r.get('memory_target_met'))}")
            if r.get("memory_target_met_same_kernels") is not None:
                verdict += (f"; our kernels: "
                            f"{ratio(r.get('memory_ratio_vs_leaner_peer_same_kernels'), 3)} "
                            f"{status(r.get('memory_target_met_same_kernels'))}")
            mem_rows.append([label] + [mcell(i) for i in impls] + [verdict])
    parts.append("Meta-gradients (checked before any timing; a peer that differs is not "
                 "timed):\n\n" + table(
                     ["algorithm", "peer", "max abs diff", "max abs grad", "tolerance", "result"],
                     grad_rows))
    targets = sec.get("targets") or {}
    parts.append("Seconds per outer step (peer / ours in brackets). Target: "
                 f"{targets.get('speed', '')}.\n\n" + table(
                     ["algorithm"] + [PEER_LABELS.get(i, i) for i in impls]
                     + ["faster peer / ours, status"], time_rows))
    if mem_rows:
        parts.append("Peak memory of one outer step, MiB (peer / ours in brackets). Target: "
                     f"{targets.get('memory', '')}.\n\n" + table(
                         ["algorithm"] + [PEER_LABELS.get(i, i) for i in impls]
                         + ["leaner peer / ours, status"], mem_rows))
    if sec.get("memory_note"):
        parts.append(sec["memory_note"] + ".")
    l2l = sec.get("learn2learn") or {}
    if l2l:
        parts.append(f"learn2learn: {l2l.get('status')} ({l2l.get('reason')}).")
    if sec.get("mismatched"):
        parts.append("**Gradient mismatch** (not timed): " + ", ".join(sec["mismatched"]))
    return "\n\n".join(parts)


def render_memory(sec):
    parts = [f"Model: {sec.get('model')}; {sec.get('method')}; meta_batch_tasks="
             f"{sec.get('meta_batch_tasks')}, k_support={sec.get('k_support')}, k_query="
             f"{sec.get('k_query')}; {sec.get('jobs', 1)} measurement(s) side by side with "
             f"{sec.get('torch_threads_per_measurement', '?')} torch thread(s) each. MiB are "
             "the growth of the process's resident memory during the step."]
    res = sec.get("results") or {}
    ks = sec.get("ks") or []
    strategies = list(res)
    rows = []
    for k in ks:
        row = [k]
        for s in strategies:
            row.append(fmt((res[s].get("peak_delta_mib") or {}).get(str(k))))
        rows.append(row)
    parts.append(table(["k"] + [f"{s} MiB" for s in strategies], rows))
    targets = sec.get("targets") or {}
    check_rows = [[s, res[s].get("check", "–"), targets.get(s, "–"),
                   status(res[s].get("target_met"))] for s in strategies]
    parts.append(table(["strategy", "check", "target", "status"], check_rows))
    if sec.get("errors"):
        parts.append("Failed points: " + "; ".join(sec["errors"]))
    return "\n\n".join(parts)


def render_adaptation(sec):
    rows = [["source", sec.get("source", "–")],
            ["path", sec.get("path", "–")],
            ["what", sec.get("what", "–")],
            ["median s", f"**{fmt(sec.get('median_s'))}**"],
            ["min / max s", f"{fmt(sec.get('min_s'))} / {fmt(sec.get('max_s'))}"],
            ["utterances x steps", f"{sec.get('utterances', '?')} x {sec.get('steps', '?')}"],
            ["audio s", fmt(sec.get("audio_seconds"))],
            ["model", sec.get("model", "–")]]
    if sec.get("load_collate_s"):
        rows.append(["of which reading + collating audio (median s)",
                     fmt(sec["load_collate_s"].get("median_s"))])
    if sec.get("target_s") is not None:
        rows.append(["target", f"<= {fmt(sec['target_s'])} s: {status(sec.get('met'))}"])
    return table(["", ""], rows)


def render_ddp(sec):
    parts = [f"Model: {sec.get('model')}; {sec.get('strategy')}, meta_batch_tasks="
             f"{sec.get('meta_batch_tasks')}; {sec.get('backend')}."]
    rows = []
    for r in sec.get("results", []):
        rows.append([r.get("processes"), r.get("torch_threads_per_process"),
                     r.get("tasks_per_rank"), r.get("episodes_timed"),
                     fmt(r.get("episodes_per_s")), ratio(r.get("speedup_vs_1_process"))])
    parts.append(table(["processes", "threads / process", "tasks / rank", "episodes timed",
                        "episodes / s", "vs 1 process"], rows))
    if sec.get("note"):
        parts.append(f"Note: {sec['note']}")
    return "\n\n".join(parts)


RENDERERS = {
    "meta_step": render_meta_step,
    "peers": render_peers,
    "memory": render_memory,
    "adaptation_latency_s": render_adaptation,
    "ddp": render_ddp,
}


def summary_rows(results):
    rows = []
    ms = results.get("meta_step") or {}
    for r in ms.get("results", []) if ms.get("status") == "ok" else []:
        if "target_met" in r:
            measured = (f"{ratio(r.get('ratio_to_plain'))} of (k+1) plain steps"
                        if r["strategy"] == "fomaml" else f"{ratio(r.get('ratio_to_fomaml'))} FOMAML")
            rows.append(["meta_step", f"{r['name']}: {r['target']}", measured,
                         status(r["target_met"])])
    pe = results.get("peers") or {}
    targets = pe.get("targets") or {}
    for r in pe.get("results", []):
        label = f"{r['algorithm']} k={r['k']}"
        for suffix, who in (("", ""), ("_same_kernels", " (peers with our kernels)")):
            if "speed_target_met" + suffix not in r:
                continue
            rows.append(["peers", f"{label}{who}: {targets.get('speed', '')}",
                         f"{ratio(r.get('speedup_vs_faster_peer' + suffix))} "
                         f"({PEER_LABELS.get(r.get('faster_peer' + suffix), '–')})",
                         status(r.get("speed_target_met" + suffix))])
            if r.get("memory") is not None and r.get("memory_target_met" + suffix) is not None:
                rows.append(["peers", f"{label}{who}: {targets.get('memory', '')}",
                             f"peer/ours {ratio(r.get('memory_ratio_vs_leaner_peer' + suffix), 3)}"
                             f" ({PEER_LABELS.get(r.get('leaner_peer' + suffix), '–')})",
                             status(r.get("memory_target_met" + suffix))])
    lat = results.get("adaptation_latency_s") or {}
    if lat.get("status") == "ok" and lat.get("target_s") is not None:
        rows.append(["adaptation_latency_s", f"<= {fmt(lat['target_s'])} s",
                     f"{fmt(lat.get('median_s'))} s", status(lat.get("met"))])
    me = results.get("memory") or {}
    for s, e in (me.get("results") or {}).items():
        if "target_met" in e:
            rows.append(["memory", f"{s}: {(me.get('targets') or {}).get(s, e.get('check'))}",
                         ", ".join(f"k={k}: {fmt(v)}" for k, v in (e.get("peak_delta_mib") or {}).items())
                         + " MiB", status(e["target_met"])])
    return rows


def render(results):
    """RESULTS.json (a dict) -> RESULTS.md (a string)."""
    out = [
        "# sb-meta benchmarks",
        "",
        "Generated by `benchmarks/report.py` from the RESULTS.json beside this file "
        "(written by `benchmarks/run.py`); do not edit by hand.",
        "",
        "What sb-meta costs: step time, memory, peers, latency, distributed training. "
        "Reproduce everything with `make bench` (`python benchmarks/run.py --full`) or quickly "
        "with `make bench-quick` (`python benchmarks/run.py --quick`: fewer repeats and k). "
        "AN4 is read from `$SBMETA_AN4_ROOT`. One section at a time (merged into the existing "
        "RESULTS.json, the other sections kept):",
        "",
    ] + [
        f"- {title[3:]}: `python benchmarks/run.py --full --only {key}`"
        for key, title in SECTIONS
    ] + [
        "",
        "Timings are medians over repeats (all raw samples are in the JSON); targets are stated "
        "as set and judged as measured, MET or MISSED.",
        "",
        "## Machine",
        "",
    ]
    m = results.get("machine") or {}
    if m:
        out.append(table(["", ""], [
            ["CPU", m.get("cpu_model", "?")],
            ["cores (usable)", f"{m.get('cores', '?')} ({m.get('usable_cores', '?')})"],
            ["memory", f"{fmt(m.get('memory_gib'))} GiB"],
            ["torch / threads", f"{m.get('torch', '?')} / {m.get('torch_threads', '?')}"],
            ["SpeechBrain", m.get("speechbrain", "?")],
            ["Python", m.get("python", "?")],
            ["load average (1, 5, 15 min) at start",
             ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
             if m.get("loadavg_at_start") else "–"],
        ]))
        load, cores = m.get("loadavg_at_start"), m.get("usable_cores") or m.get("cores")
        if load and cores and load[0] > 0.5 * cores:
            out += ["", f"**Warning**: the machine was busy when this run started (1-min load "
                        f"average {load[0]:.1f} on {cores} cores): timings and ratios are "
                        "unreliable; rerun on a quiet machine."]
    else:
        out.append("(not recorded)")
    out += ["", "## Targets", ""]
    rows = summary_rows(results)
    out.append(table(["section", "target", "measured", "status"], rows) if rows
               else "No target was measured in this file.")
    out.append("")
    commands = []
    for key, title in SECTIONS:
        sec = results.get(key) or {}
        out += [f"## {title}", ""]
        if sec.get("command"):
            commands.append(f"- `{key}`: `{sec['command']}`")
        if sec.get("status") in ("ok", "partial", "gradient mismatch"):
            try:
                out.append(RENDERERS[key](sec))
            except Exception as exc:  # noqa: BLE001 - a malformed section still shows up
                out.append(f"(could not render this section: {exc!r})")
            if sec.get("status") != "ok":
                out += ["", f"Status: **{sec['status']}**."]
        else:
            out.append(not_run(sec))
        prov = provenance(sec)
        if prov:
            out += ["", prov]
        out.append("")
    if commands:
        out += ["## Commands that produced these results", ""] + commands + [""]
    return "\n".join(out)


def main(argv=None):
    here = pathlib.Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?", default=str(here / "RESULTS.json"))
    parser.add_argument("-o", "--out", help="Markdown path (default: beside the JSON, .md)")
    args = parser.parse_args(argv)
    src = pathlib.Path(args.json)
    results = json.loads(src.read_text(encoding="utf-8"))
    dst = pathlib.Path(args.out) if args.out else src.with_suffix(".md")
    dst.write_text(render(results), encoding="utf-8")
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
