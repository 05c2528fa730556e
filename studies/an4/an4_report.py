"""The AN4 study's report: ``docs/studies/an4/results.json`` and ``report.md``.

``python studies/an4/an4_study.py report`` calls :func:`write_report`: it reads the
records the study's steps wrote under ``results/an4_study/`` and rewrites the
sections ``an4_base`` (strong bases, learning curves, MAML/FOMAML cost),
``an4_strategies`` (every strategy from scratch), ``an4_study`` (adaptation: the
k-shot protocol, methods, channels) and ``transfer`` (DANN, distillation,
compression, support-set augmentation). A section without records keeps its
committed figures.
"""

import json
import pathlib
import re

from studies import common

REPO = common.REPO
OUT = REPO / "results" / "an4_study"
DOCS = REPO / "docs" / "studies" / "an4"
#: the report's sections, in order, with their headings
SECTIONS = (
    ("an4_base", "Strong AN4 recognizers (CRDNN-CTC, CRDNN-attention, Transformer)"),
    ("an4_strategies", "Every strategy trains the AN4 recipe"),
    ("an4_adaptation", "Meta-learned vs joint initialisations from a 35-min warm start (earlier design)"),
    ("an4_study", "Adaptation on unseen speakers and channels, meta-learning vs joint, without transcripts"),
    ("transfer", "Transfer add-ons on AN4 (DANN, distillation, compression, augmentation)"),
)
K_MAIN = 5  # the k of the headline figures (5-shot)

ESPNET = ("ESPnet on the same 130 test utterances: CTC only 22.9% WER, hybrid CTC/attention 7.9% "
          "(with a word LM), Transformer with speed perturbation 7.6% without a language model "
          "(GPU training)")
TARGET_WER, MOONSHOT_WER, TARGET_REL = 12.0, 7.6, 0.10


def _records(pattern, root=None):
    root = OUT if root is None else root
    out = {}
    for path in sorted(root.glob(pattern)):
        out[str(path.relative_to(root))] = json.loads(path.read_text())
    return out


def _heldout_roots():
    """``(N, folder)`` of each held-out study (``an4_study.py --heldout N``: ``an4_study_heldoutN``), by N."""
    prefix = OUT.name + "_heldout"
    return sorted((int(p.name.removeprefix(prefix)), p) for p in OUT.parent.glob(prefix + "*")
                  if p.name.removeprefix(prefix).isdigit())


def _pool_text(ev):
    """The evaluation speakers of a record: the 10 test speakers, plus a held-out study's."""
    n = ev.get("heldout", 0)
    if not n:
        return "the 10 AN4 test speakers"
    return (f"{10 + n} unseen speakers: the 10 AN4 test speakers and {n} training speakers left out of "
            "this study's base (`--heldout`)")


def _plot_curves(bases, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for fam, rec in bases.items():
        pts = rec.get("curve") or []
        if pts:
            line = ax.plot([p["minutes"] for p in pts], [p["wer"] for p in pts], marker="o", label=f"{fam} test")
            ax.plot([p["minutes"] for p in pts], [p["dev_wer"] for p in pts], linestyle="--",
                    color=line[0].get_color(), alpha=0.6, label=f"{fam} dev")
            # the final figure: the best-dev checkpoint's test WER at the end of the budget
            ax.plot([rec["train_minutes"]], [rec["test"]["wer"]], marker="*",
                    markersize=12, linestyle="none", color=line[0].get_color())
    ax.axhline(TARGET_WER, color="grey", linewidth=0.8, linestyle=":", label="target 12%")
    ax.set_xlabel("training minutes (one thread, one core)")
    ax.set_ylabel("WER (%)")
    ax.set_ylim(0, 60)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("AN4 speaker-independent WER vs training time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _ci(v, digits=1):
    return "–" if not v or v[0] is None else f"[{v[0]:+.{digits}f}, {v[1]:+.{digits}f}]"


def base_section():
    bases = {pathlib.Path(rel).parent.name: r for rel, r in _records("base/*/record.json").items()}
    costs = _records("cost/*.json")
    if not bases:
        return None
    rows, targets = [], []
    for fam, r in bases.items():
        met = r["test"]["wer"] <= TARGET_WER
        rows.append(f"| {fam} | {r['parameters'] / 1e6:.2f}M | {r['train_minutes']:.0f} | {r['outer_steps']} | "
                    f"{r['epochs']} | **{r['test']['wer']:.1f}** | {r['test']['cer']:.1f} | "
                    f"{'met' if met else 'missed'} |")
        targets.append([f"{fam}: AN4 test WER <= {TARGET_WER:g}%",
                        f"{r['test']['wer']:.1f}%", met])
        targets.append([f"{fam}: moonshot, below ESPnet's {MOONSHOT_WER:g}%", f"{r['test']['wer']:.1f}%",
                        r["test"]["wer"] < MOONSHOT_WER])
    plot = DOCS / "an4_learning_curves.png"
    _plot_curves(bases, plot)
    md = ["Each model trained by the AN4 recipe (`recipes/AN4/train.py`) from scratch with the "
          "`joint` strategy on plain shuffled batches of similar durations, SpeechBrain augmentation "
          "(speed 95/100/105, time and frequency masks) for the epochs of its command, the learning rate "
          "on a cosine over the planned steps; one thread pinned to one core. Minutes: "
          f"{common.CLOCK}. "
          "Test WER/CER of the best-dev-WER checkpoint on the 130 utterances of the 10 test speakers; "
          "nothing was chosen on them. " + ESPNET + ".", "",
          "| model | parameters | training min | outer steps | epochs | test WER | test CER | <= 12% |",
          "|---|---|---|---|---|---|---|---|"] + rows + ["",
          "![learning curves](an4_learning_curves.png)", "",
          "Test WER (solid) and dev WER (dashed) every 10 minutes of training (`curve_every_minutes`); "
          "the star is the table's figure (the best-dev checkpoint, tested at the end of the budget). "
          "A row named `<family>_<tag>` is a variant of that base (its command says how it differs, "
          "e.g. meta-training from scratch instead of joint pretraining).", ""]
    if costs:
        md += ["MAML vs FOMAML, seconds per outer step on one AN4 task (4+4 utterances, one thread, "
               "median of interleaved rounds):", "", "| model | k | FOMAML s | MAML s | MAML / FOMAML |",
               "|---|---|---|---|---|"]
        for r in costs.values():
            md.append(f"| {r['family']} | {r['k']} | {r['median_s']['fomaml']:.2f} | {r['median_s']['maml']:.2f} | "
                      f"{r['ratio_maml_over_fomaml']:.2f}x |")
        md.append("")
    decode = _records("decode/record.json")
    for r in decode.values():
        md += ["Decoding: the same exported base decoded greedily (SpeechBrain's CTC decoding) and with a "
               "beam search restricted to the words of the training transcripts (`--decoder lexicon`: "
               "torchaudio's flashlight lexicon decoder at its default settings, beam 50 and no word score, "
               "no language model), every dev and test utterance. While building it I also looked at beams "
               "10 and 100 and word scores -1 and +1 on the test set (4.3-5.4% WER); none of them is used:", "",
               "| model | lexicon words | dev WER greedy | dev WER lexicon | test WER greedy | test WER lexicon "
               "| test CER greedy / lexicon | decoding CPU s (test, greedy / lexicon) |",
               "|---|---|---|---|---|---|---|---|"]
        for fam, d in r["families"].items():
            g, x = d["greedy"], d["lexicon"]
            md.append(f"| {fam} | {d['words']} | {g['dev']['wer']:.1f} | {x['dev']['wer']:.1f} | "
                      f"{g['test']['wer']:.1f} | **{x['test']['wer']:.1f}** | {g['test']['cer']:.1f} / "
                      f"{x['test']['cer']:.1f} | {g['test']['cpu_seconds']:.0f} / {x['test']['cpu_seconds']:.0f} |")
            targets.append([f"{fam} + lexicon search: moonshot, below ESPnet's {MOONSHOT_WER:g}%",
                            f"{x['test']['wer']:.1f}%", x["test"]["wer"] < MOONSHOT_WER])
        md += [""]
    md += ["Commands:", ""] + [f"- `{r['command']}`" for r in bases.values()] + \
          [f"- `{r['command']}`" for r in costs.values()] + [f"- `{r['command']}`" for r in decode.values()]
    return {"status": "ok", "markdown": "\n".join(md), "targets": targets, "records": bases,
            "costs": costs, "command": "python studies/an4/an4_study.py base ... (see the list)",
            "machine": next(iter(bases.values())).get("machine")}


def _plot_speakers(folder, names, path):
    """Each speaker's 5-shot change against its unadapted WER, every model of an evaluation
    record's ``folder`` in one figure (the models' own ``results.json``); False when none has one."""
    from sb_meta.evaluation.report import plot_task_changes

    per_task = {}
    for name in names:
        res = folder / name / "results.json"
        if res.is_file():
            for task, by_method in json.loads(res.read_text())["per_task"].items():
                if "adapted" in by_method:
                    per_task.setdefault(task, {})[name] = by_method["adapted"]
    if not per_task:
        return False
    plot_task_changes({"per_task": per_task}, path)
    return True


def study_section():
    evals = [(OUT, path, ev) for path, ev in _records("eval/*/record.json").items()]
    evals += [(root, path, ev) for _, root in _heldout_roots() for path, ev in _records("eval/*/record.json", root).items()]
    if not evals:
        return None
    md, targets = [], []
    for root, record_path, ev in evals:
        fam = ev["family"]
        md += [f"**{fam}**: 5-shot adaptation on {_pool_text(ev)} (k support utterances, the "
               f"other {'about ' if ev.get('heldout') else ''}{13}-k as query, {ev['repeats']} draws per speaker and k{_seed_text(ev)}, the same draws for "
               "every model); the adaptation (steps, step size, adapted parameters) chosen per model "
               "on the 6 dev speakers" + _grid_text(ev) + _decoder_text(ev) + ". Paired changes with 95% "
               "bootstrap intervals over "
               "speakers and draws.",
               "", "| model | training | query WER unadapted | 5-shot adapted | change [95% CI] | "
               "relative [95% CI] | speakers worse | chosen on dev |" + (" adapted minus the base unadapted |"
                                                                        if ev.get("vs_base_unadapted") else ""),
               "|---|---|---|---|---|---|---|---|" + ("---|" if ev.get("vs_base_unadapted") else "")]
        for name, summ in ev["summary"].items():
            s5 = summ["adapted"].get(str(K_MAIN))
            if not s5:
                continue
            chosen = _chosen_text(ev["chosen"][name]["method"])
            rel = s5["relative"]
            md.append(f"| {name} | {_training(fam, name, root)} | {s5['base_wer_mean']:.1f} | {s5['wer_mean']:.1f} | "
                      f"{s5['delta_wer_mean']:+.1f} {_ci(s5['delta_ci'])} | {100 * rel:.1f}% "
                      f"[{100 * s5['relative_ci'][0]:.1f}, {100 * s5['relative_ci'][1]:.1f}] | "
                      f"{len(s5['worse_tasks'])}/{s5['tasks']} | {chosen} |" + _vs_base(ev, name))
            excl = s5["relative_ci"][0] is not None and s5["relative_ci"][0] > 0
            targets.append([f"{fam}{_setting(ev)} {name}: 5-shot relative WER reduction >= 10%, CI excluding 0",
                            f"{100 * rel:.1f}% [{100 * s5['relative_ci'][0]:.1f}, {100 * s5['relative_ci'][1]:.1f}]",
                            rel >= TARGET_REL and excl])
        if ev.get("failed"):  # adaptations that failed (e.g. diverged) are not in the means above
            md += ["", "Adaptations that failed on test draws and are left out of the figures above: " + "; ".join(
                f"{name} {len(fs)} ({fs[0]['reason']})" for name, fs in ev["failed"].items()) + "."]
        # the larger pool's speakers one by one, for its main evaluation (seed-0 draws, 3-step grid)
        if ev.get("heldout") and not ev.get("seed") and ev.get("grid", "short") == "short":
            figure = f"an4_heldout{ev['heldout']}_speakers.png"
            if _plot_speakers((root / record_path).parent, list(ev["summary"]), DOCS / figure):
                md += ["", f"Each of the {10 + ev['heldout']} speakers' 5-shot change against its unadapted "
                       f"WER (mean of its draws; below zero adaptation helped): ![per speaker]({figure})"]
        if ev.get("oracle_gate"):
            md += ["", "The ceiling of any rule that keeps or drops the adaptation draw by draw (a guard, a gate): "
                   "an oracle that sees the query transcripts and keeps each model's 5-shot adaptation only on "
                   "the draws where it lowered the query WER (a bound that also profits from noise, not a "
                   "method): " + "; ".join(
                       f"{name} {g['unadapted']:.1f} -> {g['oracle']:.1f} ({100 * g['oracle_relative']:.1f}%, "
                       f"{g['helped']}/{g['n']} draws helped)" for name, g in ev["oracle_gate"].items()) + "."]
        if ev.get("meta_vs_joint"):
            md += ["", "Meta-trained initialisation + its adaptation minus joint initialisation + its "
                   "adaptation, on the same draws (negative: the meta-learner is better):", "",
                   "| model | " + " | ".join(f"k={k}" for k in ev["ks"] if k) + " |",
                   "|---|" + "---|" * len([k for k in ev["ks"] if k])]
            for name, by_k in ev["meta_vs_joint"].items():
                md.append(f"| {name} | " + " | ".join(
                    f"{by_k[str(k)]['delta']:+.1f} {_ci(by_k[str(k)]['delta_ci'])}" for k in ev["ks"] if k) + " |")
                c = by_k[str(K_MAIN)]
                targets.append([f"{fam}{_setting(ev)} {name} beats joint after 5-shot adaptation (CI excludes 0)",
                                f"{c['delta']:+.1f} WER {_ci(c['delta_ci'])}",
                                c["delta_ci"][1] is not None and c["delta_ci"][1] < 0])
        md += ["", f"Command: `{ev['command']}`", ""]
    method_records = [(0, mr) for mr in _records("eval/*/methods_*.json").values()]
    method_records += [(heldout, mr) for heldout, root in _heldout_roots()
                       for mr in _records("eval/*/methods_*.json", root).values()]
    for heldout, mr in method_records:
        grid = "" if mr.get("grid", "short") == "short" else (
            f", every method at the step size and steps of the full update chosen on the {mr['grid']} grid "
            "(LHUC and LoRA at their own step size chosen on dev)")
        unadapted = next((summ[str(K_MAIN)]["base_wer_mean"] for summ in mr["summary"].values()
                          if str(K_MAIN) in summ), None)
        md += [f"Test-time adaptation methods on the {mr['model']} model ({mr['family']}), 5-shot, same draws, "
               f"on {_pool_text({'heldout': heldout})}"
               + (f" (unadapted query WER {unadapted:.1f})" if unadapted is not None else "")
               + f"{grid}{_decoder_text(mr)}:", "",
               "| method | step size, steps | adapted WER | change [95% CI] | relative | speakers worse |",
               "|---|---|---|---|---|---|"]
        for name, summ in mr["summary"].items():
            s5 = summ.get(str(K_MAIN))
            m = mr.get("methods", {}).get(name, {})
            how = f"{m.get('lr') or 'learned'}, {m.get('steps')}" if m else ""
            if _statistics_only(m):
                how = f"statistics, weight {_cmvn_weight(m)}"
            if s5:
                md.append(f"| {name} | {how} | {s5['wer_mean']:.1f} | {s5['delta_wer_mean']:+.1f} {_ci(s5['delta_ci'])} | "
                          f"{100 * s5['relative']:.1f}% | {len(s5['worse_tasks'])}/{s5['tasks']} |")
        md += ["", f"Command: `{mr['command']}`", ""]
    for rel, gr in _records("eval/*/guard*.json").items():
        md += [f"The leave-one-out guard (`Method(guard=True)`, `sb_meta.adapt.safeguard`): the dev-chosen adaptation "
               f"({gr['grid']} grid) of each model, and the same adaptation kept only when, adapting on 4 of the 5 "
               "support utterances and decoding the fifth in turn, it removed more word errors than it added; "
               f"5-shot, the test draws of `evaluate` ({gr['repeats']} per speaker){_decoder_text(gr)}:", "",
               "| model | chosen on dev | unadapted | adapted | change [95% CI] | worse | guarded | change [95% CI] | "
               "relative [95% CI] | worse | adaptations kept |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, g in gr["models"].items():
            a, b = g["summary"]["adapted"].get(str(K_MAIN)), g["summary"]["adapted+guard"].get(str(K_MAIN))
            if not (a and b):
                continue
            m = g["method"]
            md.append(f"| {name} | lr {m.get('lr')}, {m.get('steps')} steps | {a['base_wer_mean']:.1f} | {a['wer_mean']:.1f} | "
                      f"{a['delta_wer_mean']:+.1f} {_ci(a['delta_ci'])} | {len(a['worse_tasks'])}/{a['tasks']} | "
                      f"{b['wer_mean']:.1f} | {b['delta_wer_mean']:+.1f} {_ci(b['delta_ci'])} | {100 * b['relative']:.1f}% "
                      f"[{100 * b['relative_ci'][0]:.1f}, {100 * b['relative_ci'][1]:.1f}] | "
                      f"{len(b['worse_tasks'])}/{b['tasks']} | {g['kept']}/{g['checked']} |")
            targets.append([f"{gr['family']}{_setting(gr)} {name} + guard: 5-shot relative WER reduction >= 10%, CI excluding 0",
                            f"{100 * b['relative']:.1f}% [{100 * b['relative_ci'][0]:.1f}, {100 * b['relative_ci'][1]:.1f}]",
                            b["relative"] >= TARGET_REL and b["relative_ci"][0] is not None and b["relative_ci"][0] > 0])
        md += ["", f"Command: `{gr['command']}`", ""]
    channel_records = {**_records("eval/*/channels.json"), **_records("eval/*/channels@*.json")}  # not selections
    for rel, ch in sorted(channel_records.items()):
        draws = f", {ch['repeats']} draws per task" if ch.get("repeats") else ""
        md += ["(speaker, channel) tasks on the AN4 test speakers (every test utterance passed through each "
               f"channel{draws}{_seed_text(ch)}): query WER unadapted and after 5-shot adaptation (chosen per model "
               "on the dev speakers' (speaker, channel) tasks), the paired change with its 95% interval over the "
               "channel's 10 speakers and draws, and the share of the channel's WER loss (over the same model's "
               "clean WER) that adaptation wins back" + _decoder_text(ch) + ". `base` saw clean speech only; "
               "the others had more of their strategy from the base (their commands say how many epochs) on episodes of (speaker, channel) "
               "tasks of the training speakers:", "",
               "| model | channel | unadapted | 5-shot adapted | change [95% CI] | speakers worse | won back |",
               "|---|---|---|---|---|---|---|"]
        other_grid = ch.get("grid", "short") != "short"  # name the adaptation chosen from another grid
        rows = [(f"{name} ({_chosen_text(r['method'])})" if other_grid else name, r["per_channel"])
                for name, r in ch["results"].items()]
        rows += [(f"{name} + cmvn, no transcripts (weight {_cmvn_weight(r['cmvn'])})",
                  r["per_channel_cmvn"]) for name, r in ch["results"].items() if r.get("per_channel_cmvn")]
        for name, per_channel in rows:
            for c in ch["channels"]:
                v = per_channel[c]
                if v.get("unadapted") is None:
                    continue
                won = "" if v.get("won_back") is None else f"{100 * v['won_back']:.0f}%"
                change = f"{v['delta']:+.1f} {_ci(v['delta_ci'])}" if "delta" in v else ""
                worse = f"{len(v['worse_tasks'])}/{v['tasks']}" if "tasks" in v else ""
                md.append(f"| {name} | {c} | {v['unadapted']:.1f} | {v['adapted']:.1f} | {change} | {worse} | {won} |")
        md += ["", f"Command: `{ch['command']}`", ""]
    for rel, un in _records("eval/*/unsup_channels.json").items():
        md += [f"Adaptation without transcripts ({un['family']} base): each channel of the test set pooled over "
               "its 10 speakers is a task (130 utterances), k unlabelled support utterances, the rest as query, "
               f"{un['repeats']} draws per channel and k; each mode's step size and steps chosen on the dev "
               "speakers' channel tasks at k = 20:", "",
               "| mode (chosen on dev) | k | unadapted | adapted | change [95% CI] | relative | draws worse | "
               "per channel |", "|---|---|---|---|---|---|---|---|"]
        for name, summ in un["summary"].items():
            m = un["chosen"].get(name.replace("unsup-", ""), {}).get("method", {})
            label = (f"{name} (no step: input statistics of the support, weight {_cmvn_weight(m)})"
                     if _statistics_only(m)
                     else f"{name} (lr {m.get('lr')}, <= {m.get('steps')} steps)")
            for k in un["ks"][1:]:
                s = summ.get(str(k))
                if s:
                    per = un.get("per_task", {})
                    channels = "; ".join(f"{t} {per[t][name][str(k)]['base_wer_mean']:.1f} -> "
                                         f"{per[t][name][str(k)]['wer_mean']:.1f}"
                                         for t in per if str(k) in per[t].get(name, {}))
                    md.append(f"| {label} | {k} | {s['base_wer_mean']:.1f} | {s['wer_mean']:.1f} | "
                              f"{s['delta_wer_mean']:+.1f} {_ci(s['delta_ci'])} | {100 * s['relative']:.1f}% | "
                              f"{s['worse_draws']}/{s['n']} | {channels} |")
        md += ["", f"Command: `{un['command']}`", ""]
    return {"status": "ok", "markdown": "\n".join(md), "targets": targets,
            "machine": evals[0][2].get("machine"),
            "command": "python studies/an4/an4_study.py evaluate / methods / channels / unsup (see above)"}


def _grid_text(ev):
    """Which dev candidates an evaluation chose from (the long grid is named: it costs more)."""
    if ev.get("grid", "short") == "short":
        return ""
    names = sorted({c for v in ev["chosen"].values() for c in v["selection"].get("candidates", {})})
    return f" among the {ev['grid']} grid's candidates ({', '.join(names)})"


def _vs_base(ev, name):
    """The table cell: ``name`` adapted minus the base unadapted on the same 5-shot queries."""
    if not ev.get("vs_base_unadapted"):
        return ""
    c = ev["vs_base_unadapted"].get(name, {}).get(str(K_MAIN))
    return f" {c['delta']:+.1f} {_ci(c['delta_ci'])} |" if c else " |"


def _setting(ev):
    """An evaluation's grid and decoder where not the defaults, for target names."""
    parts = []
    if ev.get("grid", "short") != "short":
        parts.append(f"{ev['grid']} grid")
    if ev.get("decoder", "greedy") != "greedy":
        parts.append(f"{ev['decoder']} decoding, {ev['repeats']} draws")
    if ev.get("seed"):
        parts.append(f"draw seed {ev['seed']}")
    if ev.get("heldout"):
        parts.append(f"{10 + ev['heldout']} speakers with {ev['heldout']} held out")
    return f" ({', '.join(parts)})" if parts else ""


def _seed_text(ev):
    """Which draws an evaluation used, when not the seed-0 ones that the other tables share."""
    return f" (draw seed {ev['seed']}: other draws than the tables without a seed)" if ev.get("seed") else ""


def _decoder_text(ev):
    """How an evaluation decoded, when not greedily."""
    if ev.get("decoder", "greedy") == "greedy":
        return ""
    return ("; every model decoded with a beam search restricted to the words of the training transcripts "
            "(`--decoder lexicon`, no language model)")


def _chosen_text(method):
    """A dev-chosen adaptation in words, for the tables."""
    if _statistics_only(method):
        return f"input statistics of the support (weight {_cmvn_weight(method):g}), no transcripts"
    scope = ",".join(method["adapt_params"]) if method.get("adapt_params") else "all"
    adapters = [a for a in method.get("addons") or [] if a in ("lhuc", "lora", "houlsby")]
    if adapters:  # plugins/peft.py's add-ons (named here: the report loads no plugin): only they adapt
        scope = "+".join(adapters) + " only"
    text = f"{method['strategy']}, lr {method.get('lr') or 'learned'}, {method['steps']} steps, {scope}"
    return (f"cmvn {_cmvn_first(method):g}, then " + text) if _cmvn_first(method) else text


def _cmvn_weight(method):
    """The blend weight of a ``cmvn`` method record (the cmvn test-time method's default, 1, when it set none)."""
    config = method.get("addon_config") or method.get("unsupervised_config") or {}
    return config.get("cmvn_weight", 1.0)


def _statistics_only(method):
    """Whether a method record re-estimates the input statistics alone (no transcript, no step): the
    ``cmvn`` test-time method without its update (records before it was an add-on: ``unsupervised: cmvn``)."""
    if method.get("unsupervised") == "cmvn":
        return True
    return "cmvn" in (method.get("addons") or []) and not (method.get("addon_config") or {}).get("cmvn_update")


def _cmvn_first(method):
    """The weight of the input statistics re-estimated before a method's update, or None."""
    if method.get("cmvn"):
        return method["cmvn"]
    config = method.get("addon_config") or {}
    return _cmvn_weight(method) if "cmvn" in (method.get("addons") or []) and config.get("cmvn_update") else None


def _training(fam, name, root=None):
    """Minutes and outer steps of a meta-trained model (its record in ``root``), for the tables."""
    root = OUT if root is None else root
    path = root / "meta" / fam / name / "record.json"
    if name == "base" or name.startswith("base_"):
        path = root / "base" / (fam + name[4:]) / "record.json"
    if not path.is_file():
        return ""
    return _training_record(json.loads(path.read_text()))


def transfer_section():
    """Issue 11's evidence: DANN vs none, a distilled student vs one trained alone,
    int8 / pruned vs float, support-set augmentation vs none (from ``methods``)."""
    dann = _records("transfer/dann.json")
    distill = _records("transfer/distill.json")
    compress = _records("transfer/compression.json")
    methods = _records("eval/*/methods_*.json")
    if not (dann or distill or compress or methods):
        return None
    md, targets = [], []
    for d in dann.values():
        rows = [f"| {n} | {_training_record(r)} | {r['test']['wer']:.1f} | {r['test']['cer']:.1f} |"
                for n, r in d["records"].items()]
        md += ["**DANN over speakers** (gradient reversal + a speaker classifier on the encoder output, "
               "`meta_addons=[dann] dann_column=spk_id`), `joint` training from the CTC base at equal "
               "budgets; WER on the unseen test speakers:", "",
               "| run | training | test WER | test CER |", "|---|---|---|---|", *rows, "",
               f"Command: `{d['command']}`", ""]
    for d in distill.values():
        t = d["teacher"]
        rows = [f"| teacher (the base) | {t['parameters'] / 1e6:.2f}M | | {t['test']['wer']:.1f} | {t['test']['cer']:.1f} |"]
        rows += [f"| {n} | {r['parameters'] / 1e6:.2f}M ({r['parameters'] / t['parameters']:.0%}) | "
                 f"{_training_record(r)} | {r['test']['wer']:.1f} | {r['test']['cer']:.1f} |"
                 for n, r in d["records"].items()]
        md += ["**Distillation**: a student CRDNN with at most a third of the teacher's parameters, from "
               "scratch, with and without frame-level CTC posterior distillation from the base "
               "(`meta_addons=[distill]`), equal budgets:", "",
               "| model | parameters | training | test WER | test CER |", "|---|---|---|---|---|", *rows, "",
               f"Command: `{d['command']}`", ""]
        if "student_distilled" in d["records"]:
            gap = d["records"]["student_distilled"]["test"]["wer"] - t["test"]["wer"]
            alone = d["records"].get("student_alone", {}).get("test", {}).get("wer")
            targets.append(["distilled student (<= 1/3 of the teacher's parameters): WER gap to the teacher",
                            f"{gap:+.1f} points" + (f" (student alone: {alone - t['test']['wer']:+.1f})"
                                                    if alone is not None else ""), None])
    for c in compress.values():
        from sb_meta_plugins.compress import report_table

        md += ["**Compression** of the CTC base (dynamic int8 quantization of Linear/LSTM layers; "
               "global magnitude pruning made permanent): size on disk, CPU real-time factor "
               "(one thread) and test WER:", "", report_table(c["rows"]).rstrip(), "",
               f"Command: `{c['command']}`", ""]
    for mr in methods.values():
        rows = []
        for name, summ in mr["summary"].items():
            if not name.endswith("+aug"):
                continue
            plain = mr["summary"].get(name[:-4], {}).get(str(K_MAIN))
            aug = summ.get(str(K_MAIN))
            if plain and aug:
                rows.append(f"| {name[:-4]} | {plain['delta_wer_mean']:+.1f} {_ci(plain['delta_ci'])} | "
                            f"{aug['delta_wer_mean']:+.1f} {_ci(aug['delta_ci'])} |")
        if rows:
            md += ["**Support-set augmentation** (`augment` add-on in the adapt phase: speed perturbation "
                   "and masks on the 5 support utterances) vs none: the 5-shot WER change of each "
                   f"method on the {mr['model']} model ({mr.get('grid', 'short')} adaptation grid), same draws:", "",
                   "| method | without | with augmentation |", "|---|---|---|", *rows, "",
                   f"Command: `{mr['command']}`", ""]
    measured = [r.get("machine") for group in (dann, distill, compress, methods) for r in group.values()]
    return {"status": "ok", "markdown": "\n".join(md), "targets": targets,
            "machine": next((m for m in measured if m), None),
            "command": "python studies/an4/an4_study.py dann / distill / compress / methods (see above)"}


def _training_record(r):
    """The model's training: epochs, outer steps and minutes, and (read from its command) an
    inner loop restricted to LHUC scales or ``adapt_params``, and a checkpoint kept on the
    adapted dev WER (``valid_adapt``)."""
    command, how = r.get("command", ""), ""
    if "--meta_addons=[lhuc]" in command:
        how += ", inner loop on LHUC scales"
    adapted = re.search(r"--adapt_params=\[([^\]]*)\]", command)
    if adapted:
        how += f", inner loop on {adapted.group(1)}"
    if "--valid_adapt=True" in command:
        how += ", kept on the adapted dev WER"
    return f"{r['epochs']} epochs, {r['outer_steps']} steps, {r['train_minutes']:.0f} min" + how


def strategies_section():
    """Every strategy from scratch for a few epochs (``an4_study.py strategies``)."""
    path = OUT / "strategies" / "record.json"
    if not path.is_file():
        return None
    rec = common.read_json(path)
    rows = [f"| {s} | {' -> '.join(f'{x:.2f}' for x in r['train_loss_per_epoch'])} | "
            f"{'yes' if r['loss_falls'] else 'no'} | {r['train_minutes']:.1f} |" for s, r in rec["runs"].items()]
    falls = sum(r["loss_falls"] for r in rec["runs"].values())
    return {"status": "ok", "command": rec["command"], "machine": rec["machine"],
            "markdown": "\n".join([
                f"Every strategy trained by the AN4 recipe from scratch for {rec['epochs']} epochs (one epoch: "
                "one pass over the training speakers in episodes of 4): does the training loss fall?", "",
                "| strategy | train loss per epoch | falls | training min |", "|---|---|---|---|", *rows, "",
                f"Command: `{rec['command']}`"]),
            "targets": [["every strategy's training loss falls on AN4", f"{falls}/{len(rec['runs'])}",
                         falls == len(rec["runs"])]]}


def finish_section(sec):
    """Commands as a user types them (paths relative to the repository, AN4 as $SBMETA_AN4_ROOT)."""
    sec["markdown"] = common.display(sec["markdown"])
    sec.setdefault("mode", "full")
    return sec


def write_report():
    """Rewrite the sections that have records in ``docs/studies/an4/results.json``, keep the
    others, and render ``report.md``."""
    path = DOCS / "results.json"
    results = common.read_json(path) if path.is_file() else {}
    for key, make in (("an4_base", base_section), ("an4_strategies", strategies_section),
                      ("an4_study", study_section), ("transfer", transfer_section)):
        sec = make()
        if sec is not None:
            results[key] = finish_section(sec)
    common.write_report(results, DOCS, "AN4 study: results", INTRO, SECTIONS)
    print(f"wrote {path} and {DOCS / 'report.md'}")


INTRO = ("Every figure of the AN4 study (`studies/an4/`), with the command that produced it. "
         "The write-up is [README.md](README.md); sections run on earlier code name it.")
