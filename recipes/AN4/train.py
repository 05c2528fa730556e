#!/usr/bin/env python3
"""Meta-train a speech recognizer over the speakers of CMU AN4.

To run (the AN4 root holds CMU's original ``etc/`` and ``wav/`` folders)::

    python recipes/AN4/train.py recipes/AN4/hparams/crdnn_ctc_meta.yaml \
        --data_folder=$SBMETA_AN4_ROOT --meta_strategy=fomaml --inner_steps=3

The same script trains every model the YAML files declare: a CRDNN with a CTC
head (``crdnn_ctc_meta.yaml``), a CRDNN with an attention decoder and a CTC
head (``crdnn_attention_meta.yaml``), a Transformer (``transformer_meta.yaml``)
and a self-supervised Hugging Face encoder with LoRA adapters and a CTC head
(``ssl_ctc_meta.yaml``), with every strategy by flag. Manifests (``train.csv``, ``dev.csv`` with whole
held-out training speakers, ``test.csv``) are written by ``an4_prepare.py``
beside this file; the trained model is exported in SpeechBrain's pretrained
format (``export_folder``).
"""

import logging
import pathlib
import sys

import speechbrain as sb
import torch

from sb_meta import MetaBrain
from sb_meta.export import check_destination, export_brain
from sb_meta.forward import family_forward
from sb_meta.schedules import TimeBudgetCosine
from sb_meta.recipe import (
    check_transcripts,
    ctc_greedy_words,
    decode_ids,
    encode_text,
    learning_curve_point,
    load_initialisation,
    prepare_tokenizer,
    read_audio_checked,
    recipe_setup,
    run_main,
    train_loader,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from an4_prepare import prepare_an4  # noqa: E402

logger = logging.getLogger(__name__)


class ASR(MetaBrain):
    """CRDNN, Transformer or SSL encoder, CTC head, optional attention decoder."""

    @property
    def attention(self):
        return "seq_lin" in self.modules and self.hparams.ctc_weight < 1.0

    def compute_forward(self, batch, stage):
        """Augmentation in training, then the model family's forward, the one test-time
        adaptation of the exported model runs too (:func:`sb_meta.forward.family_forward`)."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        tokens_bos, _ = batch.tokens_bos
        augmented = stage == sb.Stage.TRAIN and getattr(self.hparams, "train_augmentation", False)
        if augmented:  # SpeechBrain's Augmenter; labels are replicated in compute_objectives
            wavs, wav_lens = self.hparams.wav_augment(wavs, wav_lens)
            tokens_bos = self.hparams.wav_augment.replicate_labels(tokens_bos)
        predictions = family_forward(
            self.modules, wavs, wav_lens, compute_features=getattr(self.hparams, "compute_features", None),
            tokens_bos=tokens_bos, attention=self.attention, pad_index=getattr(self.hparams, "pad_index", 0),
            feature_augment=self.hparams.fea_augment if augmented else None,
        )
        predictions.extra["augmented"] = augmented
        return predictions

    def compute_objectives(self, predictions, batch, stage):
        tokens, tokens_lens = batch.tokens
        tokens_eos, tokens_eos_lens = batch.tokens_eos
        if predictions.extra.get("augmented"):
            replicate = self.hparams.wav_augment.replicate_labels
            tokens, tokens_lens = replicate(tokens), replicate(tokens_lens)
            tokens_eos, tokens_eos_lens = replicate(tokens_eos), replicate(tokens_eos_lens)
        loss = self.hparams.ctc_cost(predictions.log_probs, tokens, predictions.lengths, tokens_lens)
        if predictions.seq_log_probs is not None:
            seq_loss = self.hparams.seq_cost(
                predictions.seq_log_probs, tokens_eos, length=tokens_eos_lens
            )
            w = self.hparams.ctc_weight
            loss = w * loss + (1 - w) * seq_loss
        if stage != sb.Stage.TRAIN:
            hyps = self.transcribe(predictions, stage)
            self.wer_metric.append(batch.id, [h.split() for h in hyps], [w.split() for w in batch.wrd])
            self.cer_metric.append(batch.id, [list(h) for h in hyps], [list(w) for w in batch.wrd])
        return loss

    def transcribe(self, predictions, stage):
        """Greedy CTC for CTC models (at test, a beam search over the words of ``test_lexicon``
        when the YAML names one); the YAML's beam searcher for attention models."""
        if stage == sb.Stage.TEST and not self.attention and getattr(self.hparams, "test_lexicon", None):
            return self.lexicon_decoder(predictions.log_probs, predictions.lengths)
        searcher = getattr(self.hparams, "test_search" if stage == sb.Stage.TEST else "valid_search", None)
        if self.attention and searcher is not None:
            tokens, _, _, _ = searcher(predictions.encoder_out, predictions.lengths)
            return [decode_ids(self.tokenizer, t) for t in tokens]
        return ctc_greedy_words(predictions.log_probs, predictions.lengths, self.tokenizer)

    @property
    def tokenizer(self):
        return self.hparams.tokenizer

    @property
    def lexicon_decoder(self):
        """sb-meta's lexicon-constrained CTC search over ``test_lexicon`` (a word list or a
        manifest), made once."""
        if getattr(self, "_lexicon_decoder", None) is None:
            from sb_meta.adapt.lexicon import LexiconDecoder

            self._lexicon_decoder = LexiconDecoder.for_tokenizer(self.tokenizer, self.hparams.test_lexicon,
                                                                 blank_index=self.hparams.blank_index)
        return self._lexicon_decoder

    def on_stage_start(self, stage, epoch):
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.cer_computer()

    def on_stage_end(self, stage, stage_loss, epoch):
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = dict(stats, **self.loss_term_means(), minutes=round(self.train_minutes, 2),
                                    steps=int(self.optimizer_step))
            return
        stats["WER"] = self.wer_metric.summarize("error_rate")
        stats["CER"] = self.cer_metric.summarize("error_rate")
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            scheduler = getattr(self.hparams, "lr_annealing", None)
            if isinstance(scheduler, sb.nnet.schedulers.NewBobScheduler):  # per epoch, on dev WER
                _, new_lr = scheduler(stats["WER"])
                sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            meta = {"epoch": epoch, "lr": lr}
            self.hparams.train_logger.log_stats(meta, train_stats=self.train_stats, valid_stats=stats)
            if getattr(self.hparams, "tensorboard_logger", None) is not None:
                self.hparams.tensorboard_logger.log_stats(meta, self.train_stats, stats)
            self.checkpointer.save_and_keep_only(
                meta={"WER": stats["WER"], "minutes": self.train_minutes},
                min_keys=["WER"], num_to_keep=self.hparams.checkpoints_to_keep,
            )
            every = getattr(self.hparams, "curve_every_minutes", None)
            if every and self.train_minutes >= getattr(self, "_next_curve", 0.0):
                # test WER vs training minutes, for the learning curve only
                learning_curve_point(self, self.curve_set, self.hparams.learning_curve_file,
                                     self.hparams.test_dataloader_opts, epoch=epoch, dev_wer=stats["WER"])
                self._next_curve = self.train_minutes + every
        else:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                {"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
            )
            with open(self.hparams.test_wer_file, "w") as w:
                self.wer_metric.write_stats(w)

    def on_fit_batch_start(self, batch, should_step):
        scheduler = getattr(self.hparams, "lr_annealing", None)
        if should_step and isinstance(scheduler, TimeBudgetCosine):  # over the training budget
            budget, planned = self.meta_config["train_budget_minutes"], self.planned_steps
            progress = (self.train_minutes / budget if budget
                        else self.optimizer_step / planned if planned else 0.0)
            scheduler(self.optimizer, progress)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        scheduler = getattr(self.hparams, "lr_annealing", None)
        if should_step and isinstance(scheduler, sb.nnet.schedulers.NoamScheduler):
            scheduler(self.optimizer)  # per outer step


def dataio_prepare(hparams, csvs):
    """SpeechBrain datasets with ``sig``, ``tokens``, ``tokens_bos`` and ``tokens_eos``."""
    tokenizer = hparams["tokenizer"]
    datasets = {}
    for split, path in csvs.items():
        datasets[split] = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=str(path))
        if split != "train":
            datasets[split] = datasets[split].filtered_sorted(sort_key="duration")
    items = list(datasets.values())

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return read_audio_checked(wav, hparams["sample_rate"])

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens", "tokens_bos", "tokens_eos")
    def text_pipeline(wrd):
        yield wrd
        ids = encode_text(tokenizer, wrd)
        yield torch.LongTensor(ids)
        yield torch.LongTensor([hparams["bos_index"]] + ids)
        yield torch.LongTensor(ids + [hparams["eos_index"]])

    sb.dataio.dataset.add_dynamic_item(items, audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(items, text_pipeline)
    sb.dataio.dataset.set_output_keys(items, ["id", "sig", "wrd", "tokens", "tokens_bos", "tokens_eos"])
    return datasets


def prepare(hparams):
    """Write (or reuse) the AN4 manifests and return them by split.

    The dev speakers and the channel corruptions follow ``data_seed``, not the
    training ``seed``, so runs with several training seeds share one split and
    one prepare folder (another split would put one run's dev speakers among
    another's training speakers). A YAML without ``data_seed`` uses ``seed``.
    """
    folder = pathlib.Path(hparams["prepare_folder"])
    data_seed = hparams.get("data_seed", hparams["seed"])
    sb.utils.distributed.run_on_main(
        prepare_an4,
        kwargs=dict(data_folder=hparams["data_folder"], save_folder=str(folder),
                    dev_speakers=hparams["dev_speakers"], seed=data_seed,
                    heldout_speakers=hparams.get("heldout_speakers", 0)),
    )
    csvs = {"train": folder / "train.csv", "valid": folder / "dev.csv", "test": folder / "test.csv"}
    if hparams.get("channels"):  # every (speaker, channel) pair a task: task_column spk_channel
        from sb_meta.data.channels import prepare_channels

        sb.utils.distributed.run_on_main(
            prepare_channels, args=[csvs, folder / "channels", hparams["channels"]],
            kwargs={"seed": data_seed, "progress": False},
        )
        csvs = prepare_channels(csvs, folder / "channels", hparams["channels"], seed=data_seed,
                                progress=False)
    return csvs


def main(argv, prepare_data=prepare, brain_class=ASR):
    """Prepare the data, train, test and export; returns the trained brain.

    ``prepare_data(hparams) -> {"train", "valid", "test": manifest}`` (and
    optionally ``"tokenizer"``: the manifest whose transcripts make the alphabet) and
    ``brain_class`` let another corpus's recipe reuse the rest as it is
    (``recipes/SynthVoices/train.py``).
    """
    with recipe_setup(argv) as (hparams_file, run_opts, overrides, hparams):
        sb.utils.distributed.ddp_init_group(run_opts)
        sb.create_experiment_directory(
            experiment_directory=hparams["output_folder"],
            hyperparams_to_save=hparams_file,
            overrides=overrides,
        )
        csvs = prepare_data(hparams)
        # the tokenizer's transcripts: the training set, or those prepare_data names under
        # "tokenizer" (a run on a subset of the training set still spells the whole corpus)
        prepare_tokenizer(hparams, csvs.pop("tokenizer", csvs["train"]), hparams["save_folder"])
        check_transcripts(hparams["tokenizer"], csvs)
        datasets = dataio_prepare(hparams, csvs)
        if hparams.get("init_from"):
            # a checkpoint in save_folder (resume) still wins: fit() recovers it afterwards
            load_initialisation(hparams, hparams["init_from"])
        brain = brain_class(
            modules=hparams["modules"],
            opt_class=hparams["opt_class"],
            hparams=hparams,
            run_opts=run_opts,
            checkpointer=hparams["checkpointer"],
        )
        train_set = train_loader(brain, hparams, datasets["train"])  # episodes, or plain batches
        brain.curve_set = datasets["test"]
        if hparams.get("export_folder"):
            check_destination(hparams["export_folder"], force=True)  # refuse before training
        if hparams.get("test_lexicon") and not brain.attention:
            brain.lexicon_decoder  # a missing file or an unspellable word fails now, not after training
    train_kwargs = dict(hparams.get("train_dataloader_opts", {}))
    if hparams.get("plain_batches") and hparams.get("dynamic_batching"):
        # batches of similar durations: far less padding than shuffled fixed-size batches
        from speechbrain.dataio.sampler import DynamicBatchSampler

        train_kwargs = {"batch_sampler": DynamicBatchSampler(
            datasets["train"], length_func=lambda row: float(row["duration"]),
            **hparams["dynamic_batch_sampler"])}
    brain.fit(
        hparams["epoch_counter"],
        train_set,
        datasets["valid"],
        train_loader_kwargs=train_kwargs,
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    brain.evaluate(datasets["test"], min_key="WER", test_loader_kwargs=hparams["test_dataloader_opts"])
    if hparams.get("export_folder"):
        # the evaluated (best-WER) model, in SpeechBrain's pretrained format; the
        # folder is this experiment's own, so an earlier export of it is replaced
        sb.utils.distributed.run_on_main(export_brain, args=[brain, hparams["export_folder"]],
                                         kwargs={"force": True})
    return brain


if __name__ == "__main__":
    run_main(main)
