"""``WordModel``: a loaded word model that enrols new words and classifies recordings.

:func:`load_word_model` loads a folder written by
:func:`sb_meta.words.export.export_word_brain` (or by :meth:`WordModel.export`)
with SpeechBrain's ``EncoderClassifier``. :meth:`WordModel.enrol` returns a
*new* model whose head knows the given words from a few recordings each
(prototypes, a matching network's support memory or a fitted linear layer,
whichever head the model was trained with); :meth:`WordModel.export` writes
it as a folder again, which ``EncoderClassifier`` alone classifies with.

Example
-------
>>> model = load_word_model("results/AN4Words/protonet/1234/pretrained")  # doctest: +SKIP
>>> mine = model.enrol({"LIGHTS": ["l1.wav", "l2.wav"], "MUSIC": ["m1.wav", "m2.wav"]})  # doctest: +SKIP
>>> mine.classify_files(["new.wav"])  # doctest: +SKIP
[('LIGHTS', 0.93)]
>>> mine.export("my_words")  # doctest: +SKIP
"""

import copy
import json
import pathlib

import speechbrain as sb
import torch

from sb_meta.export.folder import META_FILE
from sb_meta.export.plan import HPARAMS_FILE, load_interface, now
from sb_meta.words.export import INTERFACE, KIND, label_encoder_for, set_classifier, write_word_folder
from sb_meta.words.heads import WordHead

__all__ = ["WordModel", "load_word_model", "read_segment"]


def read_segment(item, sample_rate=16000):
    """A mono waveform from a path, a tensor, or a ``{"file", "start", "stop"}`` dict
    (SpeechBrain's segment convention, samples), resampled to ``sample_rate``."""
    if torch.is_tensor(item):
        return item.float()
    import soundfile

    if isinstance(item, dict):
        path, spec = item["file"], {"file": item["file"], "start": int(item["start"]), "stop": int(item["stop"])}
    else:
        path, spec = str(item), str(item)
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"audio file {path} does not exist")
    try:
        rate = soundfile.info(path).samplerate
        sig = sb.dataio.dataio.read_audio(spec)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read audio file {path}: {exc}") from exc
    if sig.dim() > 1:
        sig = sig.mean(-1)
    if rate != sample_rate:
        import torchaudio

        sig = torchaudio.functional.resample(sig, rate, sample_rate)
    return sig


class WordModel:
    """An exported word model: embeddings, enrolment and classification.

    Arguments
    ---------
    classifier : speechbrain.inference.classifiers.EncoderClassifier
        The loaded interface (its ``classifier`` module is a
        :class:`~sb_meta.words.heads.WordHead`).
    yaml_text : str
        Its ``hyperparams.yaml``.
    info : dict
        Its ``sbmeta.json``.
    source : str, optional
        Where it was loaded from.
    """

    def __init__(self, classifier, yaml_text, info, source=None):
        self.classifier = classifier
        self.yaml_text = yaml_text
        self.info = dict(info)
        self.source = source

    def __repr__(self):
        return (f"WordModel(source={self.source!r}, strategy={self.strategy!r}, "
                f"head={type(self.head).__name__}, words={self.words})")

    @property
    def head(self):
        return self.classifier.mods.classifier

    @property
    def words(self):
        """The enrolled words, in label order."""
        enc = self.classifier.hparams.label_encoder
        return [enc.ind2lab[i] for i in range(len(enc.ind2lab))]

    @property
    def strategy(self):
        return self.info.get("strategy")

    @property
    def train_classes(self):
        """The classes the encoder was trained on (from ``sbmeta.json``)."""
        return list(self.info.get("train_classes") or [])

    @property
    def device(self):
        return self.classifier.device

    @property
    def sample_rate(self):
        return int(getattr(self.classifier.audio_normalizer, "sample_rate", 16000))

    # ------------------------------------------------------------ embeddings
    def embed_batch(self, wavs, wav_lens=None):
        """Embeddings ``[batch, dim]`` of padded waveforms."""
        with torch.no_grad():
            out = self.classifier.encode_batch(wavs, wav_lens)
        return out.reshape(out.shape[0], -1)

    def embed(self, audio, batch_size=16):
        """Embeddings ``[n, dim]`` of recordings (paths, waveforms or segment dicts),
        in order, batched by similar length."""
        wavs = [read_segment(a, self.sample_rate) for a in audio]
        out = [None] * len(wavs)
        order = sorted(range(len(wavs)), key=lambda i: -len(wavs[i]))
        for start in range(0, len(order), max(1, int(batch_size))):
            idx = order[start:start + batch_size]
            batch, lens = sb.utils.data_utils.batch_pad_right([wavs[i] for i in idx])
            for i, e in zip(idx, self.embed_batch(batch, lens)):
                out[i] = e
        if not out:
            return torch.zeros(0, self.head.embedding_dim)
        return torch.stack(out)

    # ------------------------------------------------------------ enrolment
    def enrol(self, examples, names=None):
        """A new model whose head knows ``examples`` (this one is unchanged).

        Arguments
        ---------
        examples : dict
            ``{word: [recording, ...]}`` (paths, waveforms or segment dicts),
            at least two words; every word's recordings form its support set.
        names : dict, optional
            ``{word: [id, ...]}`` recorded in ``sbmeta.json`` (default: the paths).

        Returns
        -------
        WordModel
        """
        if len(examples) < 2:
            raise ValueError(f"enrol at least two words, got {list(examples)}")
        empty = [w for w, recs in examples.items() if not recs]
        if empty:
            raise ValueError(f"no recording for word(s) {empty}")
        words = [str(w) for w in examples]
        if len(set(words)) != len(words):
            raise ValueError(f"a word is given twice: {words}")
        audio, labels = [], []
        for i, recs in enumerate(examples.values()):
            audio.extend(recs)
            labels.extend([i] * len(recs))
        emb = self.embed(audio)
        head = copy.deepcopy(self.head)
        head.enrol(emb, torch.tensor(labels), len(words))
        encoder = label_encoder_for(words)
        hparams = dict(vars(self.classifier.hparams), classifier=head, label_encoder=encoder)
        mods = dict(self.classifier.mods)
        mods["classifier"] = head
        new = type(self.classifier)(modules=mods, hparams=hparams, run_opts={"device": str(self.device)})
        info = copy.deepcopy(self.info)
        info["words"] = words
        record = {"time": now(), "words": {w: [_name(r) for r in recs] for w, recs in examples.items()}}
        if names:
            record["words"] = {w: list(names.get(w, record["words"][w])) for w in words}
        info["enrolments"] = list(info.get("enrolments") or []) + [record]
        return WordModel(new, self.yaml_text, info, source=self.source)

    # ------------------------------------------------------------ classification
    def _check_enrolled(self):
        if not self.words:
            raise ValueError(f"no word is enrolled in {self.source}; enrol some first "
                             "(sb-meta words enrol, or WordModel.enrol)")

    def classify_batch(self, wavs, wav_lens=None):
        """``(log_probs [batch, words], words)`` of padded waveforms (``EncoderClassifier``'s own)."""
        self._check_enrolled()
        with torch.no_grad():
            out_prob, _, _, labels = self.classifier.classify_batch(wavs, wav_lens)
        return out_prob, list(labels)

    def classify(self, audio, batch_size=16):
        """``[(word, probability)]`` for recordings (paths, waveforms or segment dicts)."""
        self._check_enrolled()
        emb = self.embed(audio, batch_size)
        with torch.no_grad():
            log_probs = self.head(emb.to(self.device))
        best = log_probs.argmax(-1).tolist()
        return [(self.words[b], float(lp[b].exp())) for b, lp in zip(best, log_probs)]

    classify_files = classify

    # ------------------------------------------------------------ export
    def export(self, folder, force=False, verify=True):
        """Write this model (with its enrolled words) as a SpeechBrain folder."""
        from ruamel.yaml import YAML

        from sb_meta.trust import unneeded_untrusted_keys

        body = "".join(line for line in self.yaml_text.splitlines(True) if not line.startswith("#"))
        doc = YAML().load(body)
        for key in unneeded_untrusted_keys(body):  # code of a folder loaded with trust=True, unused
            doc.pop(key)
        set_classifier(doc, self.head)
        mods = self.classifier.mods
        loadables = {
            "embedding_model": copy.deepcopy(mods.embedding_model).cpu(),
            "mean_var_norm": copy.deepcopy(mods.mean_var_norm).cpu(),
            "classifier": copy.deepcopy(self.head).cpu(),
            "label_encoder": self.classifier.hparams.label_encoder,
        }
        info = dict(self.info, exported=now(), source=str(self.source))
        info.pop("files", None)
        return write_word_folder(folder, doc, loadables, info, reference=self.embed_batch,
                                 force=force, verify=verify)


def _name(rec):
    if isinstance(rec, dict):
        return f"{rec['file']}[{rec['start']}:{rec['stop']}]"
    return str(rec) if not torch.is_tensor(rec) else "<waveform>"


def load_word_model(folder, device=None, trust=False):
    """Load a word model folder (see :mod:`sb_meta.words.export`).

    A folder whose ``hyperparams.yaml`` names code outside what
    :mod:`sb_meta.trust` allows is refused unless ``trust=True``.

    Raises
    ------
    FileNotFoundError
        For a missing folder or files.
    ValueError
        For a folder that is not an sb-meta word model.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"word model folder {folder} does not exist")
    meta = folder / META_FILE
    if not meta.is_file():
        raise ValueError(f"{folder} is not an sb-meta word model: no {META_FILE}")
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{meta} is corrupt: {exc}") from exc
    if info.get("kind") != KIND or info.get("interface") != INTERFACE:
        raise ValueError(f"{folder} is not an sb-meta word model ({meta} says kind "
                         f"{info.get('kind')!r}, interface {info.get('interface')!r}); ASR models "
                         "load with sb_meta.adapt.load_model")
    missing = [f for f in info.get("files", []) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"the word model in {folder} is incomplete: missing {missing}")
    if not trust:
        from sb_meta.trust import check_model_folder

        hp = folder / HPARAMS_FILE
        check_model_folder(folder, hp.read_text(encoding="utf-8") if hp.is_file() else "", str(hp), info)
    try:
        classifier = load_interface(INTERFACE, folder, savedir=folder, device=device)
    except Exception as exc:  # noqa: BLE001 - re-raised with the folder named
        raise ValueError(f"cannot load the word model in {folder}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(classifier.mods.classifier, WordHead):
        raise ValueError(f"the classifier of {folder} is not an sb-meta word head")
    return WordModel(classifier, (folder / HPARAMS_FILE).read_text(encoding="utf-8"), info, source=str(folder))
