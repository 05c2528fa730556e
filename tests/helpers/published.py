"""A hyperparams.yaml laid out like SpeechBrain's published LibriSpeech CRDNN + RNNLM hub
folder (random weights), for the tests of models sb-meta did not train."""

#: laid out like SpeechBrain's published LibriSpeech CRDNN + RNNLM model
#: (speechbrain/asr-crdnn-rnnlm-librispeech): no CTC scorer at decoding, an LM scorer
PUBLISHED_YAML = """\
sample_rate: 16000
n_fft: 400
n_mels: 20
output_neurons: 7
blank_index: 0
bos_index: 1
eos_index: 2
normalize: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
compute_features: !new:speechbrain.lobes.features.Fbank
    sample_rate: !ref <sample_rate>
    n_fft: !ref <n_fft>
    n_mels: !ref <n_mels>
enc: !new:speechbrain.lobes.models.CRDNN.CRDNN
    input_shape: [null, null, !ref <n_mels>]
    activation: !name:torch.nn.LeakyReLU
    dropout: 0.15
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
    dropout: 0.15
ctc_lin: !new:speechbrain.nnet.linear.Linear
    input_size: 16
    n_neurons: !ref <output_neurons>
seq_lin: !new:speechbrain.nnet.linear.Linear
    input_size: 16
    n_neurons: !ref <output_neurons>
log_softmax: !new:speechbrain.nnet.activations.Softmax
    apply_log: True
lm_model: !new:speechbrain.lobes.models.RNNLM.RNNLM
    output_neurons: !ref <output_neurons>
    embedding_dim: 8
    activation: !name:torch.nn.LeakyReLU
    dropout: 0.0
    rnn_layers: 1
    rnn_neurons: 16
    dnn_blocks: 1
    dnn_neurons: 16
    return_hidden: True
tokenizer: !new:sentencepiece.SentencePieceProcessor
asr_model: !new:torch.nn.ModuleList
    - [!ref <enc>, !ref <emb>, !ref <dec>, !ref <ctc_lin>, !ref <seq_lin>]
encoder: !new:speechbrain.nnet.containers.LengthsCapableSequential
    input_shape: [null, null, !ref <n_mels>]
    compute_features: !ref <compute_features>
    normalize: !ref <normalize>
    model: !ref <enc>
rnnlm_scorer: !new:speechbrain.decoders.scorer.RNNLMScorer
    language_model: !ref <lm_model>
    temperature: 1.25
coverage_scorer: !new:speechbrain.decoders.scorer.CoverageScorer
    vocab_size: !ref <output_neurons>
scorer: !new:speechbrain.decoders.scorer.ScorerBuilder
    full_scorers: [!ref <rnnlm_scorer>, !ref <coverage_scorer>]
    weights:
        rnnlm: 0.5
        coverage: 1.5
decoder: !new:speechbrain.decoders.S2SRNNBeamSearcher
    embedding: !ref <emb>
    decoder: !ref <dec>
    linear: !ref <seq_lin>
    bos_index: !ref <bos_index>
    eos_index: !ref <eos_index>
    min_decode_ratio: 0.0
    max_decode_ratio: 1.0
    beam_size: 3
    eos_threshold: 1.5
    using_max_attn_shift: True
    max_attn_shift: 240
    temperature: 1.25
    scorer: !ref <scorer>
modules:
    encoder: !ref <encoder>
    decoder: !ref <decoder>
    lm_model: !ref <lm_model>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        asr: !ref <asr_model>
        lm: !ref <lm_model>
        tokenizer: !ref <tokenizer>
        normalizer: !ref <normalize>
"""
