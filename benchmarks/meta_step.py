"""Seconds per outer step (``MetaBrain.fit_batch`` on one episode) vs plain training.

The reference is plain SpeechBrain training on the same utterances: the
``sb.Brain.fit_batch`` semantics (forward + backward + SpeechBrain's
``optimizers_step``) on the task's support batch, i.e. exactly the batch of
one inner step. An outer step with ``k`` inner steps does ``k + 1``
forward/backward passes (``k`` on the support batch, 1 on the query batch), so
it is compared with ``k + 1`` plain steps. The query batch is generally not
as long as the support batch, so a plain step on the query batch is timed too
and a "matched" reference ``k * plain(support) + plain(query)`` is reported
beside the one the targets use.

Every configuration has its own brain built from the same YAML (same initial
weights) and runs on the same episode; configurations are timed interleaved
(one call of each per round) after untimed warm-up rounds, and medians are
reported with all raw samples.

Targets: FOMAML <= 1.15 x (k + 1) plain steps; MAML <= 3 x FOMAML at the same k.
"""

import speechbrain as sb
import torch

import common

FOMAML_TARGET = 1.15
MAML_TARGET = 3.0


def configs(quick):
    """(name, yaml overrides, k) of every timed configuration."""
    out = []
    for k in (1, 3) if quick else (1, 3, 5):
        out.append((f"fomaml_k{k}", {"meta_strategy": "fomaml", "inner_steps": k}, k))
    for k in (1,) if quick else (1, 3):
        out.append((f"maml_k{k}", {"meta_strategy": "maml", "inner_steps": k}, k))
    out.append(("reptile_k3", {"meta_strategy": "reptile", "inner_steps": 3}, 3))
    out.append(("metasgd_k1_first_order",
                {"meta_strategy": "metasgd", "inner_steps": 1, "first_order": True}, 1))
    out.append(("metasgd_k1_second_order",
                {"meta_strategy": "metasgd", "inner_steps": 1, "first_order": False}, 1))
    return out


def run(quick, setup=None, setup_kind="an4", workdir=None, repeats=None, warmup=None,
        meta_batch_tasks=1, k_shot=4, only=None):
    """The ``meta_step`` section (``only``: restrict to these configuration names)."""
    setup = setup or common.make_setup(setup_kind, workdir)
    repeats = repeats or (3 if quick else 7)
    if warmup is None:
        warmup = 1 if quick else 2
    shape = dict(meta_batch_tasks=meta_batch_tasks, k_support=k_shot, k_query=k_shot)
    plain_brain = setup.brain(meta_strategy="fomaml", inner_steps=1, **shape)
    episode = setup.episode(plain_brain, seed=0, meta_batch_tasks=meta_batch_tasks)
    task = episode.tasks[0]
    support, query = task.support, task.query if task.query is not None else task.support

    fns = {
        # sb.Brain.fit_batch itself, not MetaBrain's: plain SpeechBrain training
        "plain": lambda: sb.Brain.fit_batch(plain_brain, support),
        "plain_query": lambda: sb.Brain.fit_batch(plain_brain, query),
    }
    cfgs = [c for c in configs(quick) if only is None or c[0] in only]
    brains = {}
    for name, overrides, _ in cfgs:
        brain = setup.brain(**overrides, **shape)
        brains[name] = brain
        fns[name] = (lambda b: lambda: b.fit_batch(episode))(brain)
    n_params = sum(p.numel() for p in plain_brain.modules.parameters() if p.requires_grad)
    samples = common.round_robin(fns, repeats, warmup)
    times = {name: common.summarize(s) for name, s in samples.items()}

    plain = times["plain"]["median_s"]
    plain_q = times["plain_query"]["median_s"]
    rows = []
    for name, overrides, k in cfgs:
        t = times[name]["median_s"]
        strategy = overrides["meta_strategy"]
        # Reptile's k steps cycle over support and query; it has no extra outer pass
        passes = k if strategy == "reptile" else k + 1
        matched = (
            sum(plain if i % 2 == 0 else plain_q for i in range(k))
            if strategy == "reptile"
            else k * plain + plain_q
        )
        row = {
            "name": name,
            "strategy": strategy,
            "inner_steps": k,
            "first_order": brains[name].strategy.first_order,
            "median_s": t,
            "plain_passes": passes,
            "ratio_to_plain": t / (passes * plain),
            "ratio_to_plain_matched": t / matched,
            "time": times[name],
        }
        if strategy == "fomaml":
            row["target"] = f"<= {FOMAML_TARGET} x (k+1) plain steps"
            row["target_met"] = row["ratio_to_plain"] <= FOMAML_TARGET
        rows.append(row)
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        if row["strategy"] == "maml":
            fo = by_name.get(f"fomaml_k{row['inner_steps']}")
            if fo is not None:
                row["ratio_to_fomaml"] = row["median_s"] / fo["median_s"]
                row["target"] = f"<= {MAML_TARGET} x FOMAML at the same k"
                row["target_met"] = row["ratio_to_fomaml"] <= MAML_TARGET
        if row["name"] == "metasgd_k1_second_order" and "metasgd_k1_first_order" in by_name:
            row["ratio_to_first_order"] = (
                row["median_s"] / by_name["metasgd_k1_first_order"]["median_s"]
            )
    return {
        "status": "ok",
        "model": setup.name,
        "trainable_parameters": n_params,
        "episode": common.episode_shape(episode),
        "meta_batch_tasks": meta_batch_tasks,
        "k_support": k_shot,
        "k_query": k_shot,
        "inner_lr": float(plain_brain.meta_config["inner_lr"]),
        "repeats": repeats,
        "warmup_rounds": warmup,
        "torch_threads": torch.get_num_threads(),
        "plain": {
            "what": "sb.Brain.fit_batch (forward + backward + optimizers_step) on the support batch",
            "median_s": plain,
            "time": times["plain"],
            "query_batch": times["plain_query"],
        },
        "targets": {
            "fomaml": f"<= {FOMAML_TARGET} x (k+1) plain steps",
            "maml": f"<= {MAML_TARGET} x FOMAML at the same k",
        },
        "results": rows,
    }
