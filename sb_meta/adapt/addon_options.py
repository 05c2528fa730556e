"""What the registered add-ons add to ``sb-meta adapt`` and ``sb-meta evaluate``.

The commands name no add-on: their add-on options, the choices of those
options, the order add-ons run in and the checks made before any work all
come from what each registered add-on declares
(:attr:`sb_meta.strategy.AddOn.kind`, ``folds_into_export`` and
``command_options``, :class:`sb_meta.contract.CommandOption`). A third-party
add-on installed through the ``sb_meta.plugins`` entry points is offered
exactly as the built-ins are.

Example
-------
>>> import argparse
>>> from sb_meta.plugins import PluginRegistry
>>> registry = PluginRegistry(strict=False)
>>> parser = argparse.ArgumentParser()
>>> _ = parser.add_argument("--addons", default=[])
>>> _ = parser.add_argument("--addon-config", action="append", default=[])
>>> add_addon_options(parser, registry)
>>> args = parser.parse_args(["--compress", "int8", "--peft", "lora"])
>>> addon_settings(args, registry)
(['lora', 'compress'], {'compress_int8': True})
"""

import argparse
import json
import pathlib

from sb_meta.plugins import PluginLoadError

__all__ = ["add_addon_options", "addon_settings", "check_export", "describe_export"]


def _dest(flag):
    """The attribute of the parsed arguments holding ``flag`` (apart from the commands' own)."""
    return "addon_option:" + flag[2:]


def _declared(registry):
    """``{flag: [(add-on name, CommandOption)]}`` over the registered add-ons, in registration order."""
    declared = {}
    for name, info in registry.addons.items():
        for opt in info.cls.command_options:
            declared.setdefault(opt.flag, []).append((name, opt))
    return declared


def add_addon_options(parser, registry):
    """Add the ``command_options`` of every add-on of ``registry`` to ``parser``, each flag once.

    A flag that selects an add-on offers every add-on declaring it as a
    choice; a flag that sets an option parses its value as it is read.

    Raises
    ------
    PluginLoadError
        When an add-on declares a flag the command already has.
    """
    group = parser.add_argument_group(
        "add-on options", "declared by the registered add-ons (`sb-meta plugins` lists them)"
    )
    for flag, decls in _declared(registry).items():
        name, opt = decls[0]
        kwargs = dict(dest=_dest(flag), default=None, help=opt.help.replace("%", "%%"))
        if opt.metavar is not None or not opt.selects:
            kwargs["metavar"] = opt.metavar or flag[2:].upper().replace("-", "_")
        if opt.selects:
            kwargs["choices"] = [n for n, _ in decls]
        elif opt.key is not None:
            kwargs["type"] = opt.parse
        try:
            group.add_argument(flag, **kwargs)
        except argparse.ArgumentError:
            raise PluginLoadError(
                f"add-on {name!r} (plugin {registry.addons[name].plugin!r}) declares {flag}, which "
                f"`sb-meta {parser.prog.split()[-1]}` already has; choose another flag"
            ) from None


def _addon_value(text):
    """A ``--addon-config`` value: YAML scalars and flow lists (``0.5``, ``true``, ``[inner, adapt]``)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        value = YAML(typ="safe").load(text)
    except YAMLError:
        return text
    return text if value is None and text.strip() not in ("null", "~") else value


def addon_settings(args, registry):
    """``(addons, addon_config)`` from ``--addons``, the add-ons' own flags and ``--addon-config``.

    An add-on chosen by a selecting flag comes first; compressors come last,
    since they act on the model the others leave (e.g. with adapters merged).
    ``--addon-config`` settings are applied last and win.
    """
    addons = list(getattr(args, "addons", None) or [])
    config = {}
    for flag, decls in _declared(registry).items():
        value = getattr(args, _dest(flag), None)
        if value is None:
            continue
        for name, opt in decls:
            if opt.selects:
                if value == name and name not in addons:
                    addons.insert(0, name)
            elif opt.key is not None:
                config[opt.key] = value
            else:
                config.update(opt.parse(value))
            if opt.activates and name not in addons:
                addons.append(name)
    last = set(registry.addon_names("compressor"))
    addons = [a for a in addons if a not in last] + [a for a in addons if a in last]
    for item in getattr(args, "addon_config", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--addon-config {item!r}: expected KEY=VALUE, KEY an option of an active add-on")
        config[key.strip()] = _addon_value(value)
    return addons, config


def _adapter_hint(registry):
    """How to choose an adapter, for messages: ``--peft a|b`` when one flag selects them all."""
    names = registry.addon_names("adapter")
    flags = _declared(registry)
    for flag, decls in flags.items():
        chosen = [n for n, opt in decls if opt.selects]
        if chosen and set(names) <= set(chosen):
            return f"{flag} {'|'.join(chosen)}"
    return f"an adapter add-on ({', '.join(names) or 'none is registered'})"


def check_export(addons, adapters_only, registry):
    """Refuse, before any work, an export the chosen add-ons cannot make.

    Raises
    ------
    ValueError
        ``adapters_only`` without an adapter, or with a compressor; an
        adapter whose layers do not fold into the weights without it.
    KeyError
        An unknown add-on (the message lists the registered ones).
    """
    classes = {name: registry.get_addon(name) for name in addons}
    adapters = [n for n, c in classes.items() if c.kind == "adapter"]
    if adapters_only and not adapters:
        raise ValueError(f"--adapters-only exports adapter weights: it needs {_adapter_hint(registry)}")
    compressors = [n for n, c in classes.items() if c.kind == "compressor"]
    if adapters_only and compressors:
        raise ValueError(f"{compressors[0]} changes the exported model; --adapters-only exports adapters alone")
    alone = [n for n in adapters if not classes[n].folds_into_export]
    if alone and not adapters_only:
        folding = [n for n in registry.addon_names("adapter") if registry.addons[n].cls.folds_into_export]
        hint = f" (or use {' / '.join(folding)}, which merge into the weights)" if folding else ""
        raise ValueError(
            f"{alone[0]} adds layers a SpeechBrain pretrained folder cannot hold: add --adapters-only{hint}"
        )


def describe_export(folder, addons, registry):
    """The lines the active add-ons print about the export in ``folder`` (from its ``sbmeta.json``)."""
    from sb_meta.export import META_FILE

    try:
        info = json.loads((pathlib.Path(folder) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [line for name in addons for line in registry.get_addon(name).describe_export(info)]
