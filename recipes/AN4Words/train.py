#!/usr/bin/env python3
"""Meta-train a few-shot spoken-term embedding over the words of CMU AN4.

To run (the AN4 root holds CMU's ``etc/`` and ``wav/``; the aligner is an
export of the AN4 CTC recipe, used once to cut the word segments)::

    python recipes/AN4Words/train.py recipes/AN4Words/hparams/protonet.yaml \\
        --data_folder=$SBMETA_AN4_ROOT --aligner_folder=results/AN4/joint/1234/pretrained

The same script trains prototypical networks (``protonet.yaml``), matching
networks (``matching.yaml``) and the fine-tuned-classifier baseline
(``finetune_classifier.yaml``): the YAML's ``meta_strategy`` picks the
strategy of ``plugins/metric.py``. Tasks are words (``task_column: word``): an
episode of ``meta_batch_tasks`` words with ``k_support`` / ``k_query``
segments each is an N-way k-shot episode over the meta-train classes.
Validation and test report N-way k-shot accuracy (``eval_way``, ``eval_shots``,
``valid_query`` / ``eval_query``, ``valid_episodes`` / ``test_episodes``) on the meta-valid and
meta-test classes, spoken by speakers the training never saw; the checkpoint
with the best validation accuracy is tested and exported as a SpeechBrain
``EncoderClassifier`` folder (``export_folder``, see
:mod:`sb_meta.words.export`) to which ``sb-meta words enrol`` adds words.

Manifests (``train.csv``, ``valid.csv``, ``test.csv``: ``ID, duration, wav,
start, stop, word, spk_id``) are written by ``an4words_prepare.py`` beside this
file into ``prepare_folder``; ``extra_train_csvs`` adds more meta-training
sources (e.g. ``sb-meta words synth``'s ``train.csv``), whose words that are
validation or test classes are left out.
"""

import logging
import pathlib
import sys

import speechbrain as sb
import torch

from sb_meta import MetaBrain
from sb_meta.recipe import RecipeError, recipe_setup, run_main

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from an4words_prepare import prepare_an4words  # noqa: E402

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


class WordEmbedder(MetaBrain):
    """Fbank -> per-utterance normalisation -> embedding model: one vector per segment.

    ``compute_forward`` returns the embeddings ``[batch, dim]``; the strategy
    classifies them (prototypes, matching attention, a softmax). In
    validation and test, ``compute_objectives`` only collects them; the
    episodes are scored in ``on_stage_end``.
    """

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        feats = self.hparams.compute_features(wavs)
        feats = self.modules.mean_var_norm(feats, wav_lens)
        emb = self.modules.embedding_model(feats, wav_lens)
        return emb.reshape(emb.shape[0], -1)

    def compute_objectives(self, predictions, batch, stage):
        if stage != sb.Stage.TRAIN:
            self.collected.append((predictions.detach().cpu(), list(batch.id), list(batch.word)))
        return torch.zeros((), device=self.device)

    def on_stage_start(self, stage, epoch):
        self.collected = []

    def few_shot(self, stage):
        """N-way k-shot accuracies (per shot) of the collected embeddings.

        The episodes are drawn with ``eval_seed`` (the training ``seed`` when
        the YAML has none), so runs with other training seeds are scored on
        the same episodes: paired comparisons.
        """
        from sb_meta.words.evaluation import confidence_interval, episode_accuracies

        emb = torch.cat([e for e, _, _ in self.collected])
        words = [w for _, _, b in self.collected for w in b]
        hp = self.hparams
        if stage == sb.Stage.VALID:
            episodes, queries = hp.valid_episodes, getattr(hp, "valid_query", None) or hp.eval_query
        else:
            episodes, queries = hp.test_episodes, hp.eval_query
        out = {}
        for k in hp.eval_shots:
            accs = episode_accuracies(emb, words, self.strategy.head, hp.eval_way, int(k), queries,
                                      episodes, seed=getattr(hp, "eval_seed", hp.seed))
            out[int(k)] = confidence_interval(accs)
        return out

    def on_stage_end(self, stage, stage_loss, epoch):
        if stage == sb.Stage.TRAIN:
            acc = self.strategy.pop_train_accuracy()
            self.train_stats = {"loss": stage_loss, "minutes": round(self.train_minutes, 2)}
            if acc is not None:
                self.train_stats["accuracy"] = round(acc, 4)
            return
        results = self.few_shot(stage)
        way = self.hparams.eval_way
        stats = {f"acc_{way}w{k}s": r["mean"] for k, r in results.items()}
        stats.update({f"ci95_{way}w{k}s": r["ci95"] for k, r in results.items()})
        main_key = f"acc_{way}w{max(results)}s"
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats({"epoch": epoch}, train_stats=self.train_stats,
                                                valid_stats=stats)
            self.checkpointer.save_and_keep_only(
                meta={"accuracy": stats[main_key], "minutes": self.train_minutes},
                max_keys=["accuracy"], num_to_keep=self.hparams.checkpoints_to_keep,
            )
        else:
            self.test_results = results
            self.hparams.train_logger.log_stats({"Epoch loaded": self.hparams.epoch_counter.current},
                                                test_stats=stats)


def dataio_prepare(hparams, csvs):
    """SpeechBrain datasets with ``sig`` (the word segment), ``word`` and ``spk_id``.

    ``csvs`` maps each split to a manifest path or a list of them (concatenated).
    """
    datasets = {}
    for split, paths in csvs.items():
        paths = paths if isinstance(paths, (list, tuple)) else [paths]
        data = {}
        for path in paths:
            part = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=str(path))
            for uid in part.data_ids:
                if uid in data:
                    raise RecipeError(f"segment ID {uid} of {path} is also in another {split} manifest")
                data[uid] = part.data[uid]
        datasets[split] = sb.dataio.dataset.DynamicItemDataset(data)
        if split != "train":
            datasets[split] = datasets[split].filtered_sorted(sort_key="duration")
    items = list(datasets.values())

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, stop):
        sig = sb.dataio.dataio.read_audio({"file": wav, "start": int(start), "stop": int(stop)})
        if sig.dim() > 1:
            sig = sig.mean(-1)
        return sig

    sb.dataio.dataset.add_dynamic_item(items, audio_pipeline)
    sb.dataio.dataset.set_output_keys(items, ["id", "sig", "word", "spk_id"])
    return datasets


def read_words(path):
    from sb_meta.data.manifest import read_manifest

    return read_manifest(path, required=("ID", "duration", "wav", "start", "stop", "word", "spk_id"),
                         nonempty=("ID", "wav", "word", "spk_id"), numeric=("duration", "start", "stop"))


def check_disjoint(csvs):
    """Meta-train, meta-valid and meta-test classes (and speakers) must not overlap."""
    classes = {s: {r["word"] for p in csvs[s] for r in read_words(p)} for s in SPLITS}
    speakers = {s: {r["spk_id"] for p in csvs[s] for r in read_words(p)} for s in SPLITS}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        for what, sets in (("classes", classes), ("speakers", speakers)):
            common = sorted(sets[a] & sets[b])
            if common:
                raise RecipeError(f"{a} and {b} manifests share {len(common)} {what}: {common[:10]}")
    return classes


def extra_sources(hparams, eval_classes):
    """The ``extra_train_csvs``, without the rows of validation or test classes
    (written beside the experiment as ``extra_train_<i>.csv``)."""
    from an4words_prepare import write_segments

    out = []
    for i, path in enumerate(hparams.get("extra_train_csvs") or []):
        rows = read_words(path)
        kept = [r for r in rows if r["word"] not in eval_classes]
        if len(kept) < len(rows):
            dropped = sorted({r["word"] for r in rows} & eval_classes)
            logger.info("%s: left out %d segments of validation/test classes %s", path,
                        len(rows) - len(kept), dropped)
        columns = list(rows[0]) if rows else ["ID", "duration", "wav", "start", "stop", "word", "spk_id"]
        out.append(write_segments(pathlib.Path(hparams["output_folder"]) / f"extra_train_{int(i)}.csv", kept,
                                  columns))
    return out


def prepare(hparams):
    """Write (or reuse) the word manifests; returns them by split (lists of paths)."""
    folder = pathlib.Path(hparams["prepare_folder"])
    if not all((folder / f"{s}.csv").is_file() for s in SPLITS) or hparams.get("aligner_folder"):
        sb.utils.distributed.run_on_main(
            prepare_an4words,
            kwargs=dict(data_folder=hparams["data_folder"], aligner_folder=hparams.get("aligner_folder"),
                        save_folder=str(folder), progress=False),
        )
    csvs = {s: [folder / f"{s}.csv"] for s in SPLITS}
    classes = check_disjoint(csvs)
    csvs["train"] += extra_sources(hparams, classes["valid"] | classes["test"])
    return csvs


def main(argv):
    from sb_meta.words.export import export_word_brain

    with recipe_setup(argv) as (hparams_file, run_opts, overrides, hparams):
        sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                       hyperparams_to_save=hparams_file, overrides=overrides)
        csvs = prepare(hparams)
        datasets = dataio_prepare(hparams, csvs)
        hparams["word_classes"] = sorted({r["word"] for p in csvs["train"] for r in read_words(p)})
        brain = WordEmbedder(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                             run_opts=run_opts, checkpointer=hparams["checkpointer"])
        train_loader = brain.make_episode_loader(datasets["train"])
    brain.fit(hparams["epoch_counter"], train_loader, datasets["valid"],
              valid_loader_kwargs=hparams["valid_dataloader_opts"])
    brain.evaluate(datasets["test"], max_key="accuracy", test_loader_kwargs=hparams["test_dataloader_opts"])
    if hparams.get("export_folder"):
        sb.utils.distributed.run_on_main(export_word_brain, args=[brain, hparams["export_folder"]],
                                         kwargs={"force": True})
    return brain


if __name__ == "__main__":
    run_main(main)
