"""What every sb-meta recipe shares: loading its YAML with clear errors,
tokenizers (:mod:`sb_meta.tokenizers`, re-exported here), ``init_from``, checks
of the data, and a ``main`` wrapper.

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
from sb_meta.tokenizers import (  # noqa: F401 - the recipes import them from here
    check_same_tokenizer,
    check_transcripts,
    ctc_greedy_words,
    decode_ids,
    encode_text,
    prepare_tokenizer,
)
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
        check_same_tokenizer(tok, folder / "tokenizer.ckpt", folder)
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
