"""Which model folders sb-meta loads without being told to trust them.

A SpeechBrain model folder is code: hyperpyyaml builds every object its
``hyperparams.yaml`` names (``!new:``), calls what it names (``!apply:``) and
hands on functions (``!name:``). Before anything in a folder is built,
:func:`check_model_folder` reads the YAML's nodes with ruamel.yaml (its
composer: tags and line numbers, nothing constructed) and refuses the folder,
in one line naming the tag, its line and ``--trust-model`` (Python:
``trust=True``), when it

* names a callable outside :data:`CALLABLES` (SpeechBrain, torch, torchaudio,
  SentencePiece, the model-building parts of sb-meta, the modules of the
  installed sb-meta plugins), or one of the entries there that load or run code,
  unpickle, write or fetch files (``torch.hub``, ``torch.load``,
  ``speechbrain.utils.superpowers``...), a private name (``_x``), a module, or a
  method whose name says it writes (``save``, ``write...``, ``dump...``);
* uses ``!module:`` or ``!include:`` (a module object reaches any attribute; an
  include reads a file the check did not see), an unknown tag, or a YAML
  ``!!python/...`` tag;
* holds a value hyperpyyaml reads as a tuple (``(1, 2)``) that is not plain
  data: its tuples are parsed with an unsafe YAML loader;
* holds Python files (SpeechBrain adds a folder's ``custom.py`` to the import
  path), or its ``sbmeta.json`` names plugins that are files or not installed.

SpeechBrain's published ASR folders and sb-meta's own exports name nothing
else, so they load as they are. This is a gate against a folder running
arbitrary code, not a sandbox: whoever can write a folder you load can still
make it misbehave within those libraries; load folders from sources you trust.

Example
-------
>>> check_yaml("enc: !new:torch.nn.Linear [2, 3]\\n", "ok.yaml")
>>> check_yaml("a: 1\\nrun: !apply:os.system [ls]\\n", "m/hyperparams.yaml")
Traceback (most recent call last):
...
sb_meta.trust.UntrustedModelError: m/hyperparams.yaml line 2: !apply:os.system calls code outside what sb-meta lets a model folder run (...); nothing was loaded: load it only if you trust its source, with --trust-model (Python: trust=True)
"""

import builtins
import functools
import importlib.metadata
import inspect
import pathlib
import re

__all__ = ["CALLABLES", "UntrustedModelError", "check_yaml", "check_model_folder", "callable_verdict",
           "add_trust_option", "unneeded_untrusted_keys"]

#: Where the callables a model folder may name live, as dotted prefixes; the longest
#: prefix matching a name decides (True: allowed). The modules of the installed sb-meta
#: plugins (entry points) are added to it. Extend it here, in one place.
CALLABLES = {
    "speechbrain": True,
    "torch": True,
    "torchaudio": True,
    "sentencepiece": True,
    "sb_meta.losses": True,
    "sb_meta.words.heads": True,
    "collections.OrderedDict": True,
    **{f"builtins.{t}": True for t in ("tuple", "list", "dict", "set", "int", "float", "str", "bool")},
    # inside the allowed libraries: what loads or runs code, unpickles, writes, fetches or spawns
    **{name: False for name in (
        "torch.hub", "torch.load", "torch.save", "torch.serialization", "torch.jit", "torch.package",
        "torch.ops", "torch.classes", "torch.library", "torch.fx", "torch.export", "torch.onnx",
        "torch.compile", "torch.compiler", "torch.from_file", "torch.distributed", "torch.multiprocessing",
        "torch.profiler", "torch.autograd.profiler", "torch.utils.cpp_extension", "torch.utils.benchmark",
        "torch.utils.collect_env", "torch.utils.data", "torch.utils.model_zoo", "torch.utils.tensorboard",
        "torch.utils.checkpoint", "torch.utils.bottleneck",
        "torchaudio.datasets", "torchaudio.utils", "torchaudio.pipelines", "torchaudio.io", "torchaudio.save",
        "speechbrain.core", "speechbrain.inference", "speechbrain.pretrained", "speechbrain.utils.superpowers",
        "speechbrain.utils.fetching", "speechbrain.utils.importutils", "speechbrain.utils.checkpoints",
        "speechbrain.utils.data_utils.download_file", "speechbrain.utils.distributed",
        "speechbrain.utils.train_logger", "speechbrain.utils.hpopt", "speechbrain.utils.profiling",
        "speechbrain.dataio.dataio", "speechbrain.tokenizers.SentencePiece",
        "speechbrain.utils.parameter_transfer",
    )},
    "speechbrain.utils.parameter_transfer.Pretrainer": True,
    # sb-meta's int8 export: the packed weights of quantized RNNs are TorchBind objects
    "torch.serialization.add_safe_globals": True,
}

#: ``!apply:setattr [!name:<allowed class>, <attribute>, !name:<allowed>]`` is allowed for
#: these attributes only (sb-meta's int8 export makes quantized RNNs' flatten_parameters a no-op)
SETATTR_ATTRIBUTES = ("flatten_parameters",)

#: method and function names refused in any module: they write, fetch, or run commands
_WRITES = re.compile(
    r"^(save|.*_save|save_.*|write.*|dump.*|download.*|.*pickle.*|.*pkl.*|fetch.*|run_shell|system|"
    r"popen|spawn.*|exec.*|eval|load_library|remove.*|unlink|rmtree|rename|replace|mkdir|makedirs|"
    r"symlink.*|chmod|chown|copy.*file.*)$", re.IGNORECASE)
_CORE_TAGS = {f"tag:yaml.org,2002:{t}" for t in
              ("str", "int", "float", "bool", "null", "map", "seq", "set", "omap", "pairs", "timestamp",
               "binary", "merge", "value")}
_CALL_TAGS = ("!new:", "!name:", "!apply:", "!applyref:")
_REFUSED_TAGS = {"!module:": "gives the YAML a module object, which reaches any of its attributes",
                 "!include:": "reads another file, which this check did not see"}
_TUPLE = re.compile(r"^\(.*\)$", re.DOTALL)
_REF = re.compile(r"<([^<>]*)>")
HINT = "load it only if you trust its source, with --trust-model (Python: trust=True)"


class UntrustedModelError(ValueError):
    """A model folder names code sb-meta does not run without ``trust=True``."""


@functools.lru_cache(maxsize=1)
def _plugin_modules():
    """The modules of the installed sb-meta plugins (entry points), without importing them."""
    from sb_meta.plugins import ENTRY_POINT_GROUP

    return tuple(sorted({ep.module for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}))


def _rules():
    return dict(CALLABLES, **{m: True for m in _plugin_modules()})


def _allowed(name, rules):
    """The verdict of the longest prefix of ``name`` in ``rules`` (False when none matches)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        verdict = rules.get(".".join(parts[:n]))
        if verdict is not None:
            return verdict
    return False


def _trusted_roots(rules):
    return {k.split(".")[0] for k, v in rules.items() if v}


def callable_verdict(name, rules=None):
    """None when a YAML may name the callable ``name``, else why not.

    The written name must be allowed, and so must the place the object it
    resolves to is defined in (``speechbrain.core.os.system`` is ``os.system``);
    only modules of trusted packages are imported to find out.

    Example
    -------
    >>> callable_verdict("speechbrain.nnet.linear.Linear") is None
    True
    >>> callable_verdict("speechbrain.nnet.linear.torch.hub.load")
    'it is torch.hub.load'
    >>> callable_verdict("torch.hub.load")
    'torch.hub.load is not allowed'
    """
    rules = _rules() if rules is None else rules
    parts = name.split(".")
    if not all(parts) or any(p.startswith("_") for p in parts):
        return "it names a private attribute"
    if len(parts) == 1 and hasattr(builtins, name):
        name, parts = f"builtins.{name}", ["builtins", name]
    if parts[0] not in _trusted_roots(rules) or not _allowed(name, rules):
        return f"{name} is not allowed"
    if _WRITES.match(parts[-1]):
        return f"{parts[-1]} writes, fetches or runs commands"
    if parts[0] == "builtins":
        obj = getattr(builtins, parts[1], None) if len(parts) == 2 else None
    else:
        import pydoc

        try:
            obj = pydoc.locate(name)  # imports modules of trusted packages only (checked above)
        except Exception:  # noqa: BLE001 - e.g. an optional dependency missing: hyperpyyaml reports it
            return None
    if obj is None:
        return None  # hyperpyyaml reports what does not exist
    if inspect.ismodule(obj):
        return "it is a module"
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        home = f"{module}.{qualname}"
        if home.split(".")[0] not in _trusted_roots(rules) or not _allowed(home, rules):
            return f"it is {home}"
    return None


def _tag(node):
    tag = node.tag
    return str(getattr(tag, "value", None) or tag or "")


def _refuse(where, line, what, why):
    raise UntrustedModelError(
        f"{where} line {line}: {what} {why}; nothing was loaded: {HINT}"
    )


#: how the refusal names what is allowed
OUTSIDE = ("calls code outside what sb-meta lets a model folder run (speechbrain, torch, torchaudio, "
           "sentencepiece, sb-meta and its plugins, less their file, download, code-loading and shell "
           "functions)")


def _check_tuple(text, where, line):
    """hyperpyyaml parses ``(a, b)`` scalars with PyYAML's unsafe loader: plain data only."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        YAML(typ="safe", pure=True).load("[" + text[1:-1] + "]")
    except YAMLError:
        _refuse(where, line, f"the tuple {text[:40]!r}", "is not plain data (hyperpyyaml would run its tags)")


def _check_call(node, tag, where, line, rules):
    prefix = next(p for p in _CALL_TAGS if tag.startswith(p))
    name = tag[len(prefix):]
    if name in ("setattr", "builtins.setattr") and prefix == "!apply:":
        args = getattr(node, "value", None)
        ok = (isinstance(args, list) and len(args) == 3 and all(not isinstance(a, tuple) for a in args)
              and _tag(args[0]).startswith("!name:") and _tag(args[2]).startswith("!name:")
              and getattr(args[1], "value", None) in SETATTR_ATTRIBUTES)
        if not ok:
            _refuse(where, line, tag, f"sets an attribute other than {', '.join(SETATTR_ATTRIBUTES)}")
        return
    why = callable_verdict(name, rules)
    if why is not None:
        detail = "" if why.endswith("is not allowed") else f" ({why})"
        _refuse(where, line, tag, OUTSIDE + detail)


def _check_reference(node, tag, where, line):
    text = str(getattr(node, "value", ""))
    if "**" in text:
        _refuse(where, line, f"{tag} {text[:40]}", "raises to a power (unbounded arithmetic)")
    for ref in _REF.findall(text):
        attr = ref.split(".", 1)[1] if "." in ref else None
        if attr is not None and (attr.startswith("_") or _WRITES.match(attr) or not attr.isidentifier()):
            _refuse(where, line, f"{tag} <{ref}>", "reaches an attribute sb-meta does not allow")


def _walk(node, visit):
    """Call ``visit(node, top_key)`` on every node once (aliases are shared), ``top_key``
    being the top-level key the node is under (None for the root and its keys)."""
    seen = set()
    stack = [(node, None, True)]
    while stack:
        node, top, is_root = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        visit(node, top)
        value = getattr(node, "value", None)
        if isinstance(value, list):
            for item in value:
                if isinstance(item, tuple):  # a mapping's (key, value)
                    k, v = item
                    key = str(k.value) if is_root else top
                    stack.extend([(k, key, False), (v, key, False)])
                else:
                    stack.append((item, top, False))


def _as_written(node, top, where, rules):
    """The first pass of :func:`check_yaml` over one node of the YAML as written."""
    line = node.start_mark.line + 1
    tag = _tag(node)
    if tag.startswith(_CALL_TAGS):
        _check_call(node, tag, where, line, rules)
    elif tag in ("!ref", "!copy"):
        _check_reference(node, tag, where, line)
    elif tag == "!tuple":
        _check_tuple(str(node.value), where, line)
    elif tag.startswith(tuple(_REFUSED_TAGS)):
        prefix = next(p for p in _REFUSED_TAGS if tag.startswith(p))
        _refuse(where, line, tag, _REFUSED_TAGS[prefix])
    elif tag.startswith("tag:yaml.org,2002:"):
        _check_core(node, tag, where, line)
    elif tag != "!PLACEHOLDER":
        _refuse(where, line, tag, "is not a tag a SpeechBrain model folder uses")


def _check_core(node, tag, where, line):
    if tag not in _CORE_TAGS:
        _refuse(where, line, tag.replace("tag:yaml.org,2002:", "!!"), "is a Python-object tag")
    if getattr(node, "style", "x") is None and isinstance(node.value, str) and _TUPLE.match(node.value):
        _check_tuple(node.value, where, line)


def check_yaml(text, where="hyperparams.yaml", rules=None):
    """Raise :class:`UntrustedModelError` unless every tag of the YAML ``text`` is allowed.

    Nothing of the YAML is constructed: the first pass reads the composed nodes
    of the text as written; the second resolves hyperpyyaml's references
    (``!ref``, ``!copy``: text interpolation, no call once the first pass has
    passed) and checks the tuples and tags the result holds.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.nodes import MappingNode

    rules = _rules() if rules is None else rules
    try:
        root = YAML().compose(text)
    except YAMLError:
        return  # not YAML: the loader reports it, naming the file
    if root is None:
        return
    _walk(root, functools.partial(_as_written, where=where, rules=rules))
    # the line of each top-level key as written: where the second pass's findings are reported
    pairs = root.value if isinstance(root, MappingNode) else []
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in pairs}
    try:
        from hyperpyyaml import resolve_references

        resolved = YAML().compose(resolve_references(text).getvalue())
    except Exception:  # noqa: BLE001 - the loader reports broken references, naming the file
        return

    def second(node, top):
        tag = _tag(node)
        line = lines.get(top, "?")
        if tag == "!apply:getattr":  # hyperpyyaml's own form of <key.attribute>
            attr = node.value[1].value if isinstance(node.value, list) and len(node.value) == 2 else ""
            if not str(attr).isidentifier() or str(attr).startswith("_") or _WRITES.match(str(attr)):
                _refuse(where, line, f"<...{attr}>", "reaches an attribute sb-meta does not allow")
        elif tag.startswith(_CALL_TAGS):
            _check_call(node, tag, where, line, rules)
        elif tag == "!tuple":  # resolved so once hyperpyyaml registered its implicit resolver
            _check_tuple(str(node.value), where, line)
        elif tag.startswith("tag:yaml.org,2002:"):
            _check_core(node, tag, where, line)
        elif tag != "!PLACEHOLDER":
            _refuse(where, line, tag, "is not a tag a SpeechBrain model folder uses")

    if resolved is not None:
        _walk(resolved, second)


def unneeded_untrusted_keys(text):
    """Top-level keys of the YAML ``text`` that name code :func:`check_yaml` refuses and
    that nothing else needs: no other key refers to them, or hyperpyyaml drops them
    (``__`` keys, kept only for what building them does). An export leaves them out.

    Example
    -------
    >>> unneeded_untrusted_keys("a: 1\\n__x: !apply:os.system [ls]\\nb: !ref <a>\\n")
    ['__x']
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.nodes import MappingNode

    root = YAML().compose(text)
    if not isinstance(root, MappingNode):
        return []
    rules = _rules()
    refused, refs = [], {}
    for key, value in root.value:
        name = str(key.value)
        try:
            _walk(value, functools.partial(_as_written, where="", rules=rules))
        except UntrustedModelError:
            refused.append(name)

        def collect(node, top, owner=name):
            if _tag(node) in ("!ref", "!copy"):
                for ref in _REF.findall(str(node.value)):
                    refs.setdefault(re.split(r"[.\[]", ref)[0].strip(), set()).add(owner)

        _walk(value, collect)
    return [k for k in refused if k.startswith("__") or not (refs.get(k, set()) - {k})]


def check_model_folder(folder, yaml_text, where, info=None):
    """Raise :class:`UntrustedModelError` unless ``folder`` loads without ``trust=True``.

    Arguments
    ---------
    folder : pathlib.Path or None
        The local folder (None for a model-hub id: only its YAML is checked).
    yaml_text : str
        Its ``hyperparams.yaml``.
    where : str
        How to name the YAML in the message.
    info : dict, optional
        Its ``sbmeta.json`` (the plugins it names must be installed ones).
    """
    if folder is not None:
        code = sorted(p.name for p in pathlib.Path(folder).glob("*.py"))
        if code:
            raise UntrustedModelError(
                f"{folder} holds Python code ({', '.join(code)}), which SpeechBrain puts on the "
                f"import path; nothing was loaded: {HINT}"
            )
    check_yaml(yaml_text, where)
    plugins = ((info or {}).get("meta_config") or {}).get("plugins") or []
    installed = set(_plugin_modules())
    for spec in plugins:
        if str(spec) not in installed:
            meta = pathlib.Path(folder) / "sbmeta.json" if folder is not None else "sbmeta.json"
            raise UntrustedModelError(
                f"{meta} names the plugin {spec!r}, which is not an installed sb-meta plugin "
                f"(loading it runs its code); nothing was loaded: {HINT}"
            )


def add_trust_option(parser):
    """``--trust-model`` on a command that loads a model folder."""
    parser.add_argument(
        "--trust-model", action="store_true",
        help="load the model folder even if its hyperparams.yaml names code outside what sb-meta "
             "allows (a model folder is code: only for folders from sources you trust)")
