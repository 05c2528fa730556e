"""Plugin manager: built-ins, entry points and YAML-named plugins.

Every plugin, built-in or third-party, is a module registered with a pluggy
``PluginManager`` under the ``sb_meta`` project name. Plugins are found:

1. through the ``sb_meta.plugins`` entry-point group (the built-ins in
   ``plugins/`` are declared there by sb-meta's own ``setup.cfg``);
2. by name in a recipe's YAML: ``plugins: [my_package.my_plugin, ./my_plugin.py]``.

Example
-------
>>> registry = PluginRegistry()
>>> "maml" in registry.strategies
True
>>> registry.get_strategy("nope")
Traceback (most recent call last):
...
sb_meta.plugins.UnknownPluginError: unknown strategy 'nope'; available: ...
"""

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import pathlib
import sys
from dataclasses import dataclass

import pluggy

from sb_meta import hookspecs

ENTRY_POINT_GROUP = "sb_meta.plugins"
HOOK_PREFIX = "sbmeta_"
hookimpl = pluggy.HookimplMarker("sb_meta")
#: hooks called on plugin modules, once, when a registry is built; every
#: other hook is per-brain: called only on a brain's strategy and add-ons
REGISTRY_HOOKS = ("sbmeta_strategies", "sbmeta_addons")
#: pluggy's ordering markers, which per-brain hooks cannot honour: they run on
#: the strategy, then the add-ons in ``meta_addons`` order
ORDER_MARKERS = ("tryfirst", "trylast", "wrapper", "hookwrapper")


class PluginError(Exception):
    """Base class of plugin-related errors."""


class UnknownPluginError(PluginError, KeyError):
    """A strategy or add-on name that no registered plugin provides."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


class PluginLoadError(PluginError, ImportError):
    """A plugin that could not be imported or is malformed."""


class PluginHookError(PluginError, RuntimeError):
    """A plugin's hook raised; the message names the plugin, the hook and the phase."""


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with sb-meta's hook specifications, where every function or
    method named ``sbmeta_*`` is a hook implementation (decorated or not, as
    ``pytest_*`` functions are in pytest), and a name that is no hook is an
    error naming the plugin (:func:`check_hook_names`).

    Example
    -------
    >>> class Misspelt:
    ...     def sbmeta_los(self, loss):
    ...         return loss
    >>> PluginManager().register(Misspelt(), name="typo")
    Traceback (most recent call last):
    ...
    sb_meta.plugins.PluginLoadError: plugin 'typo' implements 'sbmeta_los', which is not an sb-meta hook (did you mean 'sbmeta_loss'?); ...
    """

    def __init__(self, per_brain=False):
        super().__init__("sb_meta")
        self.add_hookspecs(hookspecs)
        #: whether plugins are a brain's strategy and add-ons (else plugin modules)
        self.per_brain = per_brain

    def parse_hookimpl_opts(self, plugin, name):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(HOOK_PREFIX):
            found = inspect.getattr_static(plugin, name, None)
            if isinstance(found, (staticmethod, classmethod)) or inspect.isroutine(found):
                opts = {
                    "wrapper": False, "hookwrapper": False, "optionalhook": False,
                    "tryfirst": False, "trylast": False, "specname": None,
                }
        return opts

    def register(self, plugin, name=None):
        who = name or getattr(plugin, "__name__", repr(plugin))
        check_hook_names(plugin, who)
        try:
            registered = super().register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            lines = (line.strip() for line in str(exc).splitlines())
            raise PluginLoadError(f"plugin {who!r}: {'; '.join(x for x in lines if x)}") from None
        try:
            check_hook_placement(self, plugin, who)
        except PluginLoadError:
            self.unregister(plugin)
            raise
        return registered


def check_hook_names(obj, who):
    """Raise :class:`PluginLoadError` when ``obj`` (a plugin module, class or
    instance) has a ``sbmeta_*`` attribute that names no hook.

    Example
    -------
    >>> check_hook_names(type("Fine", (), {"sbmeta_loss": lambda self: None}), "fine")
    """
    known = hookspecs.hook_names()
    for name in dir(obj):
        if name.startswith(HOOK_PREFIX) and name not in known:
            value = inspect.getattr_static(obj, name, None)
            if not (inspect.isroutine(value) or isinstance(value, (staticmethod, classmethod))):
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PluginLoadError(
                f"plugin {who!r} implements {name!r}, which is not an sb-meta hook{hint}; "
                f"hooks are: {', '.join(known)}"
            )


def check_hook_placement(pm, plugin, who):
    """Raise :class:`PluginLoadError` for a hook ``plugin`` (registered with
    ``pm``) implements where it would never be called, or with an ordering
    marker it would not honour.

    Per-brain hooks are called only on a brain's strategy and add-ons (methods
    of the classes ``sbmeta_strategies`` / ``sbmeta_addons`` return), in a
    fixed order, so a plugin module implementing one, or an implementation
    marked ``tryfirst``, ``trylast``, ``wrapper`` or ``hookwrapper``, would be
    silently ignored; :data:`REGISTRY_HOOKS` are called on plugin modules only.

    Example
    -------
    >>> class Early:
    ...     @hookimpl(tryfirst=True)
    ...     def sbmeta_loss(self, loss):
    ...         return None
    >>> PluginManager(per_brain=True).register(Early, name="early")
    Traceback (most recent call last):
    ...
    sb_meta.plugins.PluginLoadError: plugin 'early': sbmeta_loss is marked tryfirst, which per-brain hooks ignore (they run on the strategy, then the add-ons in meta_addons order); remove the marker
    """
    for caller in pm.get_hookcallers(plugin) or []:
        name = caller.name
        for impl in (i for i in caller.get_hookimpls() if i.plugin is plugin):
            if name in REGISTRY_HOOKS and pm.per_brain:
                raise PluginLoadError(
                    f"plugin {who!r}: {name} is called only on plugin modules, never on a strategy or "
                    "add-on; define it as a module-level function of the plugin"
                )
            if name not in REGISTRY_HOOKS and not pm.per_brain:
                raise PluginLoadError(
                    f"plugin {who!r} implements the per-brain hook {name} at module level, where it is "
                    "never called; make it a method of the AddOn or Strategy subclass that the plugin's "
                    "sbmeta_addons / sbmeta_strategies returns"
                )
            marked = [m for m in ORDER_MARKERS if pm.per_brain and getattr(impl, m, False)]
            if marked:
                raise PluginLoadError(
                    f"plugin {who!r}: {name} is marked {marked[0]}, which per-brain hooks ignore (they "
                    "run on the strategy, then the add-ons in meta_addons order); remove the marker"
                )


@dataclass
class PluginInfo:
    """Where a strategy or add-on came from."""

    name: str
    kind: str  # "strategy" or "addon"
    cls: type
    plugin: str  # the plugin (entry point or YAML) name
    module: str
    distribution: str  # "name version", or "yaml" / "local"

    def as_dict(self):
        row = {
            "name": self.name,
            "kind": self.kind,
            "plugin": self.plugin,
            "module": self.module,
            "class": self.cls.__qualname__,
            "distribution": self.distribution,
            "doc": (self.cls.__doc__ or "").strip().splitlines()[0] if self.cls.__doc__ else "",
            "options": dict(self.cls.options),  # its YAML keys and their defaults
        }
        if self.kind == "addon":  # what it declares it is, and the flags it adds to sb-meta adapt
            row["addon_kind"] = self.cls.kind
            row["flags"] = [opt.flag for opt in self.cls.command_options]
        return row


class PluginRegistry:
    """Discovers plugins and indexes the strategies and add-ons they provide.

    Arguments
    ---------
    entry_points : bool
        Load plugins from the ``sb_meta.plugins`` entry-point group.
    extra : sequence of str
        More plugins to load: dotted module names or paths to ``.py`` files
        (what YAML's ``plugins:`` key holds).
    strict : bool
        Raise :class:`PluginLoadError` when a plugin fails to import. With
        ``strict=False`` failures are kept in ``self.broken`` (used by
        ``sb-meta plugins`` to show them).
    """

    def __init__(self, entry_points=True, extra=(), strict=True):
        self.pm = PluginManager()
        self.strict = strict
        self.broken = {}  # plugin name -> error message
        self.strategies = {}
        self.addons = {}
        self._origin = {}  # plugin object id -> (plugin name, distribution)
        if entry_points:
            for ep in sorted(
                importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
            ):
                dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
                self._load(ep.name, dist, ep.load, where=ep.value)
        for spec in extra:
            self.load(spec)

    # ------------------------------------------------------------------ loading
    def load(self, spec):
        """Load one plugin named by a dotted module path or a ``.py`` file."""
        spec = str(spec)
        if spec in self.pm.get_plugins() or self.pm.has_plugin(spec):
            return
        if spec.endswith(".py"):
            path = pathlib.Path(spec)

            def loader():
                if not path.is_file():
                    raise FileNotFoundError(f"no such plugin file {path}")
                mod_name = f"sb_meta_local_plugin_{path.stem}"
                module_spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[mod_name] = module
                module_spec.loader.exec_module(module)
                return module

            self._load(spec, "local file", loader, where=str(path))
        else:
            self._load(spec, "yaml", lambda: importlib.import_module(spec), where=spec)

    def _load(self, name, dist, loader, where):
        if self.pm.has_plugin(name):
            return
        try:
            plugin = loader()
            self.pm.register(plugin, name=name)
            self._index(plugin, name, dist)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            msg = (
                f"sb-meta plugin {name!r} ({where}) from {dist} failed to load: "
                f"{type(exc).__name__}: {exc}"
            )
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            if self.strict:
                raise PluginLoadError(msg) from exc
            self.broken[name] = msg

    def _index(self, plugin, name, dist):
        from sb_meta.strategy import AddOn, Strategy

        caller = self.pm.subset_hook_caller
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        for kind, hook, base, table in (
            ("strategy", "sbmeta_strategies", Strategy, self.strategies),
            ("addon", "sbmeta_addons", AddOn, self.addons),
        ):
            for classes in caller(hook, remove_plugins=others)():
                for cls in classes or []:
                    if not (isinstance(cls, type) and issubclass(cls, base)):
                        raise TypeError(f"{hook} returned {cls!r}, not a {base.__name__} subclass")
                    if not getattr(cls, "name", None):
                        raise TypeError(f"{cls.__qualname__} has no 'name'")
                    # its hooks: known, where they are called, no ordering marker
                    PluginManager(per_brain=True).register(cls, name=f"{name}: {cls.__qualname__}")
                    if base is AddOn:
                        self._check_declaration(cls, name)
                    if cls.name in table:
                        prev = table[cls.name]
                        raise PluginLoadError(
                            f"{kind} {cls.name!r} from plugin {name!r} ({dist}) clashes with "
                            f"the one from plugin {prev.plugin!r} ({prev.distribution})"
                        )
                    table[cls.name] = PluginInfo(
                        cls.name, kind, cls, name, cls.__module__, dist
                    )

    def _check_declaration(self, cls, plugin):
        """Refuse an add-on whose ``kind`` or ``command_options`` are not valid,
        or whose flags clash with those of an add-on already registered."""
        from sb_meta.contract import ADDON_KINDS, CommandOption

        who = f"add-on {cls.name!r} of plugin {plugin!r}"
        if cls.kind is not None and cls.kind not in ADDON_KINDS:
            raise PluginLoadError(f"{who} has kind {cls.kind!r}; kinds are {', '.join(ADDON_KINDS)} or None")
        for opt in cls.command_options:
            if not isinstance(opt, CommandOption):
                raise PluginLoadError(f"{who}: command_options holds {opt!r}, not a sb_meta.contract.CommandOption")
            if opt.key is not None and opt.key not in cls.options:
                raise PluginLoadError(f"{who}: {opt.flag} sets {opt.key!r}, which is not one of its options")
            for info in self.addons.values():
                clash = [o for o in info.cls.command_options if o.flag == opt.flag and not _agree(o, opt)]
                if clash:
                    raise PluginLoadError(
                        f"{who} declares {opt.flag} unlike add-on {info.name!r} of plugin {info.plugin!r} "
                        "(add-ons sharing a flag must all select, or set the same key with the same "
                        "parse, and none may activate itself by it)"
                    )

    def addon_names(self, kind):
        """Names of the registered add-ons of ``kind`` (``"adapter"``, ``"compressor"``), in
        registration order."""
        return [name for name, info in self.addons.items() if info.cls.kind == kind]

    # ------------------------------------------------------------------ lookup
    def _get(self, table, kind, name):
        if name not in table:
            hint = ""
            if self.broken:
                hint = "; plugins that failed to load: " + "; ".join(self.broken.values())
            raise UnknownPluginError(
                f"unknown {kind} {name!r}; available: {', '.join(sorted(table)) or 'none'}{hint}"
            )
        return table[name].cls

    def get_strategy(self, name):
        """The strategy class registered under ``name``."""
        return self._get(self.strategies, "strategy", name)

    def get_addon(self, name):
        """The add-on class registered under ``name``."""
        return self._get(self.addons, "add-on", name)

    def configurables(self):
        """Every registered strategy and add-on class: what declares ``options``
        (:func:`sb_meta.options.check_options` validates a configuration against them)."""
        return [i.cls for i in self.strategies.values()] + [i.cls for i in self.addons.values()]

    def listing(self):
        """All registered strategies and add-ons as dicts (for ``sb-meta plugins``)."""
        rows = [i.as_dict() for i in self.strategies.values()]
        rows += [i.as_dict() for i in self.addons.values()]
        return sorted(rows, key=lambda r: (r["kind"] != "strategy", r["name"]))


def _agree(a, b):
    """Whether two add-ons may both declare command options ``a`` and ``b`` of one flag."""
    return (a.selects == b.selects and a.key == b.key and a.parse is b.parse
            and not a.activates and not b.activates)
