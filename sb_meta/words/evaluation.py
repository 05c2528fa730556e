"""N-way k-shot evaluation of word models, with a 95% confidence interval over episodes.

An episode draws N distinct classes and, for each, ``k_shot`` support and
``n_query`` disjoint query recordings (:func:`draw_episodes`: independent
draws, a function of the seed). The
head is fitted on the support embeddings and classifies the queries; an
episode's accuracy is the fraction of its queries classified right. The
encoder is fixed at test time for every head, so each recording is embedded
once and the episodes only refit heads.

The interval is the normal one of the few-shot literature:
``mean +- 1.96 * std / sqrt(episodes)`` (sample standard deviation).

Example
-------
>>> from sb_meta.words.heads import PrototypeHead
>>> g = torch.Generator().manual_seed(0)
>>> centres = torch.randn(6, 4, generator=g) * 3
>>> emb = torch.cat([c + 0.1 * torch.randn(8, 4, generator=g) for c in centres])
>>> labels = [f"w{i}" for i in range(6) for _ in range(8)]
>>> accs = episode_accuracies(emb, labels, PrototypeHead(4), n_way=5, k_shot=1, n_query=3, episodes=20)
>>> summary = confidence_interval(accs)
>>> summary["episodes"], summary["mean"]
(20, 1.0)
"""

import math

import torch

__all__ = ["draw_episodes", "episode_accuracies", "confidence_interval", "evaluate_word_model", "format_results"]


def confidence_interval(accuracies):
    """``{"mean", "ci95", "std", "episodes"}`` of per-episode accuracies.

    Example
    -------
    >>> confidence_interval([0.5, 1.0, 0.75, 0.75])
    {'mean': 0.75, 'ci95': 0.2, 'std': 0.2041, 'episodes': 4}
    """
    n = len(accuracies)
    if n == 0:
        raise ValueError("no episode to summarise")
    mean = sum(accuracies) / n
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / (n - 1)) if n > 1 else 0.0
    return {"mean": round(mean, 4), "ci95": round(1.96 * std / math.sqrt(n), 4),
            "std": round(std, 4), "episodes": n}


def draw_episodes(labels, n_way, k_shot, n_query, episodes, seed=0):
    """``episodes`` N-way k-shot episodes over recordings labelled ``labels``.

    Each episode draws ``n_way`` distinct classes uniformly, then for each
    ``k_shot + n_query`` distinct recordings (the first ``k_shot`` are the
    support): episodes are independent draws, a function of ``seed`` only.
    Classes with fewer than ``k_shot + n_query`` recordings are never drawn.

    Returns
    -------
    list of (support, query)
        Index lists, class by class (``support[c]`` and ``query[c]`` for class ``c``).

    Example
    -------
    >>> eps = draw_episodes(["a", "a", "b", "b", "c", "c"], n_way=2, k_shot=1, n_query=1, episodes=3)
    >>> len(eps), [len(s) for s in eps[0][0]], [len(q) for q in eps[0][1]]
    (3, [1, 1], [1, 1])
    """
    import random

    by_class = {}
    for i, w in enumerate(labels):
        by_class.setdefault(str(w), []).append(i)
    need = k_shot + n_query
    eligible = sorted(w for w, ids in by_class.items() if len(ids) >= need)
    if len(eligible) < n_way:
        raise ValueError(
            f"{n_way}-way {k_shot}-shot episodes with {n_query} queries per class need {n_way} classes "
            f"with {need} recordings each; the data has {len(eligible)} (of {len(by_class)} classes)"
        )
    rng = random.Random(f"sb-meta-words-episodes-{seed}-{n_way}-{k_shot}-{n_query}")
    out = []
    for _ in range(int(episodes)):
        classes = rng.sample(eligible, n_way)
        picks = [rng.sample(by_class[w], need) for w in classes]
        out.append(([p[:k_shot] for p in picks], [p[k_shot:] for p in picks]))
    return out


def episode_accuracies(embeddings, labels, head, n_way=5, k_shot=1, n_query=15, episodes=600, seed=0):
    """Accuracy of ``head`` on each of ``episodes`` N-way k-shot episodes (:func:`draw_episodes`).

    Arguments
    ---------
    embeddings : torch.Tensor
        ``[n, dim]``, one per recording.
    labels : list of str
        The class (word) of each recording.
    head : sb_meta.words.heads.WordHead
        Fitted on each episode's support set (its enrolled state is untouched).
    n_way, k_shot, n_query : int
        Episode shape.
    episodes : int
    seed : int
        Seed of the episodes.

    Returns
    -------
    list of float
    """
    if len(labels) != embeddings.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings but {len(labels)} labels")
    accs = []
    was_training = head.training
    head.eval()
    try:
        for support, query in draw_episodes(labels, n_way, k_shot, n_query, episodes, seed):
            s_idx = [i for ids in support for i in ids]
            q_idx = [i for ids in query for i in ids]
            s_lab = torch.tensor([c for c, ids in enumerate(support) for _ in ids], device=embeddings.device)
            q_lab = torch.tensor([c for c, ids in enumerate(query) for _ in ids])
            with torch.no_grad():
                state = head.fit(embeddings[s_idx], s_lab, n_way)
                pred = head.scores(embeddings[q_idx], state).argmax(-1).cpu()
            accs.append(float((pred == q_lab).float().mean()))
    finally:
        head.train(was_training)
    return accs


def evaluate_word_model(model, rows, n_way=5, shots=(1, 5), n_query=15, episodes=600, seed=0,
                        allow_seen_classes=False, batch_size=16):
    """N-way k-shot accuracy of a :class:`~sb_meta.words.model.WordModel` on manifest rows.

    Arguments
    ---------
    model : sb_meta.words.model.WordModel
    rows : list of dict
        Manifest rows with ``ID``, ``wav``, ``start``, ``stop`` and ``word``.
    n_way : int
    shots : sequence of int
    n_query : int
    episodes : int
    seed : int
    allow_seen_classes : bool
        Evaluating on classes the encoder was trained on is refused unless True.
    batch_size : int

    Returns
    -------
    dict
        ``{"n_way", "n_query", "classes", "recordings", "results": {k: confidence_interval}}``.
    """
    words = sorted({r["word"] for r in rows})
    seen = sorted(set(words) & set(model.train_classes))
    if seen and not allow_seen_classes:
        raise ValueError(
            f"the evaluation data holds {len(seen)} class(es) the model was trained on ({seen[:5]}); "
            "few-shot evaluation is on new classes (pass allow_seen_classes=True / "
            "--allow-seen-classes to evaluate anyway)"
        )
    audio = [{"file": r["wav"], "start": r["start"], "stop": r["stop"]} if r.get("stop") not in (None, "")
             else r["wav"] for r in rows]
    emb = model.embed(audio, batch_size=batch_size)
    labels = [r["word"] for r in rows]
    head = model.head
    results = {}
    for k in shots:
        accs = episode_accuracies(emb, labels, head, n_way, int(k), n_query, episodes, seed)
        results[int(k)] = confidence_interval(accs)
    return {"n_way": n_way, "n_query": n_query, "classes": len(words), "recordings": len(rows),
            "strategy": model.strategy, "head": type(head).__name__, "results": results}


def format_results(report):
    """One line per shot: ``5-way 1-shot: 63.2% +- 1.1 (600 episodes)``."""
    lines = []
    for k, r in report["results"].items():
        lines.append(f"{report['n_way']}-way {k}-shot: {100 * r['mean']:.1f}% +- {100 * r['ci95']:.1f} "
                     f"(95% CI, {r['episodes']} episodes of {report['n_query']} queries per class; "
                     f"{report['classes']} classes, {report['recordings']} recordings)")
    return "\n".join(lines)
