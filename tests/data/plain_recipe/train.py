#!/usr/bin/env python3
"""A minimal SpeechBrain CTC recipe, written without sb-meta in mind.

    python train.py hparams.yaml --train_csv=data.csv --output_folder=results
"""

import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml


class ASR(sb.Brain):
    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        feats = self.hparams.compute_features(wavs)
        feats = self.modules.normalize(feats, wav_lens)
        x = self.modules.enc(feats)
        p_ctc = self.hparams.log_softmax(self.modules.ctc_lin(x))
        return p_ctc, wav_lens

    def compute_objectives(self, predictions, batch, stage):
        p_ctc, wav_lens = predictions
        tokens, tokens_lens = batch.tokens
        return self.hparams.ctc_cost(p_ctc, tokens, wav_lens, tokens_lens)


def dataio_prepare(hparams):
    train_data = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=hparams["train_csv"])
    label_encoder = sb.dataio.encoder.CTCTextEncoder()

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return sb.dataio.dataio.read_audio(wav)

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("char_list", "tokens")
    def text_pipeline(wrd):
        char_list = list(wrd)
        yield char_list
        yield label_encoder.encode_sequence_torch(char_list)

    sb.dataio.dataset.add_dynamic_item([train_data], audio_pipeline)
    sb.dataio.dataset.add_dynamic_item([train_data], text_pipeline)
    label_encoder.load_or_create(
        path=hparams["label_encoder_file"], from_didatasets=[train_data],
        output_key="char_list", special_labels={"blank_label": 0}, sequence_input=True,
    )
    sb.dataio.dataset.set_output_keys([train_data], ["id", "sig", "tokens"])
    return train_data


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    train_data = dataio_prepare(hparams)
    asr_brain = ASR(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    asr_brain.fit(hparams["epoch_counter"], train_data,
                  train_loader_kwargs=hparams["dataloader_options"])
