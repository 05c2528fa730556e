"""The meta keys: what a recipe's hparams say about meta-learning.

:data:`META_KEYS` lists every key the core reads (``meta_strategy``,
``inner_steps``, ``k_support``...), identical in YAML and on the command line,
with its default; :data:`META_KEY_HELP` says in one line what each means, and
:func:`meta_keys_table` turns both into the documentation's table.
:class:`MetaConfig` reads them from a recipe's hparams, with the defaults, and
checks their values. :mod:`sb_meta.strategy` re-exports these names.
"""

import difflib

from sb_meta.options import did_you_mean

__all__ = ["META_KEYS", "META_KEY_HELP", "MetaConfig", "meta_keys_table"]

#: Configuration keys, identical in YAML and on the command line, with their defaults.
META_KEYS = {
    "meta_strategy": "fomaml",
    "inner_steps": 1,
    "inner_lr": 0.05,
    "first_order": None,  # None: the strategy's own default
    "meta_batch_tasks": 4,
    "k_support": 4,
    "k_query": 4,
    "task_column": "spk_id",
    "adapt_params": None,  # None: the strategy's own default
    "support_seconds": None,
    "episodes_per_epoch": None,
    "outer_joint_weight": 0.0,
    "meta_addons": [],
    "plugins": [],
    "train_budget_minutes": None,
    "train_budget_clock": "wall",
    "valid_adapt": False,
    "plain_batches": False,
}

#: One line per meta key (the documentation's table is checked against this).
META_KEY_HELP = {
    "meta_strategy": "the learning algorithm (`sb-meta plugins` lists them)",
    "inner_steps": "gradient steps of the inner loop",
    "inner_lr": "inner-loop step size (Meta-SGD: initial value)",
    "first_order": "drop second-order terms; `null` = the strategy's default",
    "meta_batch_tasks": "tasks per episode (one outer step)",
    "k_support": "support utterances per task",
    "k_query": "query utterances per task",
    "task_column": "manifest column whose values are tasks (`spk_id`, `lang`, `accent`...)",
    "adapt_params": "name patterns of the parameters the inner loop adapts, e.g. `[ctc_lin.*]`",
    "support_seconds": "support by duration budget instead of `k_support`",
    "episodes_per_epoch": "outer steps per epoch (`null`: one pass over the tasks)",
    "outer_joint_weight": "adds this x the joint loss of the unadapted model on each task to the meta-gradient (gradient strategies)",
    "meta_addons": "add-ons to activate, in order",
    "plugins": "extra plugin modules or `.py` files",
    "train_budget_minutes": "stop training after this many minutes of training (validation excluded)",
    "train_budget_clock": "`wall` clock, or `cpu` time of the process (fair budgets on a shared machine)",
    "valid_adapt": "validate adapted models: each validation task adapts on `k_support` utterances, the rest are scored (the kept checkpoint is the best after adaptation)",
    "plain_batches": "train on ordinary shuffled batches (`train_dataloader_opts`) instead of episodes, for strategies that have a `batch_backward` (`joint`, `finetune`)",
}


def meta_keys_table():
    """The documentation's table of meta keys, generated from :data:`META_KEYS` and
    :data:`META_KEY_HELP` (a test keeps docs/meta-training.md equal to it).

    Example
    -------
    >>> print(meta_keys_table().splitlines()[2])
    | `meta_strategy` | the learning algorithm (`sb-meta plugins` lists them) | `fomaml` |
    """

    def fmt(value):
        if value is None:
            return "`null`"
        if isinstance(value, str):
            return f"`{value}`"
        return f"`{value}`" if not isinstance(value, list) else f"`{value}`".replace("'", "")

    rows = ["| key | meaning | default |", "| --- | --- | --- |"]
    rows += [f"| `{k}` | {META_KEY_HELP[k]} | {fmt(v)} |" for k, v in META_KEYS.items()]
    return "\n".join(rows)


def _number(value):
    """``value`` as a float, NaN when it is not a number (so every range check fails)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class MetaConfig(dict):
    """The meta-learning configuration read from a recipe's hparams.

    Missing keys take the defaults of :data:`META_KEYS`.

    Example
    -------
    >>> cfg = MetaConfig.from_hparams({"meta_strategy": "maml", "inner_steps": 3, "lr": 1.0})
    >>> cfg.meta_strategy, cfg.inner_steps, cfg.k_support
    ('maml', 3, 4)
    >>> MetaConfig.from_hparams({"inner_step": 3})
    Traceback (most recent call last):
    ...
    KeyError: "unknown key 'inner_step' (did you mean 'inner_steps'?); meta keys are: ..."
    """

    __getattr__ = dict.__getitem__

    @classmethod
    def from_hparams(cls, hparams):
        hp = hparams if isinstance(hparams, dict) else vars(hparams)
        for key in hp:
            if key in META_KEYS:
                continue
            hint = did_you_mean(key, META_KEYS)
            if hint and difflib.get_close_matches(key, list(META_KEYS), n=1, cutoff=0.85):
                raise KeyError(
                    f"unknown key {key!r}{hint}; meta keys are: {', '.join(META_KEYS)}"
                )
        cfg = cls({k: hp.get(k, v) for k, v in META_KEYS.items()})
        for key in ("inner_steps", "meta_batch_tasks", "k_support", "k_query"):
            if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 0:
                raise ValueError(f"{key} must be a non-negative integer, got {cfg[key]!r}")
        if cfg["meta_batch_tasks"] < 1:
            raise ValueError("meta_batch_tasks must be >= 1")
        if not _number(cfg["inner_lr"]) > 0:
            raise ValueError(f"inner_lr must be a number > 0, got {cfg['inner_lr']!r}")
        for key in ("meta_addons", "plugins"):
            value = cfg[key] or []
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            cfg[key] = list(value)
        anchor = _number(cfg["outer_joint_weight"] or 0.0)
        if not anchor >= 0:
            raise ValueError(f"outer_joint_weight must be a number >= 0, got {cfg['outer_joint_weight']!r}")
        cfg["outer_joint_weight"] = anchor
        for key in ("valid_adapt", "plain_batches"):
            if not isinstance(cfg[key], bool):
                raise ValueError(f"{key} must be True or False, got {cfg[key]!r}")
        if cfg["train_budget_clock"] not in ("wall", "cpu"):
            raise ValueError(f"train_budget_clock must be 'wall' or 'cpu', got {cfg['train_budget_clock']!r}")
        budget = cfg["train_budget_minutes"]
        if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
            raise ValueError(f"train_budget_minutes must be a number > 0 or null, got {budget!r}")
        return cfg
