"""A SpeechBrain CRDNN/CTC ASR brain and data pipeline shared by the recipes.

:class:`CTCASRBrain` is what a recipe's ``train.py`` would write itself: an
``sb.Brain`` subclass (here :class:`sb_meta.MetaBrain`) with
``compute_forward`` / ``compute_objectives`` for SpeechBrain's CRDNN encoder,
a linear CTC head and, when the YAML declares ``dec``/``emb``/``seq_lin``, an
attention decoder trained jointly (``ctc_weight``). It is also the brain that
:mod:`sb_meta.inference` adapts at test time.

Tokenisation (``tokenizer_type`` in YAML): ``char`` (default) or
``sentencepiece`` (SpeechBrain's SentencePiece wrapper). Token 0 is the CTC
blank in both cases.
"""

import logging
import os
import pathlib

import speechbrain as sb
import torch

from sb_meta.brain import MetaBrain

logger = logging.getLogger(__name__)

__all__ = ["CTCASRBrain", "CharTokenizer", "build_tokenizer", "dataio_prepare"]


class CharTokenizer:
    """Characters -> ids with 0 reserved for the CTC blank.

    Example
    -------
    >>> tok = CharTokenizer.from_texts(["HI THERE", "HELLO"])
    >>> ids = tok.encode("HELLO THERE")
    >>> tok.decode(ids)
    'HELLO THERE'
    >>> tok.encode("HI!")
    Traceback (most recent call last):
    ...
    ValueError: character '!' of 'HI!' is not in the tokenizer's alphabet ...
    """

    kind = "char"

    def __init__(self, chars):
        self.chars = list(chars)
        self.index = {c: i + 1 for i, c in enumerate(self.chars)}

    @classmethod
    def from_texts(cls, texts):
        return cls(sorted({c for t in texts for c in t}))

    @property
    def vocab_size(self):
        return len(self.chars) + 1

    def encode(self, text):
        try:
            return [self.index[c] for c in text]
        except KeyError as exc:
            raise ValueError(
                f"character {exc.args[0]!r} of {text!r} is not in the tokenizer's alphabet "
                f"{''.join(self.chars)!r}"
            ) from None

    def decode(self, ids):
        return "".join(self.chars[i - 1] for i in ids if 0 < i <= len(self.chars))

    def save(self, path):
        pathlib.Path(path).write_text("\n".join(self.chars) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path):
        text = pathlib.Path(path).read_text(encoding="utf-8")
        return cls([line for line in text.split("\n")[:-1]])


class SentencePieceTokenizer:
    """SpeechBrain's SentencePiece wrapper with ids shifted by one (0 = blank)."""

    kind = "sentencepiece"

    def __init__(self, model_path):
        import sentencepiece

        self.model_path = str(model_path)
        self.sp = sentencepiece.SentencePieceProcessor()
        self.sp.load(self.model_path)

    @property
    def vocab_size(self):
        return self.sp.vocab_size() + 1

    def encode(self, text):
        return [i + 1 for i in self.sp.encode_as_ids(text)]

    def decode(self, ids):
        return self.sp.decode_ids([i - 1 for i in ids if i > 0])

    def save(self, path):
        import shutil

        shutil.copyfile(self.model_path, path)

    @classmethod
    def load(cls, path):
        return cls(path)


def build_tokenizer(kind, train_csv, save_folder, vocab_size=None):
    """Create (or reload) the recipe's tokenizer from the training manifest."""
    from sb_meta.data.manifest import read_manifest

    save_folder = pathlib.Path(save_folder)
    save_folder.mkdir(parents=True, exist_ok=True)
    if kind == "char":
        path = save_folder / "tokenizer_chars.txt"
        if path.is_file():
            return CharTokenizer.load(path)
        tok = CharTokenizer.from_texts(r["wrd"] for r in read_manifest(train_csv))
        tok.save(path)
        return tok
    if kind == "sentencepiece":
        from speechbrain.tokenizers.SentencePiece import SentencePiece

        sp = SentencePiece(
            model_dir=str(save_folder),
            vocab_size=vocab_size or 32,
            annotation_train=str(train_csv),
            annotation_read="wrd",
            model_type="unigram",
            character_coverage=1.0,
        )
        return SentencePieceTokenizer(sp.prefix_model_file + ".model")
    raise ValueError(f"unknown tokenizer_type {kind!r}; use 'char' or 'sentencepiece'")


def dataio_prepare(hparams, tokenizer, csvs):
    """SpeechBrain ``DynamicItemDataset`` s with ``sig`` and ``tokens`` items.

    Arguments
    ---------
    hparams : dict
        Needs ``sample_rate``; optional ``data_folder`` for ``$data_root``.
    tokenizer : CharTokenizer or SentencePieceTokenizer
    csvs : dict
        Split name -> manifest path.
    """
    from speechbrain.dataio.dataset import DynamicItemDataset

    datasets = {}
    replacements = {"data_root": str(hparams.get("data_folder", ""))}
    for split, path in csvs.items():
        datasets[split] = DynamicItemDataset.from_csv(csv_path=str(path), replacements=replacements)
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
        yield torch.LongTensor(tokenizer.encode(wrd))

    sb.dataio.dataset.add_dynamic_item(items, audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(items, text_pipeline)
    sb.dataio.dataset.set_output_keys(items, ["id", "sig", "wrd", "tokens"])
    return datasets


def read_audio_checked(path, sample_rate):
    """Read a waveform with SpeechBrain, naming the file on failure and
    resampling when its rate differs from ``sample_rate``."""
    import soundfile

    try:
        info = soundfile.info(path)
        sig = sb.dataio.dataio.read_audio(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise RuntimeError(f"cannot read audio file {path}: {exc}") from exc
    if sig.dim() > 1:
        sig = sig.mean(dim=-1)
    if info.samplerate != sample_rate:
        import torchaudio

        sig = torchaudio.functional.resample(sig, info.samplerate, sample_rate)
    return sig


class CTCASRBrain(MetaBrain):
    """CRDNN encoder + CTC (+ optional attention decoder) as a MetaBrain.

    Modules expected in ``modules``: ``enc``, ``ctc_lin``, ``normalize``; for
    the attention decoder also ``emb``, ``dec``, ``seq_lin`` (and ``bos_index``,
    ``eos_index``, ``ctc_weight`` in hparams). ``self.tokenizer`` must be set
    before evaluating (it turns CTC outputs into words).
    """

    tokenizer = None

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        feats = self.hparams.compute_features(wavs)
        feats = self.modules.normalize(feats, wav_lens)
        x = self.modules.enc(feats)
        p_ctc = self.hparams.log_softmax(self.modules.ctc_lin(x))
        out = {"p_ctc": p_ctc, "wav_lens": wav_lens}
        if "dec" in self.modules and getattr(self.hparams, "ctc_weight", 1.0) < 1.0:
            tokens, tokens_lens = batch.tokens
            bos = torch.full_like(tokens[:, :1], self.hparams.bos_index)
            e_in = self.modules.emb(torch.cat([bos, tokens], dim=1))
            h, _ = self.modules.dec(e_in, x, wav_lens)
            out["p_seq"] = self.hparams.log_softmax(self.modules.seq_lin(h))
        return out

    def compute_objectives(self, predictions, batch, stage):
        tokens, tokens_lens = batch.tokens
        p_ctc, wav_lens = predictions["p_ctc"], predictions["wav_lens"]
        loss = self.hparams.ctc_cost(p_ctc, tokens, wav_lens, tokens_lens)
        if "p_seq" in predictions:
            eos = torch.full_like(tokens[:, :1], self.hparams.eos_index)
            tokens_eos = torch.cat([tokens, eos], dim=1)
            # append EOS at each sequence's true end
            abs_len = torch.round(tokens_lens * tokens.shape[1]).long()
            tokens_eos[torch.arange(tokens.shape[0]), abs_len] = self.hparams.eos_index
            eos_lens = (abs_len + 1).float() / tokens_eos.shape[1]
            seq_loss = sb.nnet.losses.nll_loss(predictions["p_seq"], tokens_eos, length=eos_lens)
            w = self.hparams.ctc_weight
            loss = w * loss + (1 - w) * seq_loss
        if stage != sb.Stage.TRAIN:
            hyps = self.decode(predictions)
            refs = [w.split() for w in batch.wrd]
            self.wer_metric.append(batch.id, [h.split() for h in hyps], refs)
            self.cer_metric.append(batch.id, [list(h) for h in hyps], [list(w) for w in batch.wrd])
        return loss

    def decode(self, predictions):
        """Greedy CTC transcripts (strings) of a forward's predictions."""
        seqs = sb.decoders.ctc_greedy_decode(
            predictions["p_ctc"], predictions["wav_lens"], blank_id=0
        )
        return [self.tokenizer.decode(s) for s in seqs]

    def on_stage_start(self, stage, epoch):
        if stage != sb.Stage.TRAIN:
            self.wer_metric = sb.utils.metric_stats.ErrorRateStats()
            self.cer_metric = sb.utils.metric_stats.ErrorRateStats(split_tokens=False)

    def on_stage_end(self, stage, stage_loss, epoch):
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        stats["WER"] = self.wer_metric.summarize("error_rate")
        stats["CER"] = self.cer_metric.summarize("error_rate")
        logger_ = getattr(self.hparams, "train_logger", None)
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"] if hasattr(self, "optimizer") else None
            if logger_ is not None:
                logger_.log_stats(
                    stats_meta={"epoch": epoch, "lr": lr},
                    train_stats=getattr(self, "train_stats", None),
                    valid_stats=stats,
                )
            if self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(meta={"WER": stats["WER"]}, min_keys=["WER"])
        elif stage == sb.Stage.TEST:
            self.test_stats = stats
            if logger_ is not None:
                logger_.log_stats(
                    stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                    test_stats=stats,
                )
            out = getattr(self.hparams, "test_wer_file", None)
            if out:
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with open(out, "w") as w:
                    self.wer_metric.write_stats(w)


def load_initialisation(hparams, folder, tokenizer=None):
    """Initialise a recipe's ``model`` and ``normalize`` from a pretrained folder.

    This is what the recipes' ``init_from`` key does: meta-train (or keep
    training) from a model exported in SpeechBrain's pretrained format by a
    recipe or by :meth:`sb_meta.inference.AdaptableASR.export` (``model.ckpt``:
    the state dict of ``ModuleList([enc, ctc_lin])``; ``normalizer.ckpt``:
    the feature statistics). Only the weights are taken: the optimizer, the
    epoch counter and the episode stream start afresh. A checkpoint already in
    the experiment's ``save_folder`` still takes precedence (``fit`` recovers
    it), so an interrupted run resumes rather than restarting from ``folder``.

    Arguments
    ---------
    hparams : dict
        The recipe's loaded hyperparameters (``model``, ``normalize``).
    folder : str or pathlib.Path
        The pretrained folder.
    tokenizer : CharTokenizer, optional
        The recipe's tokenizer. With a character tokenizer and a
        ``tokenizer.ckpt`` in ``folder``, their alphabets must be the same
        (the output layer's rows are tied to them).

    Raises
    ------
    FileNotFoundError
        When ``folder`` or one of its two files is missing (named).
    ValueError
        When the tokenizers or the network shapes differ.

    Example
    -------
    >>> load_initialisation({"model": None, "normalize": None}, "/no/such/folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: init_from: /no/such/folder is not a folder
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"init_from: {folder} is not a folder")
    files = {name: folder / f"{name}.ckpt" for name in ("model", "normalizer")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"init_from: {folder} lacks {', '.join(missing)}")
    tok_file = folder / "tokenizer.ckpt"
    if isinstance(tokenizer, CharTokenizer) and tok_file.is_file():
        from speechbrain.dataio.encoder import CTCTextEncoder

        enc = CTCTextEncoder()
        try:
            enc.load(tok_file)
            theirs = [enc.ind2lab[i] for i in range(1, len(tokenizer.chars) + 1)]
        except (KeyError, ValueError, OSError) as exc:
            theirs = f"unreadable ({exc})"
        if theirs != tokenizer.chars:
            raise ValueError(
                f"init_from: the tokenizer of {folder} ({theirs!r}) differs from this "
                f"recipe's ({tokenizer.chars!r}); the output layer would be misread"
            )
    state = torch.load(files["model"], map_location="cpu", weights_only=True)
    try:
        hparams["model"].load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"init_from: {files['model']} does not fit this recipe's model: {exc}") from None
    hparams["normalize"]._load(files["normalizer"])
    logger.info("Initialised model and normalizer from %s", folder)


def run_recipe(argv, prepare):
    """The body of a recipe's ``train.py``: parse, prepare, meta-train, test.

    Arguments
    ---------
    argv : list of str
        ``hparams.yaml`` followed by SpeechBrain flags and YAML overrides
        (``--meta_strategy=maml --inner_steps=3``).
    prepare : callable
        ``prepare(hparams) -> {"train": csv, "valid": csv, "test": csv}``;
        must be idempotent (it runs on the main process first, then on all).

    Returns
    -------
    CTCASRBrain
        The trained brain (``brain.test_stats`` holds test WER/CER).
    """
    from hyperpyyaml import load_hyperpyyaml

    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    sb.utils.distributed.run_on_main(prepare, kwargs={"hparams": hparams})
    csvs = prepare(hparams)
    kind = hparams.get("tokenizer_type", "char")
    sb.utils.distributed.run_on_main(
        build_tokenizer,
        args=[kind, csvs["train"], hparams["save_folder"], hparams.get("vocab_size")],
    )
    tokenizer = build_tokenizer(kind, csvs["train"], hparams["save_folder"], hparams.get("vocab_size"))
    if tokenizer.vocab_size > hparams["output_neurons"]:
        raise ValueError(
            f"the {kind} tokenizer has {tokenizer.vocab_size} tokens (blank included) but "
            f"output_neurons is {hparams['output_neurons']}; raise output_neurons in {hparams_file}"
        )
    datasets = dataio_prepare(hparams, tokenizer, csvs)
    if hparams.get("init_from"):
        # before the brain moves the modules to its device; a checkpoint in
        # save_folder (resume) still wins, since fit() recovers it afterwards
        load_initialisation(hparams, hparams["init_from"], tokenizer)
    brain = CTCASRBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.tokenizer = tokenizer
    brain.fit(
        hparams["epoch_counter"],
        brain.make_episode_loader(datasets["train"]),
        datasets["valid"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    brain.evaluate(
        datasets["test"], min_key="WER", test_loader_kwargs=hparams["test_dataloader_opts"]
    )
    export_folder = hparams.get("export_folder")
    if export_folder:
        from sb_meta.inference import export_brain

        # the evaluated (best-WER) model, in SpeechBrain's pretrained format
        sb.utils.distributed.run_on_main(export_brain, args=[brain, export_folder])
        logger.info("Exported the model to %s (load it with sb_meta.inference.load_model "
                    "or speechbrain's EncoderASR.from_hparams)", export_folder)
    return brain
