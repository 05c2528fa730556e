"""Export of trained models in SpeechBrain's pretrained-folder format.

:func:`export_brain` writes a trained brain as a folder that SpeechBrain's
own interface loads, offline and without sb-meta::

    from speechbrain.inference.ASR import EncoderASR   # or EncoderDecoderASR
    asr = EncoderASR.from_hparams(source="pretrained", savedir="pretrained")
    asr.transcribe_file("speech.wav")

Exported folder
---------------
::

    pretrained/
        hyperparams.yaml     the inference model: the part of the recipe's YAML
                             its ``inference:`` section needs, the interface's
                             keys, ``modules:`` and a ``Pretrainer``
        <loadable>.ckpt      one per loadable of the ``inference:`` section
                             (e.g. model.ckpt, normalizer.ckpt, tokenizer.ckpt)
        meta_strategy.ckpt   meta-learned strategy state (Meta-SGD step sizes),
                             when the strategy has some
        sbmeta.json          sb-meta's metadata and the folder's marker: format,
                             interface, strategy, meta configuration, the files
                             written, provenance, adaptation records

The loadables have no ``paths`` entry: the pretrainer fetches
``<loadable>.ckpt`` from the ``source`` folder given to ``from_hparams``, so
an export can be moved, copied or uploaded to a model hub as it is. The
``modules:`` of the export also lists the recipe's trained modules the
inference model is made of (``enc``, ``ctc_lin``...), so that test-time
adaptation names parameters exactly as training did.

Writing is atomic and never deletes what it did not write
(:mod:`sb_meta.export.folder`); the new folder is loaded back with the
interface and must reproduce the brain's own outputs before it replaces the
destination. Plugins change what is written through ``sbmeta_before_export``
(:class:`ExportPlan`).
"""

import logging
import pathlib

from sb_meta.export.folder import (
    ADAPTERS_META_FILE,
    META_FILE,
    DestinationError,
    atomic_folder,
    check_destination,
    is_sbmeta_export,
)
from sb_meta.export.plan import (
    FORMAT,
    HPARAMS_FILE,
    META_STATE_FILE,
    ExportPlan,
    copy_loadables,
    jsonable,
    now,
    predictions_reference,
    state_bytes,
    versions,
    write_export,
)
from sb_meta.export.yaml import export_document, inference_section, load_resolved
from sb_meta.version import __version__

logger = logging.getLogger(__name__)

__all__ = [
    "export_brain",
    "ExportPlan",
    "DestinationError",
    "atomic_folder",
    "check_destination",
    "is_sbmeta_export",
    "HPARAMS_FILE",
    "META_FILE",
    "META_STATE_FILE",
    "ADAPTERS_META_FILE",
    "FORMAT",
]


def _find_hparams_yaml(brain, hparams_file):
    """(text, description) of the YAML the brain was built from."""
    if hparams_file is not None:
        if isinstance(hparams_file, str) and "\n" in hparams_file:
            return hparams_file, "YAML text given to export_brain"
        path = pathlib.Path(hparams_file)
        if not path.is_file():
            raise FileNotFoundError(f"hparams file {path} does not exist")
        return path.read_text(encoding="utf-8"), str(path.resolve())
    out = getattr(brain.hparams, "output_folder", None)
    if out and (pathlib.Path(out) / HPARAMS_FILE).is_file():
        path = pathlib.Path(out) / HPARAMS_FILE
        return path.read_text(encoding="utf-8"), str(path.resolve())
    raise ValueError(
        "export_brain needs the YAML the model was built from: pass hparams_file= "
        "(the recipe's hyperparameters file or its text), or train through a recipe, "
        "whose output_folder holds the hyperparams.yaml SpeechBrain saved"
    )


def _export_info(brain, source, module_names):
    """The ``sbmeta.json`` record of a trained brain (``source``: where its YAML came from)."""
    hp = brain.hparams
    strategy = getattr(brain, "strategy", None)
    counter = getattr(hp, "epoch_counter", None)
    return {
        "created": now(),
        "versions": versions(),
        "strategy": getattr(strategy, "name", None),
        "meta_config": jsonable(dict(getattr(brain, "meta_config", {}) or {})),
        "module_names": module_names,
        "sample_rate": int(getattr(hp, "sample_rate", 16000)),
        "ctc_weight": float(getattr(hp, "ctc_weight", 1.0)),
        "base_model": {
            "kind": "trained",
            "brain": type(brain).__qualname__,
            "hparams_file": source,
            "output_folder": getattr(hp, "output_folder", None),
            "seed": getattr(hp, "seed", None),
            "epoch": getattr(counter, "current", None),
            "train_minutes": round(getattr(brain, "train_minutes", 0.0), 2),
        },
        "adaptations": [],
    }


def export_brain(brain, folder, hparams_file=None, verify=True, force=False):
    """Write a trained brain as a SpeechBrain pretrained folder.

    Call it on the main process only (e.g. through
    ``speechbrain.utils.distributed.run_on_main``).

    Arguments
    ---------
    brain : sb_meta.MetaBrain
        The trained brain; its hparams hold the ``inference:`` section (see
        :mod:`sb_meta.export.yaml`).
    folder : str or pathlib.Path
        Destination (see :mod:`sb_meta.export.folder` for when an existing
        one may be replaced).
    hparams_file : str or pathlib.Path, optional
        The YAML the brain was built from (a path, or its text). Defaults to
        the ``hyperparams.yaml`` SpeechBrain saved in
        ``brain.hparams.output_folder``.
    verify : bool
        Load the new folder with the interface and check that it reproduces
        the brain's outputs before it replaces ``folder``.
    force : bool
        Replace an earlier sb-meta export at ``folder``.

    Returns
    -------
    pathlib.Path
        The export folder.

    Example
    -------
    >>> export_brain(brain, "results/pretrained", hparams_file="hparams.yaml")  # doctest: +SKIP
    """
    text, source = _find_hparams_yaml(brain, hparams_file)
    doc = load_resolved(text)
    interface, _, _ = inference_section(doc, where=source)
    live = getattr(brain.hparams, "inference", None)
    if not isinstance(live, dict) or not isinstance(live.get("loadables"), dict):
        raise ValueError(f"the brain's hparams have no `inference:` section (YAML {source})")
    module_names = [n for n in brain.modules if not n.startswith("sbmeta_")]
    ydoc = export_document(doc, module_names)
    strategy = getattr(brain, "strategy", None)
    info = _export_info(brain, source, [n for n in module_names if n in ydoc["modules"]])
    plan = ExportPlan(
        interface=interface,
        yaml=ydoc,
        loadables=copy_loadables(live["loadables"]),
        info=info,
        reference=predictions_reference(brain, interface),
        header=(
            f"SpeechBrain pretrained speech recognizer, exported by sb-meta {__version__}.\n"
            f"  from {interface.rsplit('.', 1)[0]} import {interface.rsplit('.', 1)[1]}\n"
            f"  asr = {interface.rsplit('.', 1)[1]}.from_hparams(source=\"<this folder>\", "
            "savedir=\"<this folder>\")\n"
            "  asr.transcribe_file(\"speech.wav\")\n"
            f"Model part copied from {source}; sbmeta.json holds the meta-learning configuration."
        ),
    )
    state = strategy.export_state() if strategy is not None else None
    if state:
        plan.files[META_STATE_FILE] = state_bytes(state)
        plan.info["meta_state"] = {"file": META_STATE_FILE, "strategy": strategy.name}
    if hasattr(brain, "call_hook"):
        brain.call_hook("sbmeta_before_export", plan=plan)
    return write_export(plan, folder, force=force, verify=verify, device=brain.device)
