"""The demo's recipe: a CRDNN-CTC recognizer meta-trained over speakers.

It ships with the package (``crdnn_ctc.yaml`` beside this file), so that
``sb-meta demo`` runs from a ``pip install`` as well as from a source checkout.
It is a SpeechBrain recipe in the usual layout, reduced to what the demo needs:
a Brain subclass of :class:`sb_meta.MetaBrain` (``compute_forward`` /
``compute_objectives``), ``dataio_prepare`` and ``main``. It computes what
``recipes/SynthVoices/train.py`` computes with that recipe's
``crdnn_ctc_meta.yaml`` (a test keeps them equal), without the attention,
Transformer and augmentation options the recipes carry.

Example
-------
>>> HPARAMS.name
'crdnn_ctc.yaml'
>>> sorted(k for k in ("enc", "ctc_lin") if k in HPARAMS.read_text())
['ctc_lin', 'enc']
"""

import pathlib

import speechbrain as sb
import torch

from sb_meta.brain import MetaBrain
from sb_meta.contract import ASRPredictions
from sb_meta.export import check_destination, export_brain
from sb_meta.recipe import (
    check_transcripts,
    ctc_greedy_words,
    encode_text,
    prepare_tokenizer,
    read_audio_checked,
    recipe_setup,
    train_loader,
)

__all__ = ["HPARAMS", "DemoASR", "dataio_prepare", "main"]

#: the demo's hyperparameters (SpeechBrain's hyperpyyaml), installed with the package
HPARAMS = pathlib.Path(__file__).resolve().with_name("crdnn_ctc.yaml")


class DemoASR(MetaBrain):
    """CRDNN encoder and a CTC head over characters; WER and CER at validation and test."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        feats = self.modules.normalize(self.hparams.compute_features(wavs), wav_lens)
        encoded = self.modules.enc(feats)
        log_probs = self.hparams.log_softmax(self.modules.ctc_lin(encoded))
        return ASRPredictions(log_probs, wav_lens, encoded)

    def compute_objectives(self, predictions, batch, stage):
        tokens, tokens_lens = batch.tokens
        loss = self.hparams.ctc_cost(predictions.log_probs, tokens, predictions.lengths, tokens_lens)
        if stage != sb.Stage.TRAIN:
            hyps = ctc_greedy_words(predictions.log_probs, predictions.lengths, self.hparams.tokenizer)
            self.wer_metric.append(batch.id, [h.split() for h in hyps], [w.split() for w in batch.wrd])
            self.cer_metric.append(batch.id, [list(h) for h in hyps], [list(w) for w in batch.wrd])
        return loss

    def on_stage_start(self, stage, epoch):
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.cer_computer()

    def on_stage_end(self, stage, stage_loss, epoch):
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = dict(stats, **self.loss_term_means())
            return
        stats["WER"] = self.wer_metric.summarize("error_rate")
        stats["CER"] = self.cer_metric.summarize("error_rate")
        if stage == sb.Stage.VALID:
            meta = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            self.hparams.train_logger.log_stats(meta, train_stats=self.train_stats, valid_stats=stats)
            self.checkpointer.save_and_keep_only(meta={"WER": stats["WER"]}, min_keys=["WER"],
                                                num_to_keep=self.hparams.checkpoints_to_keep)
        else:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                {"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats)


def dataio_prepare(hparams, csvs):
    """SpeechBrain datasets of the manifests ``csvs`` (split -> CSV) with ``sig`` and
    ``tokens``; validation and test sorted by duration."""
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
    @sb.utils.data_pipeline.provides("wrd", "tokens")
    def text_pipeline(wrd):
        yield wrd
        yield torch.LongTensor(encode_text(tokenizer, wrd))

    sb.dataio.dataset.add_dynamic_item(items, audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(items, text_pipeline)
    sb.dataio.dataset.set_output_keys(items, ["id", "sig", "wrd", "tokens"])
    return datasets


def main(argv):
    """Train on a corpus of ``train/valid/test.csv`` manifests (``--data_folder``), test the
    best-dev-WER checkpoint and export it in SpeechBrain's pretrained format; returns the
    trained brain. ``argv``: the YAML (:data:`HPARAMS`) then ``--key=value`` overrides."""
    with recipe_setup(argv) as (hparams_file, run_opts, overrides, hparams):
        sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                       hyperparams_to_save=hparams_file, overrides=overrides)
        folder = pathlib.Path(hparams["data_folder"])
        csvs = {split: folder / f"{split}.csv" for split in ("train", "valid", "test")}
        missing = [str(p) for p in csvs.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"missing manifests {missing}; create the corpus with "
                                    f"`sb-meta synth --out {folder}`")
        prepare_tokenizer(hparams, csvs["train"], hparams["save_folder"])
        check_transcripts(hparams["tokenizer"], csvs)
        datasets = dataio_prepare(hparams, csvs)
        brain = DemoASR(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                        run_opts=run_opts, checkpointer=hparams["checkpointer"])
        train_set = train_loader(brain, hparams, datasets["train"])
        check_destination(hparams["export_folder"], force=True)  # refuse before training
    brain.fit(hparams["epoch_counter"], train_set, datasets["valid"],
              train_loader_kwargs=hparams["train_dataloader_opts"],
              valid_loader_kwargs=hparams["valid_dataloader_opts"])
    brain.evaluate(datasets["test"], min_key="WER", test_loader_kwargs=hparams["test_dataloader_opts"])
    export_brain(brain, hparams["export_folder"], force=True)
    return brain
