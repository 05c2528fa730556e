"""Random-weight SpeechBrain folders in the layouts of the published SSL and Whisper models.

SpeechBrain publishes its self-supervised recognizers (``asr-wav2vec2-*``, HuBERT
and WavLM variants) as an ``EncoderASR`` whose encoder chains the Hugging Face
wrapper (``speechbrain.integrations.huggingface.Wav2Vec2`` / ``HuBERT`` /
``WavLM``), a small DNN and a CTC head, with ``wav2vec2.ckpt``, ``asr.ckpt``
and ``tokenizer.ckpt`` beside its ``hyperparams.yaml``; and its Whisper
fine-tunes (``asr-whisper-*``) as a ``WhisperASR`` with ``whisper.ckpt``. The
wrapper's ``source`` is a Hugging Face model (a hub id in the published
files, a ``save_pretrained`` folder here).

The builders below write such folders with random weights and configurable
sizes, offline (``transformers`` builds the configurations locally): tests,
benchmarks and ``--debug`` recipe runs use them where the real checkpoints
cannot be downloaded. They need the ``hf`` extra (``pip install sb-meta[hf]``).

Example
-------
>>> folder = ssl_ctc_folder(getfixture("tmp_path") / "w2v", ["YES", "NO"])  # doctest: +SKIP
>>> from sb_meta.adapt import load_model
>>> load_model(folder).transcribe_file("a.wav")  # doctest: +SKIP
"""

import json
import pathlib

import torch

__all__ = ["SSL_FAMILIES", "TINY_SIZES", "BASE_SIZES", "hf_ssl_source", "ssl_ctc_folder",
           "hf_whisper_source", "whisper_folder", "char_tokenizer"]

#: family -> (transformers config class, SpeechBrain wrapper class)
SSL_FAMILIES = {
    "wav2vec2": ("Wav2Vec2Config", "speechbrain.integrations.huggingface.wav2vec2.Wav2Vec2"),
    "hubert": ("HubertConfig", "speechbrain.integrations.huggingface.hubert.HuBERT"),
    "wavlm": ("WavLMConfig", "speechbrain.integrations.huggingface.wavlm.WavLM"),
}

#: a few-thousand-parameter encoder with wav2vec2's frame rate (320 samples per frame)
TINY_SIZES = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 32, "conv_dim": (8,) * 7, "num_conv_pos_embeddings": 16,
              "num_conv_pos_embedding_groups": 2}
#: wav2vec2-base (95M parameters): the transformers defaults
BASE_SIZES = {}


def _require_transformers():
    from sb_meta.adapt.hf import require_transformers

    return require_transformers("building a Hugging Face model folder")


def hf_ssl_source(folder, family="wav2vec2", sizes=None, seed=0):
    """A ``save_pretrained`` folder of a random SSL encoder (the wrapper's ``source``).

    Arguments
    ---------
    folder : str or pathlib.Path
        Created; it must not exist.
    family : str
        ``wav2vec2``, ``hubert`` or ``wavlm``.
    sizes : dict, optional
        Configuration overrides; default :data:`TINY_SIZES` (``{}``: the
        family's base size, e.g. 95M parameters for wav2vec2).
    seed : int
        The weights' seed.

    Returns
    -------
    pathlib.Path
    """
    transformers = _require_transformers()
    if family not in SSL_FAMILIES:
        raise ValueError(f"unknown SSL family {family!r}; use one of {sorted(SSL_FAMILIES)}")
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True)
    config = getattr(transformers, SSL_FAMILIES[family][0])(
        **(TINY_SIZES if sizes is None else sizes), apply_spec_augment=False)
    torch.manual_seed(seed)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder


def char_tokenizer(path, texts, vocab_size=None):
    """A SentencePiece character model of ``texts`` written to ``path`` (a ``tokenizer.ckpt``);
    returns its size. Ids 0, 1, 2 are blank/unk, bos and eos, as in the published models."""
    import sentencepiece

    chars = sorted({c for t in texts for c in t if not c.isspace()})
    size = vocab_size or len(chars) + 4
    prefix = pathlib.Path(path).with_suffix("")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts) * 3), model_prefix=str(prefix), vocab_size=size,
        model_type="char", unk_id=0, bos_id=1, eos_id=2, minloglevel=2, character_coverage=1.0,
    )
    pathlib.Path(path).write_bytes(prefix.with_suffix(".model").read_bytes())
    for f in (prefix.with_suffix(".model"), prefix.with_suffix(".vocab")):
        f.unlink()
    return size


SSL_CTC_YAML = """\
# Random weights in the layout of SpeechBrain's published SSL + CTC recognizers
# (asr-wav2vec2-commonvoice-*): the Hugging Face encoder, a DNN, a CTC head.
sample_rate: 16000
ssl_hub: {source}
freeze_ssl: {freeze}
dnn_neurons: {dnn}
output_neurons: {outputs}
blank_index: 0

ssl: !new:{wrapper}
    source: !ref <ssl_hub>
    output_norm: True
    freeze: !ref <freeze_ssl>
    freeze_feature_extractor: True
    save_path: ssl_checkpoint

enc: !new:speechbrain.lobes.models.VanillaNN.VanillaNN
    input_shape: [null, null, {hidden}]
    activation: !name:torch.nn.LeakyReLU
    dnn_blocks: 2
    dnn_neurons: !ref <dnn_neurons>

ctc_lin: !new:speechbrain.nnet.linear.Linear
    input_size: !ref <dnn_neurons>
    n_neurons: !ref <output_neurons>

log_softmax: !new:speechbrain.nnet.activations.Softmax
    apply_log: True

asr_model: !new:torch.nn.ModuleList
    - [!ref <enc>, !ref <ctc_lin>]

tokenizer: !new:sentencepiece.SentencePieceProcessor

encoder: !new:speechbrain.nnet.containers.LengthsCapableSequential
    wav2vec2: !ref <ssl>
    enc: !ref <enc>
    ctc_lin: !ref <ctc_lin>
    log_softmax: !ref <log_softmax>

decoding_function: !name:speechbrain.decoders.ctc_greedy_decode
    blank_id: !ref <blank_index>

modules:
    encoder: !ref <encoder>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        wav2vec2: !ref <ssl>
        asr: !ref <asr_model>
        tokenizer: !ref <tokenizer>
"""


def ssl_ctc_folder(folder, texts, family="wav2vec2", sizes=None, freeze=False, dnn_neurons=16,
                   source=None, seed=0):
    """An ``EncoderASR`` folder laid out like SpeechBrain's published SSL + CTC models.

    Arguments
    ---------
    folder : str or pathlib.Path
        Created; it must not exist.
    texts : list of str
        Transcripts the character tokenizer is made from.
    family : str
        ``wav2vec2``, ``hubert`` or ``wavlm``.
    sizes : dict, optional
        Encoder configuration (see :func:`hf_ssl_source`).
    freeze : bool
        The YAML's ``freeze_ssl`` (the published ``-frozen`` variants).
    dnn_neurons : int
        Width of the DNN between the encoder and the CTC head.
    source : str or pathlib.Path, optional
        An existing Hugging Face folder to use; default one made in
        ``<folder>/hf_<family>``.
    seed : int

    Returns
    -------
    pathlib.Path
    """
    folder, source = _new_folder(folder, source, lambda f: hf_ssl_source(f / f"hf_{family}", family, sizes, seed))
    outputs = char_tokenizer(folder / "tokenizer.ckpt", texts)
    hidden = json.loads((source / "config.json").read_text())["hidden_size"]
    text = SSL_CTC_YAML.format(source=source.resolve(), freeze=freeze, dnn=int(dnn_neurons),
                               outputs=outputs, wrapper=SSL_FAMILIES[family][1], hidden=hidden)
    return _write(folder, text, {"wav2vec2": "ssl", "asr": "asr_model"}, seed)


def _new_folder(folder, source, make):
    """``folder`` (created; it must not exist) and the Hugging Face source: ``source``,
    or the one ``make(folder)`` writes."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True)
    return folder, pathlib.Path(source) if source else make(folder)


def _write(folder, text, checkpoints, seed):
    """``text`` as ``folder/hyperparams.yaml`` and, from the objects it builds, one
    ``<name>.ckpt`` per ``name -> YAML key`` of ``checkpoints``."""
    from hyperpyyaml import load_hyperpyyaml

    torch.manual_seed(seed)
    hp = load_hyperpyyaml(text)
    (folder / "hyperparams.yaml").write_text(text, encoding="utf-8")
    for name, key in checkpoints.items():
        torch.save(hp[key].state_dict(), folder / f"{name}.ckpt")  # safe-path: names are this module's constants
    return folder


#: Whisper's special tokens; ``<|nospeech|>`` must come right before ``<|notimestamps|>``
WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                    "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]


def hf_whisper_source(folder, seed=0, d_model=16, layers=1):
    """A ``save_pretrained`` folder of a random English-only Whisper with a byte-level
    vocabulary (256 bytes and Whisper's special tokens), its tokenizer and feature extractor."""
    transformers = _require_transformers()
    from tokenizers import pre_tokenizers

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True)
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    ids = {t: len(vocab) + i for i, t in enumerate(WHISPER_SPECIALS)}
    # transformers 5 (the hf extra's pin) builds the byte-level BPE from the vocabulary itself
    tokenizer = transformers.WhisperTokenizer(
        vocab={**vocab, **ids}, merges=[], bos_token="<|endoftext|>",
        additional_special_tokens=WHISPER_SPECIALS[1:], predict_timestamps=False)
    tokenizer.save_pretrained(folder)
    eos, bos = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = transformers.WhisperConfig(
        vocab_size=len(vocab) + len(ids), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, num_mel_bins=80, max_source_positions=1500,
        max_target_positions=64, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        decoder_start_token_id=bos, suppress_tokens=[], begin_suppress_tokens=[],
    )
    torch.manual_seed(seed)
    transformers.WhisperForConditionalGeneration(config).save_pretrained(folder)
    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


WHISPER_YAML = """\
# Random weights in the layout of SpeechBrain's published Whisper fine-tunes
# (asr-whisper-*-commonvoice-*): the Hugging Face Whisper and its greedy searcher.
whisper_hub: {source}
language: english
sample_rate: 16000
normalized_transcripts: False
min_decode_ratio: 0.0
max_decode_ratio: 1.0

whisper: !new:speechbrain.integrations.huggingface.whisper.Whisper
    source: !ref <whisper_hub>
    freeze: False
    save_path: whisper_checkpoint
    encoder_only: False
    language: !ref <language>
    task: transcribe

decoder: !new:speechbrain.decoders.seq2seq.S2SWhisperGreedySearcher
    model: !ref <whisper>
    min_decode_ratio: !ref <min_decode_ratio>
    max_decode_ratio: !ref <max_decode_ratio>

modules:
    whisper: !ref <whisper>
    decoder: !ref <decoder>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        whisper: !ref <whisper>
"""


def whisper_folder(folder, source=None, seed=0):
    """A ``WhisperASR`` folder laid out like SpeechBrain's published Whisper fine-tunes.

    Arguments
    ---------
    folder : str or pathlib.Path
        Created; it must not exist.
    source : str or pathlib.Path, optional
        An existing Whisper ``save_pretrained`` folder; default a tiny random
        one made in ``<folder>/hf_whisper``.
    seed : int

    Returns
    -------
    pathlib.Path
    """
    folder, source = _new_folder(folder, source, lambda f: hf_whisper_source(f / "hf_whisper", seed))
    return _write(folder, WHISPER_YAML.format(source=source.resolve()), {"whisper": "whisper"}, seed)
