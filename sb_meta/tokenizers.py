"""The tokenizer of an sb-meta recipe: making it, checking the transcripts against it,
encoding and decoding.

:func:`prepare_tokenizer` builds (or reloads) the recipe's tokenizer, a
character ``CTCTextEncoder`` or a SentencePiece model; with ``init_from`` naming
a character model, that model's label order is kept (cross-corpus
initialisation). :func:`check_transcripts` finds transcripts it cannot encode
before training starts; :func:`encode_text`, :func:`decode_ids` and
:func:`ctc_greedy_words` turn text into ids and back.
:func:`check_same_tokenizer` is what ``init_from`` checks a pretrained folder's
tokenizer with (:func:`sb_meta.recipe.load_initialisation`). Recipes import
these names from :mod:`sb_meta.recipe`, which re-exports them.
"""

import pathlib

import speechbrain as sb

from sb_meta.utils import RecipeError

__all__ = ["check_same_tokenizer", "check_transcripts", "ctc_greedy_words", "decode_ids", "encode_text",
           "prepare_tokenizer"]


def prepare_tokenizer(hparams, train_csv, save_folder):
    """Create (or reload) the recipe's tokenizer, ``hparams["tokenizer"]``.

    ``speechbrain.dataio.encoder.CTCTextEncoder`` (characters): built from the
    training transcripts with the CTC blank at index 0 and ``<unused_i>``
    labels up to ``output_neurons`` (so every network output decodes); with
    ``init_from`` naming a character model, that model's label order is kept
    and characters it lacks take its ``<unused_i>`` slots (cross-corpus
    initialisation: every pretrained output row stays tied to its character);
    ``sentencepiece.SentencePieceProcessor``: trained with SpeechBrain's
    SentencePiece wrapper (``tokenizer_type`` unigram/bpe/char,
    ``output_neurons`` pieces) with id 0 reserved (``unk_id: 0``, SpeechBrain's
    CTC blank) and ``bos_index`` / ``eos_index`` for attention decoders.
    Either is saved in ``save_folder`` and reused; it runs on the main process
    first (DDP-safe).

    Returns
    -------
    The tokenizer object (the same one the YAML declared).
    """
    from speechbrain.dataio.encoder import CTCTextEncoder

    tok = hparams["tokenizer"]
    n_out = int(hparams["output_neurons"])
    save_folder = pathlib.Path(save_folder)
    if isinstance(tok, CTCTextEncoder):
        path = save_folder / "tokenizer.txt"

        def create():
            if path.is_file():
                return
            from sb_meta.data.manifest import read_manifest

            chars = sorted({c for r in read_manifest(train_csv, required=("ID", "wrd")) for c in r["wrd"]})
            base = _init_labels(hparams)
            enc = _extend_labels(base, chars, n_out) if base else _new_labels(chars, n_out)
            save_folder.mkdir(parents=True, exist_ok=True)
            enc.save(path)

        sb.utils.distributed.run_on_main(create)
        tok.load(path)
        tok.expect_len(n_out)
        if len(tok) != n_out:
            raise RecipeError(
                f"the tokenizer {path} has {len(tok)} labels but output_neurons is {n_out}; "
                "delete it or use the output_neurons it was made for"
            )
        return tok
    if hasattr(tok, "encode_as_ids"):
        from speechbrain.tokenizers.SentencePiece import SentencePiece

        kind = hparams.get("tokenizer_type", "unigram")
        folder = save_folder / "tokenizer"

        def train():
            SentencePiece(
                model_dir=str(folder), vocab_size=n_out, annotation_train=str(train_csv),
                annotation_read="wrd", model_type=kind, character_coverage=1.0,
                unk_id=0, bos_id=int(hparams.get("bos_index", 1)), eos_id=int(hparams.get("eos_index", 2)),
            )

        sb.utils.distributed.run_on_main(train)
        model = folder / f"{n_out}_{kind}.model"
        tok.load(str(model))
        if tok.vocab_size() != n_out:
            raise RecipeError(
                f"the {kind} SentencePiece model {model} has {tok.vocab_size()} pieces (specials "
                f"included) but output_neurons is {n_out}; set output_neurons: {tok.vocab_size()} "
                "(every network output must be a piece the tokenizer can decode)"
            )
        return tok
    raise RecipeError(
        f"tokenizer must be a speechbrain.dataio.encoder.CTCTextEncoder or a "
        f"sentencepiece.SentencePieceProcessor, got {type(tok).__name__}"
    )


def encode_text(tokenizer, text):
    """Token ids of ``text`` (characters or SentencePiece pieces)."""
    if hasattr(tokenizer, "encode_as_ids"):
        return tokenizer.encode_as_ids(text)
    return tokenizer.encode_sequence(list(text))


def check_transcripts(tokenizer, csvs):
    """Every transcript of the manifests is non-empty and encodable; raise a
    :class:`RecipeError` naming the file, utterance and characters otherwise."""
    from sb_meta.data.manifest import read_manifest

    problems = []
    for split, path in csvs.items():
        for row in read_manifest(path, required=("ID", "duration", "wav", "wrd"), nonempty=("ID", "wav")):
            text = row["wrd"]
            if not text.strip():
                problems.append(f"{path}: utterance {row['ID']}: empty transcript")
                continue
            if hasattr(tokenizer, "lab2ind"):
                unknown = sorted({c for c in text if c not in tokenizer.lab2ind})
                if unknown:
                    problems.append(
                        f"{path}: utterance {row['ID']}: characters {unknown} are not in the "
                        "training transcripts (the tokenizer's alphabet)"
                    )
            elif 0 in tokenizer.encode_as_ids(text):
                problems.append(f"{path}: utterance {row['ID']}: text the SentencePiece model cannot encode")
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... ({len(problems)} in all)" if len(problems) > 10 else ""
        raise RecipeError(f"{len(problems)} bad transcript(s):\n  {shown}{more}")


def _new_labels(chars, n_out):
    """A character encoder: blank at 0, ``chars``, ``<unused_i>`` up to ``n_out``."""
    from speechbrain.dataio.encoder import CTCTextEncoder

    enc = CTCTextEncoder()
    enc.insert_blank("<blank>", index=0)
    for c in chars:
        enc.add_label(c)
    if len(enc) > n_out:
        raise RecipeError(
            f"the training transcripts have {len(chars)} characters (+ blank) but "
            f"output_neurons is {n_out}; raise output_neurons"
        )
    for i in range(len(enc), n_out):
        enc.add_label(f"<unused_{i}>")
    return enc


def _init_labels(hparams):
    """The label list of ``init_from``'s character tokenizer, or None."""
    folder = hparams.get("init_from")
    if not folder or not (pathlib.Path(folder) / "tokenizer.ckpt").is_file():
        return None
    from speechbrain.dataio.encoder import CTCTextEncoder

    theirs = CTCTextEncoder()
    try:
        theirs.load(pathlib.Path(folder) / "tokenizer.ckpt")
    except Exception:  # noqa: BLE001 - not a character tokenizer: nothing to keep
        return None
    return [theirs.ind2lab[i] for i in range(len(theirs))]


def _extend_labels(base, chars, n_out):
    """Model surgery for ``init_from`` across corpora: keep the pretrained model's
    label order (its output rows stay tied to their characters) and give each new
    character an ``<unused_i>`` slot, whose row the pretrained model never emitted.

    Example
    -------
    >>> enc = _extend_labels(["<blank>", "A", "B", "<unused_3>"], ["A", "C"], 4)
    >>> [enc.ind2lab[i] for i in range(4)]
    ['<blank>', 'A', 'B', 'C']
    """
    from speechbrain.dataio.encoder import CTCTextEncoder

    labels = list(base) + [f"<unused_{i}>" for i in range(len(base), n_out)]
    free = [i for i, lab in enumerate(labels) if lab.startswith("<unused_")]
    new = [c for c in chars if c not in labels]
    if len(new) > len(free) or len(labels) != n_out:
        raise RecipeError(
            f"init_from: the pretrained model has {len(base)} outputs with {len(free)} unused, "
            f"output_neurons is {n_out}, and the training transcripts add {len(new)} characters "
            f"({''.join(new)!r}); the output layer cannot hold them"
        )
    for c, i in zip(new, free):
        labels[i] = c
    enc = CTCTextEncoder()
    enc.insert_blank(labels[0], index=0)
    for lab in labels[1:]:
        enc.add_label(lab)
    return enc


def check_same_tokenizer(tok, path, folder):
    """Raise a :class:`RecipeError` unless the tokenizer saved at ``path`` (in the model
    folder ``folder``) is ``tok``, or ``tok`` extends it into its unused labels."""
    if hasattr(tok, "lab2ind"):
        from speechbrain.dataio.encoder import CTCTextEncoder

        theirs = CTCTextEncoder()
        try:
            theirs.load(path)
            # the same, or extended into unused slots by _extend_labels
            same = len(theirs) == len(tok) and all(
                lab == tok.ind2lab[i] or lab.startswith("<unused_") for i, lab in theirs.ind2lab.items())
        except Exception:  # noqa: BLE001 - unreadable counts as different
            same = False
    else:
        same = path.read_bytes() == tok.serialized_model_proto()
    if not same:
        raise RecipeError(
            f"init_from: the tokenizer of {folder} differs from this recipe's; the output "
            "layer would be misread (train with the same transcripts and tokenizer settings)"
        )


def ctc_greedy_words(log_probs, lengths, tokenizer, blank_index=0):
    """Greedy CTC transcripts (strings) of a batch."""
    seqs = sb.decoders.ctc_greedy_decode(log_probs, lengths, blank_id=blank_index)
    return [decode_ids(tokenizer, s) for s in seqs]


def decode_ids(tokenizer, ids):
    """The text of token ids (characters or SentencePiece pieces)."""
    ids = [int(i) for i in ids]
    if hasattr(tokenizer, "decode_ids") and hasattr(tokenizer, "encode_as_ids"):
        return tokenizer.decode_ids(ids)
    # characters only: the blank and <unused_i> padding labels read as nothing
    return "".join(lab for lab in tokenizer.decode_ndim(ids) if len(lab) == 1)
