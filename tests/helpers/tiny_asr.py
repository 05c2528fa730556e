"""Tiny ASR models for the export and adaptation tests.

The brain is the AN4 recipe's own (``recipes/AN4/train.py``: ``ASR`` and
``dataio_prepare``), trained for a few episodes on a synthetic "tone" corpus
(each character is a tone whose pitch depends on the speaker), so every test
runs in seconds on a CPU.
"""

import pathlib

import numpy as np
import soundfile
import torch

from sb_meta.utils import load_script

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPE = load_script(ROOT / "recipes" / "AN4" / "train.py", "sbmeta_tiny_asr_recipe")

COMMON = """\
sample_rate: 16000
n_mels: 20
blank_index: 0
bos_index: 1
eos_index: 2
pad_index: 0
checkpoints_to_keep: 1
compute_features: !new:speechbrain.lobes.features.Fbank
    sample_rate: !ref <sample_rate>
    n_mels: !ref <n_mels>
normalize: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
log_softmax: !new:speechbrain.nnet.activations.Softmax
    apply_log: True
ctc_cost: !name:sb_meta.losses.ctc_loss
    blank_index: 0
seq_cost: !name:speechbrain.nnet.losses.nll_loss
error_rate_computer: !name:speechbrain.utils.metric_stats.ErrorRateStats
cer_computer: !name:speechbrain.utils.metric_stats.ErrorRateStats
"""

CRDNN = """\
enc: !new:speechbrain.lobes.models.CRDNN.CRDNN
    input_shape: [null, null, !ref <n_mels>]
    activation: !name:torch.nn.LeakyReLU
    dropout: 0.0
    cnn_blocks: 1
    cnn_channels: (8,)
    cnn_kernelsize: (3, 3)
    time_pooling: True
    time_pooling_size: 2
    rnn_class: !name:speechbrain.nnet.RNN.LSTM
    rnn_layers: 1
    rnn_neurons: 16
    rnn_bidirectional: True
    dnn_blocks: 1
    dnn_neurons: 16
ctc_lin: !new:speechbrain.nnet.linear.Linear
    input_size: 16
    n_neurons: !ref <output_neurons>
"""

#: CRDNN + CTC, characters (4 characters + blank, 3 unused outputs)
CTC_YAML = COMMON + CRDNN + """\
output_neurons: 8
ctc_weight: 1.0
tokenizer: !new:speechbrain.dataio.encoder.CTCTextEncoder
modules:
    enc: !ref <enc>
    ctc_lin: !ref <ctc_lin>
    normalize: !ref <normalize>
model: !new:torch.nn.ModuleList
    - [!ref <enc>, !ref <ctc_lin>]
asr_encoder: !new:speechbrain.nnet.containers.LengthsCapableSequential
    compute_features: !ref <compute_features>
    normalize: !ref <normalize>
    enc: !ref <enc>
    ctc_lin: !ref <ctc_lin>
    log_softmax: !ref <log_softmax>
inference:
    interface: speechbrain.inference.ASR.EncoderASR
    hparams:
        encoder: !ref <asr_encoder>
        decoding_function: !name:speechbrain.decoders.ctc_greedy_decode
            blank_id: 0
        tokenizer: !ref <tokenizer>
    loadables:
        model: !ref <model>
        normalizer: !ref <normalize>
        tokenizer: !ref <tokenizer>
"""

FREQ = {"A": 400.0, "B": 700.0, "C": 1000.0}
WORDS = ["AB", "CA", "BCA", "AC", "CB", "BAC", "A", "CAB"]


def tone_wave(text, shift, rng):
    """Tones for the characters of ``text`` (silence for spaces), 16 kHz."""
    pieces = [np.zeros(800)]
    for c in text:
        if c == " ":
            pieces.append(np.zeros(800))
        else:
            t = np.arange(1600) / 16000
            pieces.append(0.4 * np.sin(2 * np.pi * FREQ[c] * shift * t))
    pieces.append(np.zeros(800))
    wav = np.concatenate(pieces)
    return (wav + 0.01 * rng.standard_normal(len(wav))).astype(np.float32)


def make_corpus(folder, speakers=(("s0", 5), ("s1", 5), ("s2", 5)), seed=0):
    """Write a tone corpus and its manifest ``folder/data.csv``; returns the path."""
    from sb_meta.data.manifest import write_manifest

    rng = np.random.default_rng(seed)
    folder = pathlib.Path(folder)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for s, (spk, n) in enumerate(speakers):
        for u in range(n):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 3))))
            if s == 0 and u == 0:
                text = "AB CA BC"  # every character occurs in the training transcripts
            wav = tone_wave(text, 0.8 + 0.2 * s, rng)
            path = folder / "wav" / f"{spk}_{u:02d}.wav"
            soundfile.write(str(path), wav, 16000)
            rows.append(dict(ID=f"{spk}_{u:02d}", duration=len(wav) / 16000, wav=str(path),
                             spk_id=spk, wrd=text))
    return write_manifest(folder / "data.csv", rows)


def load_tiny_hparams(yaml_text, folder, csv, overrides=None):
    """The YAML's hparams with the tokenizer prepared from ``csv`` in ``folder``."""
    from hyperpyyaml import load_hyperpyyaml

    from sb_meta.recipe import prepare_tokenizer

    hp = load_hyperpyyaml(yaml_text, overrides)
    prepare_tokenizer(hp, csv, folder)
    return hp


def train_tiny_brain(folder, csv, strategy="metasgd", epochs=2, seed=0, yaml_text=CTC_YAML,
                     meta=None, overrides=None):
    """A tiny recipe brain meta-trained for a few episodes; returns (brain, yaml path)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    yaml_path = folder / "tiny.yaml"
    yaml_path.write_text(yaml_text)
    torch.manual_seed(seed)
    hp = load_tiny_hparams(yaml_text, folder, csv, overrides)
    hp.update(meta_strategy=strategy, first_order=True, inner_steps=1, inner_lr=0.05,
              k_support=2, k_query=2, meta_batch_tasks=2, episodes_per_epoch=3,
              max_grad_norm=5.0, seed=seed)
    hp.update(meta or {})
    data = RECIPE.dataio_prepare(hp, {"train": csv})
    brain = RECIPE.ASR(
        modules=hp["modules"],
        opt_class=lambda params: torch.optim.Adam(params, 0.01),
        hparams=hp,
        run_opts={"device": "cpu", "noprogressbar": True},
    )
    brain.fit(range(1, epochs + 1), brain.make_episode_loader(data["train"]), progressbar=False)
    return brain, yaml_path


def exported_tiny_model(folder, strategy="fomaml", epochs=3):
    """A tiny CTC model trained on a fresh tone corpus and exported:
    ``{"csv", "rows", "export"}`` (module fixtures of the adaptation tests)."""
    from sb_meta.export import export_brain

    folder = pathlib.Path(folder)
    csv = make_corpus(folder / "corpus")
    brain, yaml_path = train_tiny_brain(folder / "exp", csv, strategy=strategy, epochs=epochs)
    return {"tmp": folder, "csv": csv, "rows": read_rows(csv),
            "export": export_brain(brain, folder / "pretrained", hparams_file=yaml_path)}


def exported_fixture(name, epochs=3):
    """A module-scoped fixture whose value is :func:`exported_tiny_model` in a temporary
    folder named ``name``."""
    import pytest

    @pytest.fixture(scope="module")
    def exported(tmp_path_factory):
        return exported_tiny_model(tmp_path_factory.mktemp(name), epochs=epochs)

    return exported


def read_rows(csv):
    from sb_meta.data.manifest import read_manifest

    return read_manifest(csv)


def speechbrain_asr(folder, interface="EncoderASR"):
    """SpeechBrain's own loader, exactly as a SpeechBrain user would call it."""
    import speechbrain.inference.ASR as asr_module

    return getattr(asr_module, interface).from_hparams(source=str(folder), savedir=str(folder))


def file_batch(paths):
    from speechbrain.dataio.dataio import read_audio
    from speechbrain.utils.data_utils import batch_pad_right

    return batch_pad_right([read_audio(str(p)) for p in paths])


def probe(brain, wavs, lens):
    """The brain's own forward pass (eval mode) on a batch of waveforms."""
    import speechbrain as sb
    from speechbrain.dataio.batch import PaddedBatch

    one = torch.LongTensor([1])
    batch = PaddedBatch([{"id": str(i), "sig": w[: int(round(float(l) * wavs.shape[1]))],
                          "tokens": one, "tokens_bos": one, "tokens_eos": one, "wrd": "A"}
                         for i, (w, l) in enumerate(zip(wavs, lens))])
    brain.modules.eval()
    with torch.no_grad():
        return brain.compute_forward(batch, sb.Stage.TEST)


SEARCH = """\
ctc_scorer: !new:speechbrain.decoders.scorer.CTCScorer
    ctc_fc: !ref <ctc_lin>
    blank_index: 0
    eos_index: !ref <eos_index>
scorer: !new:speechbrain.decoders.scorer.ScorerBuilder
    full_scorers: [!ref <ctc_scorer>]
    weights:
        ctc: 0.4
"""

#: CRDNN encoder + attention decoder + CTC head, SentencePiece characters
ATTENTION_YAML = COMMON + CRDNN + SEARCH + """\
output_neurons: 7          # SentencePiece characters: 0 unk = blank, 1 bos, 2 eos, A B C and the word boundary
tokenizer_type: char
ctc_weight: 0.5
tokenizer: !new:sentencepiece.SentencePieceProcessor
emb: !new:speechbrain.nnet.embedding.Embedding
    num_embeddings: !ref <output_neurons>
    embedding_dim: 8
dec: !new:speechbrain.nnet.RNN.AttentionalRNNDecoder
    enc_dim: 16
    input_size: 8
    rnn_type: gru
    attn_type: location
    hidden_size: 16
    attn_dim: 16
    num_layers: 1
    scaling: 1.0
    channels: 4
    kernel_size: 5
    re_init: True
    dropout: 0.0
seq_lin: !new:speechbrain.nnet.linear.Linear
    input_size: 16
    n_neurons: !ref <output_neurons>
test_search: !new:speechbrain.decoders.S2SRNNBeamSearcher
    embedding: !ref <emb>
    decoder: !ref <dec>
    linear: !ref <seq_lin>
    bos_index: !ref <bos_index>
    eos_index: !ref <eos_index>
    min_decode_ratio: 0.0
    max_decode_ratio: 1.0
    beam_size: 3
    eos_threshold: 1.5
    scorer: !ref <scorer>
modules:
    enc: !ref <enc>
    emb: !ref <emb>
    dec: !ref <dec>
    ctc_lin: !ref <ctc_lin>
    seq_lin: !ref <seq_lin>
    normalize: !ref <normalize>
model: !new:torch.nn.ModuleList
    - [!ref <enc>, !ref <emb>, !ref <dec>, !ref <ctc_lin>, !ref <seq_lin>]
asr_encoder: !new:speechbrain.nnet.containers.LengthsCapableSequential
    compute_features: !ref <compute_features>
    normalize: !ref <normalize>
    enc: !ref <enc>
inference:
    interface: speechbrain.inference.ASR.EncoderDecoderASR
    hparams:
        encoder: !ref <asr_encoder>
        decoder: !ref <test_search>
        tokenizer: !ref <tokenizer>
    loadables:
        model: !ref <model>
        normalizer: !ref <normalize>
        tokenizer: !ref <tokenizer>
"""

#: a small Transformer (CNN front end) with CTC and attention, SentencePiece characters
TRANSFORMER_YAML = COMMON + SEARCH + """\
output_neurons: 7
tokenizer_type: char
ctc_weight: 0.3
tokenizer: !new:sentencepiece.SentencePieceProcessor
CNN: !new:speechbrain.lobes.models.convolution.ConvolutionFrontEnd
    input_shape: [null, null, !ref <n_mels>]
    num_blocks: 2
    num_layers_per_block: 1
    out_channels: (8, 8)
    kernel_sizes: (3, 3)
    strides: (2, 2)
    residuals: (False, False)
Transformer: !new:speechbrain.lobes.models.transformer.TransformerASR.TransformerASR
    input_size: 40
    tgt_vocab: !ref <output_neurons>
    d_model: 16
    nhead: 2
    num_encoder_layers: 1
    num_decoder_layers: 1
    d_ffn: 32
    dropout: 0.0
    activation: !name:torch.nn.GELU
    normalize_before: True
    causal: False
ctc_lin: !new:speechbrain.nnet.linear.Linear
    input_size: 16
    n_neurons: !ref <output_neurons>
seq_lin: !new:speechbrain.nnet.linear.Linear
    input_size: 16
    n_neurons: !ref <output_neurons>
test_search: !new:speechbrain.decoders.S2STransformerBeamSearcher
    modules: [!ref <Transformer>, !ref <seq_lin>]
    bos_index: !ref <bos_index>
    eos_index: !ref <eos_index>
    min_decode_ratio: 0.0
    max_decode_ratio: 1.0
    beam_size: 3
    using_eos_threshold: False
    length_normalization: True
    scorer: !ref <scorer>
modules:
    CNN: !ref <CNN>
    Transformer: !ref <Transformer>
    ctc_lin: !ref <ctc_lin>
    seq_lin: !ref <seq_lin>
    normalize: !ref <normalize>
model: !new:torch.nn.ModuleList
    - [!ref <CNN>, !ref <Transformer>, !ref <ctc_lin>, !ref <seq_lin>]
Tencoder: !new:speechbrain.lobes.models.transformer.TransformerASR.EncoderWrapper
    transformer: !ref <Transformer>
asr_encoder: !new:speechbrain.nnet.containers.LengthsCapableSequential
    compute_features: !ref <compute_features>
    normalize: !ref <normalize>
    CNN: !ref <CNN>
    transformer_encoder: !ref <Tencoder>
inference:
    interface: speechbrain.inference.ASR.EncoderDecoderASR
    hparams:
        encoder: !ref <asr_encoder>
        decoder: !ref <test_search>
        tokenizer: !ref <tokenizer>
    loadables:
        model: !ref <model>
        normalizer: !ref <normalize>
        tokenizer: !ref <tokenizer>
"""
