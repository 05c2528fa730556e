"""What every sb-meta recipe shares: loading its YAML with clear errors,
tokenizers, ``init_from``, checks of the data, and a ``main`` wrapper.

A recipe's ``train.py`` keeps SpeechBrain's layout (its own Brain subclass of
:class:`sb_meta.MetaBrain`, ``dataio_prepare``, ``main``) and calls these::

    if __name__ == "__main__":
        sb_meta.recipe.run_main(main)   # user errors: one line, exit code 2

    def main(argv):
        hparams_file, run_opts, overrides, hparams = load_hparams(argv)
        ...

Example
-------
>>> import tempfile, pathlib
>>> yaml = pathlib.Path(tempfile.mkdtemp()) / "h.yaml"
>>> _ = yaml.write_text("inner_steps: 1\\nlr: 0.1\\n")
>>> load_hparams([str(yaml), "--inner_stepz=3"])
Traceback (most recent call last):
...
sb_meta.utils.RecipeError: unknown key 'inner_stepz' (did you mean 'inner_steps'?) on the command line; ...
"""

import contextlib
import difflib
import logging
import pathlib
import shutil
import sys

import speechbrain as sb

from sb_meta.data.audio import read_audio_checked
from sb_meta.plugins import PluginError
from sb_meta.utils import RecipeError

logger = logging.getLogger(__name__)

__all__ = [
    "RecipeError",
    "load_hparams",
    "run_main",
    "prepare_tokenizer",
    "check_transcripts",
    "load_initialisation",
    "recipe_setup",
    "train_loader",
    "learning_curve_point",
    "read_audio_checked",
]


def _yaml_keys(path):
    from ruamel.yaml import YAML

    with open(path, encoding="utf-8") as f:
        doc = YAML(typ="rt").load(f)
    return list(doc or {})


def load_hparams(argv):
    """``(hparams_file, run_opts, overrides, hparams)`` of a recipe's command line.

    SpeechBrain's ``parse_arguments`` and ``load_hyperpyyaml``, with the
    mistakes users make turned into :class:`RecipeError` s that name the
    culprit: a missing YAML file, an override key the YAML does not have (with
    a "did you mean"), a YAML that hyperpyyaml cannot load.
    """
    from hyperpyyaml import load_hyperpyyaml

    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    if not pathlib.Path(hparams_file).is_file():
        raise RecipeError(f"hyperparameters file {hparams_file} does not exist")
    keys = _yaml_keys(hparams_file)
    given = overrides if isinstance(overrides, dict) else _override_dict(overrides)
    plugin_keys = _plugin_option_keys()
    extra = []  # plugin options the YAML does not set (their defaults live in the plugin)
    for key in given:
        if key in keys:
            continue
        if key in plugin_keys:
            extra.append(key)
            continue
        close = difflib.get_close_matches(key, keys + sorted(plugin_keys), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(
            f"unknown key {key!r}{hint} on the command line; {hparams_file} has no such key"
        )
    try:
        with open(hparams_file, encoding="utf-8") as fin:
            text = fin.read()
        if extra:
            text += "\n# plugin options given on the command line\n" + "".join(f"{k}: null\n" for k in extra)
        hparams = load_hyperpyyaml(text, overrides)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise RecipeError(f"cannot load {hparams_file}: {type(exc).__name__}: {exc}") from exc
    return hparams_file, run_opts, overrides, hparams


def _plugin_option_keys():
    """The YAML keys every registered strategy and add-on declares (their ``options``)."""
    try:
        from sb_meta.plugins import PluginRegistry

        registry = PluginRegistry(strict=False)
    except Exception:  # noqa: BLE001 - the brain reports plugin errors
        return set()
    return {key for cls in registry.configurables() for key in cls.options}


def _override_dict(overrides):
    if not overrides:
        return {}
    from ruamel.yaml import YAML

    return dict(YAML(typ="safe").load(overrides) or {})


#: errors a user causes (configuration, data, files): reported without a traceback
USER_ERRORS = (RecipeError, KeyError, ValueError, FileNotFoundError, FileExistsError, PermissionError,
               ImportError, PluginError)


def run_main(main, argv=None):
    """Run a recipe's ``main(argv)``; a user error ends in one clear line and exit code 2.

    ``--verbose`` on the command line (removed before ``main`` sees it) shows
    the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    try:
        main(argv)
    except USER_ERRORS as exc:
        if verbose:
            raise
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"{pathlib.Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
        print("(run again with --verbose for the traceback)", file=sys.stderr)
        sys.exit(2)


def _output_folder(hparams_file, overrides):
    """The ``output_folder`` a recipe run will use, without building any object."""
    from hyperpyyaml import resolve_references
    from ruamel.yaml import YAML

    try:
        with open(hparams_file, encoding="utf-8") as f:
            text = resolve_references(f, overrides).getvalue()
        value = YAML().load(text).get("output_folder")
    except Exception:  # noqa: BLE001 - load_hparams reports YAML problems
        return None
    return pathlib.Path(value) if isinstance(value, str) else None


@contextlib.contextmanager
def recipe_setup(argv):
    """Load a recipe's command line (:func:`load_hparams`) for its set-up.

    Yields ``(hparams_file, run_opts, overrides, hparams)``. If anything in
    the block fails and the experiment's ``output_folder`` did not exist
    before, the folder is removed: a mistake in the YAML, the command line or
    the data leaves no half-filled experiment folder (SpeechBrain's
    checkpointer creates it as soon as the YAML is loaded).
    """
    hparams_file, _, overrides = sb.parse_arguments(list(argv))
    folder = _output_folder(hparams_file, overrides) if pathlib.Path(hparams_file).is_file() else None
    existed = folder is None or folder.exists()
    try:
        yield load_hparams(argv)
    except BaseException:
        if not existed and folder.exists() and sb.utils.distributed.if_main_process():
            shutil.rmtree(folder, ignore_errors=True)
        raise


def prepare_tokenizer(hparams, train_csv, save_folder):
    """Create (or reload) the recipe's tokenizer, ``hparams["tokenizer"]``.

    ``speechbrain.dataio.encoder.CTCTextEncoder`` (characters): built from the
    training transcripts with the CTC blank at index 0 and ``<unused_i>``
    labels up to ``output_neurons`` (so every network output decodes); with
    ``init_from`` naming a character model, that model's label order is kept
    and characters it lacks take its ``<unused_i>`` slots (cross-corpus
    initialisation: every pretrained output row stays tied to its character);
    ``sentencepiece.SentencePieceProcessor``: trained with SpeechBrain's
    SentencePiece wrapper (``tokenizer_type`` unigram/bpe/char,
    ``output_neurons`` pieces) with id 0 reserved (``unk_id: 0``, SpeechBrain's
    CTC blank) and ``bos_index`` / ``eos_index`` for attention decoders.
    Either is saved in ``save_folder`` and reused; it runs on the main process
    first (DDP-safe).

    Returns
    -------
    The tokenizer object (the same one the YAML declared).
    """
    from speechbrain.dataio.encoder import CTCTextEncoder

    tok = hparams["tokenizer"]
    n_out = int(hparams["output_neurons"])
    save_folder = pathlib.Path(save_folder)
    if isinstance(tok, CTCTextEncoder):
        path = save_folder / "tokenizer.txt"

        def create():
            if path.is_file():
                return
            from sb_meta.data.manifest import read_manifest

            chars = sorted({c for r in read_manifest(train_csv, required=("ID", "wrd")) for c in r["wrd"]})
            base = _init_labels(hparams)
            enc = _extend_labels(base, chars, n_out) if base else _new_labels(chars, n_out)
            save_folder.mkdir(parents=True, exist_ok=True)
            enc.save(path)

        sb.utils.distributed.run_on_main(create)
        tok.load(path)
        tok.expect_len(n_out)
        if len(tok) != n_out:
            raise RecipeError(
                f"the tokenizer {path} has {len(tok)} labels but output_neurons is {n_out}; "
                "delete it or use the output_neurons it was made for"
            )
        return tok
    if hasattr(tok, "encode_as_ids"):
        from speechbrain.tokenizers.SentencePiece import SentencePiece

        kind = hparams.get("tokenizer_type", "unigram")
        folder = save_folder / "tokenizer"

        def train():
            SentencePiece(
                model_dir=str(folder), vocab_size=n_out, annotation_train=str(train_csv),
                annotation_read="wrd", model_type=kind, character_coverage=1.0,
                unk_id=0, bos_id=int(hparams.get("bos_index", 1)), eos_id=int(hparams.get("eos_index", 2)),
            )

        sb.utils.distributed.run_on_main(train)
        model = folder / f"{n_out}_{kind}.model"
        tok.load(str(model))
        if tok.vocab_size() != n_out:
            raise RecipeError(
                f"the {kind} SentencePiece model {model} has {tok.vocab_size()} pieces (specials "
                f"included) but output_neurons is {n_out}; set output_neurons: {tok.vocab_size()} "
                "(every network output must be a piece the tokenizer can decode)"
            )
        return tok
    raise RecipeError(
        f"tokenizer must be a speechbrain.dataio.encoder.CTCTextEncoder or a "
        f"sentencepiece.SentencePieceProcessor, got {type(tok).__name__}"
    )


def train_loader(brain, hparams, train_data):
    """What a recipe hands to ``fit``: an episode loader, or with
    ``plain_batches: True`` (a meta key; strategies with a ``batch_backward``,
    the joint and finetune baselines) the dataset itself, for ordinary
    shuffled batches. ``hparams`` is kept for the recipes' calls; the key is
    read from the brain's :class:`~sb_meta.strategy.MetaConfig`."""
    if not brain.meta_config["plain_batches"]:
        return brain.make_episode_loader(train_data)
    if not hasattr(brain.strategy, "batch_backward"):
        raise RecipeError(
            f"plain_batches: True trains on ordinary batches, but strategy "
            f"{brain.strategy.name!r} needs episodes; use joint or finetune, or plain_batches: False"
        )
    return train_data


def learning_curve_point(brain, dataset, path, loader_kwargs=None, **values):
    """Score ``dataset`` (e.g. the test set) with the brain's current weights and
    append a point to the JSON list in ``path``: minutes of training, WER, CER and
    ``values`` (epoch, dev WER...). For learning curves only: nothing is chosen
    on these scores. The brain must have ``transcribe(predictions, stage)``.
    """
    import json

    import torch
    from speechbrain.utils.metric_stats import ErrorRateStats

    wer, cer = ErrorRateStats(), ErrorRateStats()
    loader = brain.make_dataloader(dataset, sb.Stage.TEST, ckpt_prefix=None, **(loader_kwargs or {}))
    training = brain.modules.training
    brain.modules.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                hyps = brain.transcribe(brain.compute_forward(batch, sb.Stage.TEST), sb.Stage.TEST)
                wer.append(batch.id, [h.split() for h in hyps], [w.split() for w in batch.wrd])
                cer.append(batch.id, [list(h) for h in hyps], [list(w) for w in batch.wrd])
    finally:
        brain.modules.train(training)
    point = dict(minutes=round(brain.train_minutes, 2), wer=wer.summarize("error_rate"),
                 cer=cer.summarize("error_rate"), **values)
    path = pathlib.Path(path)
    points = json.loads(path.read_text()) if path.is_file() else []
    points.append(point)
    path.write_text(json.dumps(points, indent=1) + "\n")
    return point


def encode_text(tokenizer, text):
    """Token ids of ``text`` (characters or SentencePiece pieces)."""
    if hasattr(tokenizer, "encode_as_ids"):
        return tokenizer.encode_as_ids(text)
    return tokenizer.encode_sequence(list(text))


def check_transcripts(tokenizer, csvs):
    """Every transcript of the manifests is non-empty and encodable; raise a
    :class:`RecipeError` naming the file, utterance and characters otherwise."""
    from sb_meta.data.manifest import read_manifest

    problems = []
    for split, path in csvs.items():
        for row in read_manifest(path, required=("ID", "duration", "wav", "wrd"), nonempty=("ID", "wav")):
            text = row["wrd"]
            if not text.strip():
                problems.append(f"{path}: utterance {row['ID']}: empty transcript")
                continue
            if hasattr(tokenizer, "lab2ind"):
                unknown = sorted({c for c in text if c not in tokenizer.lab2ind})
                if unknown:
                    problems.append(
                        f"{path}: utterance {row['ID']}: characters {unknown} are not in the "
                        "training transcripts (the tokenizer's alphabet)"
                    )
            elif 0 in tokenizer.encode_as_ids(text):
                problems.append(f"{path}: utterance {row['ID']}: text the SentencePiece model cannot encode")
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... ({len(problems)} in all)" if len(problems) > 10 else ""
        raise RecipeError(f"{len(problems)} bad transcript(s):\n  {shown}{more}")


def _new_labels(chars, n_out):
    """A character encoder: blank at 0, ``chars``, ``<unused_i>`` up to ``n_out``."""
    from speechbrain.dataio.encoder import CTCTextEncoder

    enc = CTCTextEncoder()
    enc.insert_blank("<blank>", index=0)
    for c in chars:
        enc.add_label(c)
    if len(enc) > n_out:
        raise RecipeError(
            f"the training transcripts have {len(chars)} characters (+ blank) but "
            f"output_neurons is {n_out}; raise output_neurons"
        )
    for i in range(len(enc), n_out):
        enc.add_label(f"<unused_{i}>")
    return enc


def _init_labels(hparams):
    """The label list of ``init_from``'s character tokenizer, or None."""
    folder = hparams.get("init_from")
    if not folder or not (pathlib.Path(folder) / "tokenizer.ckpt").is_file():
        return None
    from speechbrain.dataio.encoder import CTCTextEncoder

    theirs = CTCTextEncoder()
    try:
        theirs.load(pathlib.Path(folder) / "tokenizer.ckpt")
    except Exception:  # noqa: BLE001 - not a character tokenizer: nothing to keep
        return None
    return [theirs.ind2lab[i] for i in range(len(theirs))]


def _extend_labels(base, chars, n_out):
    """Model surgery for ``init_from`` across corpora: keep the pretrained model's
    label order (its output rows stay tied to their characters) and give each new
    character an ``<unused_i>`` slot, whose row the pretrained model never emitted.

    Example
    -------
    >>> enc = _extend_labels(["<blank>", "A", "B", "<unused_3>"], ["A", "C"], 4)
    >>> [enc.ind2lab[i] for i in range(4)]
    ['<blank>', 'A', 'B', 'C']
    """
    from speechbrain.dataio.encoder import CTCTextEncoder

    labels = list(base) + [f"<unused_{i}>" for i in range(len(base), n_out)]
    free = [i for i, lab in enumerate(labels) if lab.startswith("<unused_")]
    new = [c for c in chars if c not in labels]
    if len(new) > len(free) or len(labels) != n_out:
        raise RecipeError(
            f"init_from: the pretrained model has {len(base)} outputs with {len(free)} unused, "
            f"output_neurons is {n_out}, and the training transcripts add {len(new)} characters "
            f"({''.join(new)!r}); the output layer cannot hold them"
        )
    for c, i in zip(new, free):
        labels[i] = c
    enc = CTCTextEncoder()
    enc.insert_blank(labels[0], index=0)
    for lab in labels[1:]:
        enc.add_label(lab)
    return enc


def load_initialisation(hparams, folder):
    """Initialise the recipe's model from an exported folder (``init_from``).

    The loadables of the recipe's ``inference:`` section that are modules or
    statistics (``model``, ``normalizer``...) are loaded from
    ``<folder>/<name>.ckpt`` with SpeechBrain's ``Pretrainer``; the tokenizer
    must be the same as the recipe's (the output layer's rows are tied to it),
    or extend it into its unused labels (:func:`prepare_tokenizer`).
    Only weights are taken: the optimizer, the epoch counter and the episode
    stream start afresh, and a checkpoint already in the experiment's
    ``save_folder`` still takes precedence (``fit`` recovers it afterwards).

    Raises
    ------
    FileNotFoundError
        When ``folder`` or a file is missing (named).
    RecipeError
        When the tokenizers or the network shapes differ.

    Example
    -------
    >>> load_initialisation({"inference": {"loadables": {}}}, "/no/such/folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: init_from: /no/such/folder is not a folder
    """
    from speechbrain.utils.parameter_transfer import Pretrainer

    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"init_from: {folder} is not a folder")
    loadables = dict((hparams.get("inference") or {}).get("loadables") or {})
    tok = loadables.pop("tokenizer", None)
    missing = [str(folder / f"{n}.ckpt") for n in loadables if not (folder / f"{n}.ckpt").is_file()]
    if missing:
        raise FileNotFoundError(f"init_from: {folder} lacks {', '.join(missing)}")
    if tok is not None and (folder / "tokenizer.ckpt").is_file():
        _check_same_tokenizer(tok, folder / "tokenizer.ckpt", folder)
    pretrainer = Pretrainer(
        collect_in=str(folder), loadables=loadables,
        paths={n: str((folder / f"{n}.ckpt").resolve()) for n in loadables},
    )
    pretrainer.collect_files()
    try:
        pretrainer.load_collected()
    except RuntimeError as exc:
        raise RecipeError(f"init_from: {folder} does not fit this recipe's model: {exc}") from None
    logger.info("Initialised %s from %s", ", ".join(loadables), folder)


def _check_same_tokenizer(tok, path, folder):
    if hasattr(tok, "lab2ind"):
        from speechbrain.dataio.encoder import CTCTextEncoder

        theirs = CTCTextEncoder()
        try:
            theirs.load(path)
            # the same, or extended into unused slots by _extend_labels
            same = len(theirs) == len(tok) and all(
                lab == tok.ind2lab[i] or lab.startswith("<unused_") for i, lab in theirs.ind2lab.items())
        except Exception:  # noqa: BLE001 - unreadable counts as different
            same = False
    else:
        same = path.read_bytes() == tok.serialized_model_proto()
    if not same:
        raise RecipeError(
            f"init_from: the tokenizer of {folder} differs from this recipe's; the output "
            "layer would be misread (train with the same transcripts and tokenizer settings)"
        )


def ctc_greedy_words(log_probs, lengths, tokenizer, blank_index=0):
    """Greedy CTC transcripts (strings) of a batch."""
    seqs = sb.decoders.ctc_greedy_decode(log_probs, lengths, blank_id=blank_index)
    return [decode_ids(tokenizer, s) for s in seqs]


def decode_ids(tokenizer, ids):
    """The text of token ids (characters or SentencePiece pieces)."""
    ids = [int(i) for i in ids]
    if hasattr(tokenizer, "decode_ids") and hasattr(tokenizer, "encode_as_ids"):
        return tokenizer.decode_ids(ids)
    # characters only: the blank and <unused_i> padding labels read as nothing
    return "".join(lab for lab in tokenizer.decode_ndim(ids) if len(lab) == 1)
