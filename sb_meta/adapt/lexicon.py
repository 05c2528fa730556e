"""Lexicon-constrained CTC decoding: hypotheses made only of known words.

A character CTC model decoded greedily spells words as it hears them
("TWENY" for "TWENTY", "EIGHTEIGHT" for "EIGHT EIGHT"). On a closed
vocabulary (AN4's 99 words, commands, digits, names spelled out) a beam
search that follows only the spellings of the lexicon's words removes those
errors and leaves the acoustic ones (an N heard as M).

The search is torchaudio's flashlight lexicon decoder
(:func:`torchaudio.models.decoder.ctc_decoder`, here without a language
model; it needs the ``flashlight-text`` package). This module only maps a
SpeechBrain character CTC model's labels and a word list onto it. Every
lexicon entry ends with the word separator (the space label), so the last
word of an utterance is closed by one appended frame that holds only the
separator (a CTC model trained on SpeechBrain transcripts emits no space
after the last word).

Example
-------
>>> dec = LexiconDecoder(["<blank>", " ", "A", "B", "N", "O"], ["NO", "BAN", "A"])
>>> frames = torch.full((1, 4, 6), -10.0)
>>> for t, label in enumerate([4, 0, 5, 5]):  # N, blank, O, O
...     frames[0, t, label] = 0.0
>>> dec(frames, torch.tensor([1.0]))
['NO']
"""

import csv
import os
import pathlib
import tempfile

import torch

__all__ = ["LexiconDecoder", "read_words"]

#: log-probability of every label but the separator in the frame appended to close the last word
_CLOSED = -30.0


def read_words(source):
    """The distinct words of ``source``, sorted: a list of words, a text file (words
    separated by white space, e.g. one per line) or a SpeechBrain CSV manifest (its
    ``wrd`` column).

    Example
    -------
    >>> read_words(["B A", "A C"])
    ['A', 'B', 'C']
    """
    if isinstance(source, (str, os.PathLike)) and pathlib.Path(source).exists():
        path = pathlib.Path(source)
        if not path.is_file():
            raise ValueError(f"lexicon {path} is not a file")
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if "wrd" not in (reader.fieldnames or []):
                    raise ValueError(f"lexicon manifest {path} has no wrd column; columns are {reader.fieldnames}")
                texts = [row["wrd"] or "" for row in reader]
        else:
            texts = path.read_text(encoding="utf-8").split()
    elif isinstance(source, (str, os.PathLike)):
        raise FileNotFoundError(f"lexicon {source} does not exist (give a word list, a text file or a CSV manifest)")
    else:
        texts = [str(t) for t in source]
    words = sorted({w for text in texts for w in text.split()})
    if not words:
        raise ValueError(f"lexicon {source if isinstance(source, (str, os.PathLike)) else 'list'} has no word")
    return words


class LexiconDecoder:
    """Beam search over a character CTC model's log-probabilities, restricted to words of a lexicon.

    Arguments
    ---------
    labels : list of str
        The model's output labels by index (``CTCTextEncoder.ind2lab``); one of
        them is the space, the word separator.
    words : list of str or str or pathlib.Path
        The lexicon (see :func:`read_words`).
    blank_index : int
        Index of the CTC blank.
    beam_size : int
        Hypotheses kept per frame (torchaudio's default, 50).
    word_score : float
        Added per word (torchaudio's default, 0).
    sil_score : float
        Added per separator (torchaudio's default, 0).

    Raises
    ------
    ValueError
        When the labels have no space, or a word has a character the model cannot emit (named).
    ImportError
        When ``flashlight-text`` is not installed.
    """

    def __init__(self, labels, words, blank_index=0, beam_size=50, word_score=0.0, sil_score=0.0):
        labels = [str(label) for label in labels]
        if " " not in labels:
            raise ValueError("lexicon decoding needs a character CTC model whose labels include the space "
                             f"(the word separator); this model's labels are {labels[:12]}...")
        if not 0 <= blank_index < len(labels):
            raise ValueError(f"blank_index {blank_index} is not a label index (0..{len(labels) - 1})")
        self.words = read_words(words)
        chars = set(labels) - {" ", labels[blank_index]}
        bad = [w for w in self.words if not set(w) <= chars]
        if bad:
            missing = sorted({c for w in bad for c in w} - chars)
            raise ValueError(f"{len(bad)} lexicon word(s) such as {bad[:5]} have characters the model cannot "
                             f"emit: {missing}")
        self.space_index = labels.index(" ")
        self.blank_index = blank_index
        sil = next(s for s in ("|", "<sil>", "<word_sep>") if s not in labels)
        # flashlight reads tokens separated by white space: the space label gets a name
        tokens = [sil if i == self.space_index else label for i, label in enumerate(labels)]
        if any(any(c.isspace() for c in t) or not t for t in tokens):
            raise ValueError(f"labels must have no white space but the separator: {tokens}")
        self.options = {"beam_size": int(beam_size), "word_score": float(word_score), "sil_score": float(sil_score)}
        try:
            from torchaudio.models.decoder import ctc_decoder
        except (ImportError, RuntimeError) as exc:  # torchaudio raises RuntimeError when flashlight is absent
            raise ImportError("lexicon decoding uses torchaudio's flashlight decoder: pip install flashlight-text"
                              ) from exc
        with tempfile.TemporaryDirectory() as tmp:  # flashlight reads the lexicon from a file, once
            lexicon = pathlib.Path(tmp) / "lexicon.txt"
            lexicon.write_text("".join(f"{w}\t{' '.join(w)} {sil}\n" for w in self.words), encoding="utf-8")
            self._decoder = ctc_decoder(lexicon=str(lexicon), tokens=tokens, lm=None,
                                        blank_token=tokens[blank_index], sil_token=sil, unk_word="<unk>",
                                        **self.options)

    @classmethod
    def for_tokenizer(cls, tokenizer, words, blank_index=0, **options):
        """The decoder for the labels of a SpeechBrain ``CTCTextEncoder`` (by index)."""
        ind2lab = getattr(tokenizer, "ind2lab", None)
        if not ind2lab:
            raise ValueError("lexicon decoding needs a character CTCTextEncoder, not a "
                             f"{type(tokenizer).__name__}")
        return cls([ind2lab[i] for i in range(len(ind2lab))], words, blank_index=blank_index, **options)

    @classmethod
    def for_model(cls, model, words, **options):
        """The decoder for an :class:`~sb_meta.adapt.AdaptableASR` with a CTC text encoder."""
        if model.view.losses != ["ctc"]:
            raise ValueError("lexicon decoding needs a CTC-only model with a character CTCTextEncoder "
                             f"(this one has losses {model.view.losses} and a {type(model.tokenizer).__name__})")
        return cls.for_tokenizer(model.tokenizer, words, blank_index=model.view.blank_index, **options)

    def __call__(self, log_probs, lengths):
        """Word strings for ``log_probs`` ``[batch, time, labels]`` with relative ``lengths``."""
        log_probs = log_probs.detach().float().cpu()
        batch, frames, n_labels = log_probs.shape
        valid = torch.round(lengths.detach().float().cpu() * frames).long().clamp(1, frames)
        closed = torch.full((n_labels,), _CLOSED)
        closed[self.space_index] = 0.0
        emissions = torch.cat([log_probs, closed.expand(batch, 1, n_labels)], dim=1)
        for i, n in enumerate(valid.tolist()):
            emissions[i, n] = closed  # right after the utterance's last valid frame
        out = []
        for hyps in self._decoder(emissions, valid + 1):
            out.append(" ".join(w for w in hyps[0].words if w != "<unk>") if hyps else "")
        return out

    def __repr__(self):
        return f"LexiconDecoder({len(self.words)} words, {self.options})"
