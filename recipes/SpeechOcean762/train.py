#!/usr/bin/env python3
"""Meta-train a speech recognizer over the speakers of speechocean762.

speechocean762 (OpenSLR 101) is English read by 250 native Mandarin speakers,
children and adults, 20 utterances each. To run (the root holds the published
``train/``, ``test/`` and ``WAVE/`` folders)::

    python recipes/SpeechOcean762/train.py recipes/SpeechOcean762/hparams/crdnn_ctc_meta.yaml \
        --data_folder=$SBMETA_SPEECHOCEAN762_ROOT --meta_strategy=fomaml --inner_steps=3

The YAML families are the AN4 recipe's (a CRDNN with a CTC head, the same with
an attention decoder, a Transformer) and so are the brain's forward pass, the
data pipeline and the loop; this recipe owns its brain, its manifests and three
keys of its own:

- ``train_age_group``: ``adult`` (or ``child``) trains and validates on that
  age group's speakers only: an adults-only base makes the adult-to-child shift;
- ``train_utterances``: keep only this many training utterances (drawn with
  ``data_seed``): domain adaptation from a few transcribed utterances;
- ``untranscribed_children``: add this many child utterances of the training
  speakers to an adults-only training set without their transcripts (no
  recognition loss; an add-on such as ``dann`` with ``dann_column: age_group``
  learns from their audio);
- ``init_from`` with a character model of another corpus (e.g. an AN4 export)
  keeps that model's label order and gives characters it lacks unused output
  rows (see :func:`sb_meta.recipe.prepare_tokenizer`).
"""

import pathlib
import random
import sys

import speechbrain as sb
import torch

from sb_meta.data.manifest import read_manifest, write_manifest
from sb_meta.recipe import RecipeError, run_main
from sb_meta.utils import load_script

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speechocean762_prepare import EXTRA_COLUMNS, prepare_speechocean762  # noqa: E402

an4 = load_script(HERE.parent / "AN4" / "train.py", "sbmeta_recipe_an4")


def dataio_prepare(hparams, csvs):
    """The AN4 recipe's datasets, each batch also carrying ``transcribed`` (1.0, or 0.0 for
    the untranscribed utterances ``untranscribed_children`` adds)."""
    datasets = an4.dataio_prepare(hparams, csvs)
    items = list(datasets.values())
    untranscribed = hparams.get("untranscribed_ids") or set()

    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides("transcribed")
    def transcribed_pipeline(uid):
        return torch.tensor(0.0 if uid in untranscribed else 1.0)

    sb.dataio.dataset.add_dynamic_item(items, transcribed_pipeline)
    sb.dataio.dataset.set_output_keys(items, ["id", "sig", "wrd", "tokens", "tokens_bos", "tokens_eos", "transcribed"])
    return datasets


class ASR(an4.ASR):
    """The AN4 recipe's brain (CRDNN or Transformer, CTC head, optional attention decoder).

    Untranscribed training utterances (``untranscribed_children``) give no recognition
    loss: their CTC term is weighted 0, so only the add-ons' terms (e.g. ``dann``'s domain
    loss on the encoder features) learn from their audio.
    """

    def compute_objectives(self, predictions, batch, stage):
        weights = getattr(batch, "transcribed", None)
        if stage != sb.Stage.TRAIN or weights is None or bool((weights > 0).all()) or \
                predictions.seq_log_probs is not None:
            return super().compute_objectives(predictions, batch, stage)
        tokens, tokens_lens = batch.tokens
        weights = weights.to(predictions.log_probs.device)
        if predictions.extra.get("augmented"):
            replicate = self.hparams.wav_augment.replicate_labels
            tokens, tokens_lens, weights = replicate(tokens), replicate(tokens_lens), replicate(weights)
        per_utt = self.hparams.ctc_cost(predictions.log_probs, tokens, predictions.lengths, tokens_lens,
                                        reduction="batch")
        # a batch of untranscribed utterances only still keeps the graph (a zero loss)
        return (per_utt * weights).sum() / weights.sum().clamp(min=1.0)


def prepare(hparams):
    """Write (or reuse) the manifests and return the ones this run trains on, by split.

    ``train_age_group`` and ``train_utterances`` select from ``train.csv`` (and
    the age group from ``dev.csv``) into ``train_<selection>.csv`` /
    ``dev_<group>.csv`` beside them; the test set is always all test speakers and
    the tokenizer's alphabet always that of the whole training set.
    """
    folder = pathlib.Path(hparams["prepare_folder"])
    data_seed = hparams.get("data_seed", hparams["seed"])
    sb.utils.distributed.run_on_main(
        prepare_speechocean762,
        kwargs=dict(data_folder=hparams["data_folder"], save_folder=str(folder),
                    dev_speakers=hparams["dev_speakers"], seed=data_seed),
    )
    # the alphabet is always the whole training set's: a subset may lack a rare letter (Q, X, Z)
    csvs = {"train": folder / "train.csv", "valid": folder / "dev.csv", "test": folder / "test.csv",
            "tokenizer": folder / "train.csv"}
    group, count = hparams.get("train_age_group"), hparams.get("train_utterances")
    if group not in (None, "adult", "child"):
        raise RecipeError(f"train_age_group must be null, adult or child, not {group!r}")
    if group:
        csvs["train"] = _select(csvs["train"], f"train_{group}.csv", group=group)
        csvs["valid"] = _select(csvs["valid"], f"dev_{group}.csv", group=group)
    if count is not None:
        name = csvs["train"].stem + f"_{int(count)}utt_seed{data_seed}.csv"
        csvs["train"] = _select(csvs["train"], name, count=int(count), seed=data_seed)
    extra = hparams.get("untranscribed_children")
    if extra:
        if group != "adult":
            raise RecipeError("untranscribed_children adds child audio to an adults-only training set: "
                              "set train_age_group: adult")
        children = _select(folder / "train.csv", f"train_child_{int(extra)}utt_seed{data_seed}.csv",
                           group="child", count=int(extra), seed=data_seed)
        # the ids dataio_prepare marks untranscribed (their transcripts stay in the manifest,
        # which the pipeline needs, but no loss reads them)
        hparams["untranscribed_ids"] = {r["ID"] for r in read_manifest(children)}
        merged = csvs["train"].with_name(csvs["train"].stem + f"_plus{int(extra)}untranscribed.csv")
        sb.utils.distributed.run_on_main(
            write_manifest, args=[merged, read_manifest(csvs["train"]) + read_manifest(children)],
            kwargs={"extra_columns": EXTRA_COLUMNS})
        csvs["train"] = merged
    return csvs


def _select(source, name, group=None, count=None, seed=0):
    """Write the rows of ``source`` of one age group, or ``count`` of them drawn with ``seed``."""
    target = source.with_name(name)

    def write():
        rows = read_manifest(source)
        if group:
            rows = [r for r in rows if r["age_group"] == group]
        if count is not None:
            if not 0 < count <= len(rows):
                raise RecipeError(f"train_utterances={count}: {source} has {len(rows)} utterances")
            rows = random.Random(seed).sample(rows, count)
        if not rows:
            raise RecipeError(f"{source} has no {group} speaker")
        write_manifest(target, rows, extra_columns=EXTRA_COLUMNS)

    sb.utils.distributed.run_on_main(write)
    return target


def main(argv):
    """Prepare, train, test and export on speechocean762; returns the trained brain."""
    return an4.main(argv, prepare_data=prepare, brain_class=ASR)


if __name__ == "__main__":
    run_main(main)
