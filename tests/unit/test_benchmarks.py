"""The benchmark harness runs and its report renders (no timing is asserted).

Timings live in ``benchmarks/`` (``make bench``); these tests only prove the
code paths work: the Markdown renderer on a small fake RESULTS.json, and the
timing / peer-comparison / merge code end to end on the toy brain.
"""

import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import report  # noqa: E402
import run as bench_run  # noqa: E402

MACHINE = {"cpu_model": "Fake CPU", "cores": 2, "usable_cores": 2, "torch": "2.x",
           "torch_threads": 2, "speechbrain": "1.1.2", "python": "3.11", "memory_gib": 8.0}


def _timing(x):
    return {"median_s": x, "min_s": x, "max_s": x, "n": 1, "samples_s": [x]}


def fake_results():
    prov = {"command": "python benchmarks/run.py --quick", "mode": "quick", "machine": MACHINE}
    return {
        "machine": MACHINE,
        "meta_step": dict(
            prov, status="ok", model="toy", trainable_parameters=10,
            episode=[{"task": "spk1", "support": {"utterances": 4, "padded_seconds": 3.0},
                      "query": {"utterances": 4, "padded_seconds": 2.5}}],
            meta_batch_tasks=1, repeats=1, warmup_rounds=1, torch_threads=2, inner_lr=0.05,
            plain={"median_s": 0.1, "time": _timing(0.1), "query_batch": _timing(0.09)},
            results=[
                {"name": "fomaml_k1", "strategy": "fomaml", "inner_steps": 1,
                 "first_order": True, "median_s": 0.21, "plain_passes": 2,
                 "ratio_to_plain": 1.05, "ratio_to_plain_matched": 1.1,
                 "target": "<= 1.15 x (k+1) plain steps", "target_met": True,
                 "time": _timing(0.21)},
                {"name": "maml_k1", "strategy": "maml", "inner_steps": 1, "first_order": False,
                 "median_s": 0.9, "plain_passes": 2, "ratio_to_plain": 4.5,
                 "ratio_to_plain_matched": 4.7, "ratio_to_fomaml": 4.3,
                 "target": "<= 3.0 x FOMAML at the same k", "target_met": False,
                 "time": _timing(0.9)},
            ],
        ),
        "peers": dict(
            prov, status="ok", model="toy", repeats=1, conditions="dropout off",
            learn2learn={"status": "not installable", "reason": "does not build"},
            targets={"speed": "ours >= 1.5x", "memory": "ours <= leaner peer"},
            results=[{
                "algorithm": "maml", "k": 1,
                "gradient_check": {"higher": {"max_abs_diff": 0.0, "max_abs_grad_ours": 2.0,
                                              "tolerance": "rtol 1e-4", "match": True}},
                "time": {"ours": _timing(1.0), "higher": _timing(1.2)},
                "time_ratio_peer_over_ours": {"higher": 1.2},
                "faster_peer": "higher", "speedup_vs_faster_peer": 1.2,
                "speed_target_met": False,
                "memory": {"ours": {"delta_mib": 100.0}, "higher": {"delta_mib": 120.0}},
                "memory_ratio_peer_over_ours": {"higher": 1.2},
                "leaner_peer": "higher", "memory_ratio_vs_leaner_peer": 1.2,
                "memory_target_met": True,
            }],
        ),
        "memory": dict(
            prov, status="ok", model="toy", ks=[1, 2], method="fake",
            targets={"fomaml": "flat", "maml": "linear"},
            results={"fomaml": {"peak_delta_mib": {"1": 10.0, "2": 10.5}, "check": "flat",
                                "target_met": True},
                     "maml": {"peak_delta_mib": {"1": 20.0, "2": 41.0},
                              "check": "at most linear", "target_met": True}},
        ),
        # adaptation_latency_s, ddp: missing on purpose
    }


def test_report_renders_every_section_and_says_not_run_for_missing_ones():
    md = report.render(fake_results())
    for _, title in report.SECTIONS:
        assert f"## {title}" in md
    assert "make bench" in md and "make bench-quick" in md
    assert "Fake CPU" in md
    # targets, with MET and MISSED
    assert "**MET**" in md and "**MISSED**" in md
    assert "fomaml_k1" in md and "maml_k1" in md
    # the two missing sections
    sections = md.split("\n## ")
    latency = next(s for s in sections if s.startswith("4. "))
    ddp = next(s for s in sections if s.startswith("5. "))
    assert "not run" in latency and "not run" in ddp
    assert "learn2learn: not installable" in md


def test_report_survives_an_errored_and_an_empty_file():
    md = report.render({"meta_step": {"status": "error", "error": "RuntimeError: boom"}})
    assert "**error**: RuntimeError: boom" in md
    assert report.render({}).count("not run") == len(report.SECTIONS)


def test_benchmarks_have_no_import_cycle():
    """memory.py uses peers.py, never the other way round (issue 9)."""
    import ast

    def imports(name):
        tree = ast.parse((BENCH / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
        return found

    local = {p.stem for p in BENCH.glob("*.py")}
    graph = {name: imports(name) & local for name in local}

    def reach(start, seen):
        for nxt in graph[start]:
            if nxt not in seen:
                seen.add(nxt)
                reach(nxt, seen)
        return seen

    for name in local:
        assert name not in reach(name, set()), f"{name} imports itself through {graph[name]}"


def test_meta_step_and_peers_code_paths_run_on_the_toy_brain():
    import meta_step
    import peers

    setup = common.ToySetup()
    res = meta_step.run(True, setup=setup, repeats=1, warmup=0,
                        only={"fomaml_k1", "maml_k1", "reptile_k3"})
    names = {r["name"] for r in res["results"]}
    assert names == {"fomaml_k1", "maml_k1", "reptile_k3"}
    maml = next(r for r in res["results"] if r["name"] == "maml_k1")
    assert "ratio_to_fomaml" in maml and isinstance(maml["target_met"], bool)
    assert res["plain"]["time"]["n"] == 1

    # peers: the meta-gradients of higher and torchopt are exactly ours
    out = peers.run(True, setup=setup, setup_kind="toy", repeats=1, warmup=0)
    assert out["status"] == "ok", out.get("mismatched")
    for row in out["results"]:
        for impl, check in row["gradient_check"].items():
            assert check["match"], (row["algorithm"], impl, check)
        expected = {"ours", "higher", "torchopt"}
        if row["algorithm"] == "maml":
            expected |= {"higher_our_kernels", "torchopt_our_kernels"}
        assert set(row["time"]) == expected
    md = report.render({"peers": dict(out, command="c", machine=MACHINE)})
    assert "our kernels" in md and "**DIFFERENT**" not in md


def test_run_merges_only_the_selected_sections(tmp_path, monkeypatch):
    out = tmp_path / "RESULTS.json"
    old = fake_results()
    out.write_text(json.dumps(old))
    monkeypatch.setitem(bench_run.RUNNERS, "ddp", lambda ctx: {"status": "ok", "results": [],
                                                               "model": "stub"})
    assert bench_run.main(["--quick", "--only", "ddp", "--out", str(out),
                           "--workdir", str(tmp_path / "work")]) == 0
    new = json.loads(out.read_text())
    assert list(new) == list(bench_run.TOP_KEYS)
    assert new["ddp"]["model"] == "stub"
    assert new["ddp"]["command"] == "python benchmarks/run.py --quick --only ddp"
    assert new["meta_step"]["results"] == old["meta_step"]["results"]  # kept
    assert new["adaptation_latency_s"]["status"] == "not run"
    assert (tmp_path / "RESULTS.md").is_file()


def test_unknown_section_is_refused():
    with pytest.raises(SystemExit, match="unknown section"):
        bench_run.parse_only("meta_step,nope")
