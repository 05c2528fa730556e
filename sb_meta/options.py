"""Plugin options: the YAML keys a strategy or an add-on declares, read and validated one way.

A strategy (:class:`sb_meta.strategy.Strategy`) and an add-on
(:class:`sb_meta.strategy.AddOn`) are both :class:`Configurable`: each
declares its keys with their defaults in ``options`` and reads them with
:meth:`Configurable.option` (or its typed forms). :func:`check_options`
refuses a misspelt key of any of them, naming the plugin and listing its keys;
``sb-meta plugins`` shows what each declares. The core's own keys are
:data:`sb_meta.strategy.META_KEYS`.

Example
-------
>>> class Demo(Configurable):
...     name, role, options = "demo", "strategy", {"demo_weight": 1.0}
>>> Demo().option("demo_weight")  # no brain, no hparams: the declared default
1.0
"""

import difflib

from sb_meta.contract import Phase

__all__ = ["Configurable", "check_options", "did_you_mean"]


def did_you_mean(key, candidates):
    """``" (did you mean 'x'?)"`` for the candidate closest to ``key``, or ``""``.

    Example
    -------
    >>> did_you_mean("inner_step", ["inner_steps", "inner_lr"])
    " (did you mean 'inner_steps'?)"
    >>> did_you_mean("zzz", ["inner_steps"])
    ''
    """
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_options(hparams, classes, active=()):
    """Reject misspelt or unknown plugin keys, listing the valid ones.

    A key that starts with a plugin's ``option_prefix`` (by default its name
    and ``_``) must be one of its ``options``; a key close to an option of an
    active plugin (the strategy, the add-ons of ``meta_addons``) is a typo.
    A key some registered plugin declares is always accepted.

    Arguments
    ---------
    hparams : dict or namespace
        The recipe's (or test-time) configuration.
    classes : iterable of type
        Every registered :class:`Configurable` class (strategies and add-ons).
    active : iterable of str
        Names of the active ones.

    Example
    -------
    >>> class Demo(Configurable):
    ...     name, role, options = "demo", "add-on", {"demo_weight": 1.0}
    >>> check_options({"demo_weight": 2, "lr": 1}, [Demo], ["demo"])
    >>> check_options({"demo_wieght": 2}, [Demo], ["demo"])
    Traceback (most recent call last):
    ...
    KeyError: "unknown key 'demo_wieght' for add-on 'demo' (did you mean 'demo_weight'?); its keys are: demo_weight"
    """
    hp = hparams if isinstance(hparams, dict) else vars(hparams)
    classes = list(classes)
    known = {key for cls in classes for key in cls.options}
    for key in hp:
        if key in known:
            continue
        owner = None
        for cls in classes:
            prefix = cls.option_prefix if cls.option_prefix is not None else f"{cls.name}_"
            if prefix and key.startswith(prefix):
                owner = cls
                break
            if cls.name in active and difflib.get_close_matches(key, list(cls.options), n=1, cutoff=0.85):
                owner = cls
                break
        if owner is not None:
            valid = list(owner.options)
            raise KeyError(
                f"unknown key {key!r} for {owner.role} {owner.name!r}{did_you_mean(key, valid)}; "
                f"its keys are: {', '.join(valid) or 'none'}"
            )


class Configurable:
    """What strategies and add-ons share: a ``name``, declared ``options`` and
    one way of reading them from the brain's hparams.

    Arguments
    ---------
    brain : sb_meta.MetaBrain, optional
        Its ``hparams`` hold the values (None: every option is its default).
    config : MetaConfig, optional
        The meta configuration.
    """

    name = None
    #: what it is called in messages (``"strategy"``, ``"add-on"``)
    role = "plugin"
    #: YAML keys it reads and their defaults (validated by :func:`check_options`;
    #: shown by ``sb-meta plugins``)
    options = {}
    #: keys starting with this belong to it (default ``<name>_``; "" for none)
    option_prefix = None

    def __init_subclass__(cls, **kwargs):
        """A subclass's ``options`` add to (or change the defaults of) its bases'."""
        super().__init_subclass__(**kwargs)
        merged = {}
        for base in reversed(cls.__bases__):
            merged.update(getattr(base, "options", None) or {})
        cls.options = {**merged, **(cls.__dict__.get("options") or {})}

    def __init__(self, brain=None, config=None):
        self.brain = brain
        self.config = config

    def option(self, key):
        """The value of one of its ``options`` in the brain's hparams (the default when
        the hparams do not set it, or set it to null)."""
        if key not in self.options:
            raise KeyError(f"{self.role} {self.name!r} declares no option {key!r}")
        hp = getattr(self.brain, "hparams", None)
        value = None
        if isinstance(hp, dict):
            value = hp.get(key)
        elif hp is not None:
            value = getattr(hp, key, None)
        return self.options[key] if value is None else value

    def number_option(self, key, minimum=None):
        """:meth:`option` ``key`` as a float (>= ``minimum``), or a ``ValueError`` naming it."""
        value = self.option(key)
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {value!r}") from None
        if minimum is not None and not out >= minimum:
            raise ValueError(f"{key} must be >= {minimum}, got {value!r}")
        return out

    def integer_option(self, key):
        """:meth:`option` ``key`` as a positive integer (None stays None)."""
        value = self.option(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
        return value

    def phases_option(self, key, allowed=("inner", "outer", "adapt")):
        """:meth:`option` ``key`` as a list of phase names (a YAML list or a
        comma-separated string), each one of ``allowed``.

        Example
        -------
        >>> class A(Configurable):
        ...     name, options = "a", {"a_phases": "outer, adapt"}
        >>> A().phases_option("a_phases")
        ['outer', 'adapt']
        """
        value = self.option(key)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        names = [Phase(v).value if isinstance(v, Phase) else str(v).lower() for v in (value or [])]
        bad = [n for n in names if n not in allowed]
        if bad:
            raise ValueError(f"{key} has unknown phases {bad}; phases are: {', '.join(allowed)}")
        return names
