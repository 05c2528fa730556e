"""The exported ``hyperparams.yaml``, built from the recipe's own YAML.

A recipe declares what its inference model is in an ``inference:`` section::

    inference:
        interface: speechbrain.inference.ASR.EncoderASR   # or EncoderDecoderASR
        hparams:                 # keys of the exported hyperparams.yaml
            encoder: !ref <asr_encoder>
            decoding_function: !name:speechbrain.decoders.ctc_greedy_decode
                blank_id: 0
            tokenizer: !ref <tokenizer>
        loadables:               # saved as <name>.ckpt, fetched by the pretrainer
            model: !ref <model>
            normalizer: !ref <normalize>
            tokenizer: !ref <tokenizer>

The export reads the YAML with references resolved (hyperpyyaml's
``resolve_references``; SpeechBrain's saved ``hyperparams.yaml`` already is),
round-trips it with ruamel.yaml (comments, tags and anchors kept) and keeps
only what the inference model needs: the top-level keys the section refers
to, transitively (object references are YAML aliases once resolved, so the
closure follows object identity), in their original order, then the
interface keys, a ``modules:`` mapping and a ``Pretrainer`` over the
loadables.

Example
-------
>>> text = '''
... n_mels: 20
... lr: 0.1
... feats: !new:speechbrain.lobes.features.Fbank
...     n_mels: !ref <n_mels>
... lin: !new:torch.nn.Linear [20, 4]
... enc: !new:speechbrain.nnet.containers.LengthsCapableSequential
...     feats: !ref <feats>
...     lin: !ref <lin>
... modules:
...     lin: !ref <lin>
... inference:
...     interface: speechbrain.inference.ASR.EncoderASR
...     hparams:
...         encoder: !ref <enc>
...         decoding_function: !name:speechbrain.decoders.ctc_greedy_decode
...         tokenizer: !new:speechbrain.dataio.encoder.CTCTextEncoder
...     loadables:
...         model: !ref <lin>
... '''
>>> doc = load_resolved(text)
>>> out = export_document(doc, module_names=["lin"])
>>> list(out)
['feats', 'lin', 'enc', 'encoder', 'decoding_function', 'tokenizer', 'modules', 'pretrainer']
>>> list(out["modules"])
['encoder', 'lin']
"""

import io

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

__all__ = ["load_resolved", "dump", "closure", "export_document", "INTERFACES"]

#: the SpeechBrain interfaces an export can declare, with the modules they need
INTERFACES = {
    "speechbrain.inference.ASR.EncoderASR": ("encoder",),
    "speechbrain.inference.ASR.EncoderDecoderASR": ("encoder", "decoder"),
}


def _yaml():
    y = YAML()  # round trip
    y.width = 4096
    return y


def load_resolved(text):
    """The YAML ``text`` with references resolved, as a ruamel round-trip document."""
    from hyperpyyaml import resolve_references

    raw = _yaml().load(text)
    # a recipe file as written still has its !PLACEHOLDERs (data_folder...):
    # they never reach the inference model, but resolving refuses them
    holders = {
        k: f"<{k}>" for k, v in (raw or {}).items()
        if getattr(getattr(v, "tag", None), "value", None) == "!PLACEHOLDER"
    }
    resolved = resolve_references(text, holders or None).getvalue()
    doc = _yaml().load(resolved)
    if not isinstance(doc, CommentedMap):
        raise ValueError("the YAML is not a mapping of keys")
    return doc


def dump(doc):
    """``doc`` as YAML text."""
    out = io.StringIO()
    _yaml().dump(doc, out)
    return out.getvalue()


def _children(node):
    if isinstance(node, dict):
        return list(node.values())
    if isinstance(node, (list, tuple)):
        return list(node)
    return []


def closure(doc, nodes):
    """Top-level keys of ``doc`` whose values ``nodes`` refer to, transitively.

    References are shared objects (YAML aliases); the keys come back in
    document order.
    """
    owner = {id(v): k for k, v in doc.items() if isinstance(v, (dict, list))}
    needed, seen, todo = set(), set(), list(nodes)
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if id(node) in owner:
            needed.add(owner[id(node)])
        todo.extend(_children(node))
    return [k for k in doc if k in needed]


def inference_section(doc, where="the recipe's YAML"):
    """``(interface, hparams, loadables)`` of the ``inference:`` section, checked."""
    section = doc.get("inference")
    if not isinstance(section, dict):
        raise ValueError(
            f"{where} has no `inference:` section saying which SpeechBrain interface loads the "
            "model and what it is made of; see recipes/AN4/hparams/crdnn_ctc_meta.yaml"
        )
    unknown = sorted(set(section) - {"interface", "hparams", "loadables"})
    if unknown:
        raise ValueError(
            f"`inference:` in {where} has unknown keys {unknown}; keys are interface, hparams, loadables"
        )
    interface = str(section.get("interface", ""))
    if interface not in INTERFACES:
        raise ValueError(
            f"inference.interface in {where} is {interface!r}; supported: {', '.join(INTERFACES)}"
        )
    hparams, loadables = section.get("hparams"), section.get("loadables")
    for name, value in (("hparams", hparams), ("loadables", loadables)):
        if not isinstance(value, dict) or not value:
            raise ValueError(f"inference.{name} in {where} must be a non-empty mapping")
    missing = [m for m in INTERFACES[interface] + ("tokenizer",) if m not in hparams]
    if missing:
        raise ValueError(f"inference.hparams in {where} lacks {missing}, which {interface} needs")
    return interface, hparams, loadables


def export_document(doc, module_names=(), header=None):
    """The exported ``hyperparams.yaml`` document.

    Arguments
    ---------
    doc : ruamel CommentedMap
        The recipe's resolved YAML (:func:`load_resolved`).
    module_names : sequence of str
        Entries of the recipe's ``modules:`` to keep in the export's
        ``modules:`` (the trained modules, so that test-time adaptation names
        parameters as training did); only those the inference model uses.
    header : str, optional
        A comment written above the document.

    Returns
    -------
    ruamel CommentedMap
    """
    interface, hparams, loadables = inference_section(doc)
    keep = closure(doc, [hparams, loadables])
    out = CommentedMap()
    taken = set(hparams) | {"modules", "pretrainer"}
    for key in keep:
        if key in taken and doc[key] is not hparams.get(key):
            raise ValueError(
                f"the top-level key {key!r} is also an interface key of the export; rename it "
                "in the recipe's YAML"
            )
        out[key] = doc[key]
    for key, value in hparams.items():
        out[key] = value
    mods = CommentedMap()
    for name in INTERFACES[interface]:
        mods[name] = hparams[name]
    recipe_modules = doc.get("modules") if isinstance(doc.get("modules"), dict) else {}
    used = {id(doc[k]) for k in keep}
    for name in module_names:
        node = recipe_modules.get(name)
        if node is not None and id(node) in used and name not in mods:
            mods[name] = node
    out["modules"] = mods
    pretrainer = CommentedMap()
    pretrainer["loadables"] = CommentedMap(loadables)
    out["pretrainer"] = pretrainer
    out["pretrainer"].yaml_set_ctag(_tag("!new:speechbrain.utils.parameter_transfer.Pretrainer"))
    if header:
        out.yaml_set_start_comment(header)
    return out


def _tag(value):
    from ruamel.yaml.tag import Tag

    return Tag(suffix=value)


def seq(*items):
    """A YAML flow sequence (for plugins adding YAML)."""
    s = CommentedSeq(items)
    s.fa.set_flow_style()
    return s
