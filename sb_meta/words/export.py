"""Word models as SpeechBrain pretrained folders (``EncoderClassifier``).

A word model is an embedding encoder plus a classification head
(:mod:`sb_meta.words.heads`) holding the words enrolled in it. The folder is
laid out exactly as SpeechBrain's speaker- and language-ID models are, so
SpeechBrain's own interface loads it, offline (``sb_meta`` must be importable:
the head's class is ``sb_meta.words.heads.*``)::

    from speechbrain.inference.classifiers import EncoderClassifier
    model = EncoderClassifier.from_hparams(source="words", savedir="words")
    log_probs, score, index, words = model.classify_file("recording.wav")

Folder::

    hyperparams.yaml       compute_features, mean_var_norm, embedding_model (copied
                           from the recipe's YAML), classifier (the head, sized by
                           its enrolment), label_encoder, modules, pretrainer
    embedding_model.ckpt   the encoder's weights
    mean_var_norm.ckpt     its feature-normalisation statistics
    classifier.ckpt        the head: learned parts and enrolled state
    label_encoder.ckpt     the enrolled words (speechbrain CategoricalEncoder)
    sbmeta.json            sb-meta's metadata: strategy, head, words, training
                           classes, enrolment records (``kind: words``)

A recipe's YAML must declare ``compute_features``, ``mean_var_norm`` and
``embedding_model`` (``EncoderClassifier`` computes
``embedding_model(mean_var_norm(compute_features(wavs), lens), lens)``), and its
brain's ``compute_forward`` must compute the same embeddings. A model fresh
from training has no word enrolled (``sb-meta words enrol`` adds them).
Writing is atomic and checked by loading the folder back
(:mod:`sb_meta.export.folder`).
"""

import json
import logging
import pathlib

import torch

from sb_meta.export.folder import META_FILE, atomic_folder
from sb_meta.export.plan import FORMAT, HPARAMS_FILE, jsonable, now, probe_batch, save_loadable, versions
from sb_meta.export.yaml import closure, dump, load_resolved
from sb_meta.utils import safe_name

logger = logging.getLogger(__name__)

__all__ = ["export_word_brain", "write_word_folder", "word_document", "set_classifier",
           "label_encoder_for", "INTERFACE", "ENCODER_KEYS"]

INTERFACE = "speechbrain.inference.classifiers.EncoderClassifier"
ENCODER_KEYS = ("compute_features", "mean_var_norm", "embedding_model")
KIND = "words"


def _tagged(mapping, tag):
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.tag import Tag

    node = CommentedMap(mapping)
    node.yaml_set_ctag(Tag(suffix=tag))
    return node


def set_classifier(doc, head):
    """Make ``doc["classifier"]`` build ``head`` (class, configuration and enrolment
    sizes) and ``doc["__label_encoder_size"]`` expect as many labels."""
    from ruamel.yaml.comments import CommentedSeq
    from ruamel.yaml.tag import Tag

    args = dict(embedding_dim=head.embedding_dim, **head.sizes(), **head.config())
    tag = f"!new:{type(head).__module__}.{type(head).__qualname__}"
    node = doc.get("classifier")
    if node is None:
        doc["classifier"] = _tagged(args, tag)
    else:
        for key in list(node):  # in place: modules/pretrainer alias the same node
            del node[key]
        node.update(args)
        node.yaml_set_ctag(Tag(suffix=tag))
    if "label_encoder" in doc:
        size = CommentedSeq([doc["label_encoder"], head.n_classes])
        size.fa.set_flow_style()
        size.yaml_set_ctag(Tag(suffix="!apply:speechbrain.dataio.encoder.CategoricalEncoder.expect_len"))
        doc["__label_encoder_size"] = size
    return doc


def word_document(recipe_text, head):
    """The ``hyperparams.yaml`` of a word model built from a recipe's YAML text."""
    from ruamel.yaml.comments import CommentedMap

    doc = load_resolved(recipe_text)
    missing = [k for k in ENCODER_KEYS if k not in doc]
    if missing:
        raise ValueError(
            f"the recipe's YAML lacks {missing}: a word model needs compute_features, "
            "mean_var_norm and embedding_model (what EncoderClassifier runs)"
        )
    keep = closure(doc, [doc[k] for k in ENCODER_KEYS])
    out = CommentedMap()
    for key in keep:
        out[key] = doc[key]
    rate = doc.get("sample_rate", 16000)
    out["audio_normalizer"] = _tagged({"sample_rate": rate}, "!new:speechbrain.dataio.preprocess.AudioNormalizer")
    out["label_encoder"] = _tagged({}, "!new:speechbrain.dataio.encoder.CategoricalEncoder")
    set_classifier(out, head)
    out["modules"] = CommentedMap([(k, out[k]) for k in ENCODER_KEYS + ("classifier",)])
    loadables = CommentedMap([(k, out[k]) for k in ("embedding_model", "mean_var_norm", "classifier",
                                                   "label_encoder")])
    out["pretrainer"] = _tagged({"loadables": loadables}, "!new:speechbrain.utils.parameter_transfer.Pretrainer")
    return out


def label_encoder_for(words):
    """A SpeechBrain ``CategoricalEncoder`` with ``words`` at indices 0, 1, ..."""
    from speechbrain.dataio.encoder import CategoricalEncoder

    enc = CategoricalEncoder()
    for w in words:
        enc.add_label(str(w))
    enc.expect_len(len(words))
    return enc


HEADER = (
    "SpeechBrain word classifier (few-shot spoken terms), exported by sb-meta.\n"
    "  from speechbrain.inference.classifiers import EncoderClassifier\n"
    "  model = EncoderClassifier.from_hparams(source=\"<this folder>\", savedir=\"<this folder>\")\n"
    "  model.classify_file(\"recording.wav\")   # needs enrolled words: sb-meta words enrol\n"
    "sbmeta.json holds the strategy, the training classes and the enrolment records."
)


def write_word_folder(folder, doc, loadables, info, reference=None, force=False, verify=True):
    """Write a word model folder atomically; check that it loads and reproduces ``reference``.

    Arguments
    ---------
    folder : str or pathlib.Path
    doc : ruamel CommentedMap
        The ``hyperparams.yaml`` document.
    loadables : dict
        ``embedding_model``, ``mean_var_norm``, ``classifier``, ``label_encoder``.
    info : dict
        ``sbmeta.json`` content (format, files and interface are added).
    reference : callable, optional
        ``f(wavs, lens) -> embeddings [B, dim]`` the folder must reproduce.
    force : bool
        Replace an earlier sb-meta export at ``folder``.
    verify : bool
        Load the folder with ``EncoderClassifier`` before it replaces ``folder``.

    Returns
    -------
    pathlib.Path
    """
    with atomic_folder(folder, force=force) as tmp:
        text = "".join(f"# {line}".rstrip() + "\n" for line in HEADER.splitlines()) + "\n" + dump(doc)
        (tmp / HPARAMS_FILE).write_text(text, encoding="utf-8")
        written = [HPARAMS_FILE, META_FILE]
        for name, obj in loadables.items():
            file = safe_name(name, "loadable", suffix=".ckpt")
            save_loadable(obj, tmp / file)
            written.append(file)
        full = dict(info, files=sorted(written), format=FORMAT, interface=INTERFACE, kind=KIND)
        (tmp / META_FILE).write_text(json.dumps(jsonable(full), indent=2) + "\n", encoding="utf-8")
        if verify:
            _verify(tmp, reference, loadables["classifier"])
    logger.info("exported the word model to %s", folder)
    return pathlib.Path(folder)


def _verify(folder, reference, head):
    from sb_meta.export.plan import load_interface

    try:
        model = load_interface(INTERFACE, folder, savedir=folder, device="cpu")
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(f"the word model does not load with EncoderClassifier.from_hparams: "
                           f"{type(exc).__name__}: {exc}") from exc
    wavs, lens = probe_batch(16000)
    # the same random numbers for both forwards: SpeechBrain's StatisticsPooling
    # (x-vectors) adds a little Gaussian noise to its statistics, even in eval mode
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        got = model.encode_batch(wavs, lens).reshape(2, -1)
        if reference is not None:
            torch.manual_seed(0)
            want = reference(wavs, lens).detach().cpu().reshape(2, -1)
            if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                raise RuntimeError(
                    "the exported word model does not reproduce the brain's embeddings; does "
                    "compute_forward run embedding_model(mean_var_norm(compute_features(wavs)))?"
                )
        if head.n_classes:
            model.classify_batch(wavs, lens)


def export_word_brain(brain, folder, hparams_file=None, force=False, verify=True):
    """Export a trained word brain (recipes/AN4Words) as a word model with no word enrolled.

    Arguments
    ---------
    brain : sb_meta.MetaBrain
        Trained with a strategy of ``plugins/metric.py`` (its ``head`` is exported).
    folder : str or pathlib.Path
    hparams_file : str or pathlib.Path, optional
        The recipe's YAML (default: the copy SpeechBrain saved in ``output_folder``).
    force, verify : bool
        As for :func:`write_word_folder`.

    Returns
    -------
    pathlib.Path
    """
    import copy

    import speechbrain as sb
    from speechbrain.dataio.batch import PaddedBatch

    head = getattr(brain.strategy, "head", None)
    if head is None:
        raise ValueError(f"strategy {brain.strategy.name!r} has no word head; train with protonet, "
                         "matching or finetune_classifier")
    if hparams_file is None:
        hparams_file = pathlib.Path(brain.hparams.output_folder) / HPARAMS_FILE
    text = pathlib.Path(hparams_file).read_text(encoding="utf-8")
    head = copy.deepcopy(head).cpu()
    doc = word_document(text, head)
    modules = brain.modules
    for key in ("embedding_model", "mean_var_norm"):
        if key not in modules:
            raise ValueError(f"the brain's modules lack {key!r} (declare it under modules: in the YAML)")
    memo = {}
    loadables = {
        "embedding_model": copy.deepcopy(modules["embedding_model"], memo).cpu(),
        "mean_var_norm": copy.deepcopy(modules["mean_var_norm"], memo).cpu(),
        "classifier": head,
        "label_encoder": label_encoder_for([]),
    }
    hp = brain.hparams
    info = {
        "created": now(),
        "versions": versions(),
        "strategy": brain.strategy.name,
        "head": type(head).__name__,
        "embedding_dim": head.embedding_dim,
        "words": [],
        "train_classes": list(getattr(hp, "word_classes", None) or []),
        "meta_config": jsonable(dict(brain.meta_config)),
        "base_model": {"hparams_file": str(hparams_file), "output_folder": getattr(hp, "output_folder", None),
                       "seed": getattr(hp, "seed", None),
                       "train_minutes": round(getattr(brain, "train_minutes", 0.0), 2)},
        "enrolments": [],
    }

    def reference(wavs, lens):
        items = []
        for i, (w, rel) in enumerate(zip(wavs, lens)):
            items.append({"id": f"probe{i}", "sig": w[: int(round(float(rel) * wavs.shape[1]))]})
        saved = [(m, m.training) for m in modules.modules()]
        try:
            modules.eval()
            with torch.no_grad():
                return brain.compute_forward(PaddedBatch(items), sb.Stage.TEST)
        finally:
            for m, mode in saved:
                m.training = mode

    return write_word_folder(folder, doc, loadables, info, reference=reference, force=force, verify=verify)
