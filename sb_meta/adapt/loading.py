"""Loading SpeechBrain pretrained ASR folders as :class:`~sb_meta.adapt.AdaptableASR`.

Any folder SpeechBrain's ``EncoderASR``, ``EncoderDecoderASR`` or ``WhisperASR``
loads works, sb-meta's exports and models sb-meta did not write; reading and
checking the folder is :mod:`sb_meta.adapt.pretrained`'s.
"""

from sb_meta.adapt.model import AdaptableASR
from sb_meta.adapt.pretrained import detect_interface, read_pretrained

__all__ = ["load_model", "detect_interface"]


def load_model(source, savedir=None, device=None, adapters=None, trust=False):
    """Load a SpeechBrain pretrained ASR folder as an :class:`AdaptableASR`.

    Arguments
    ---------
    source : str or pathlib.Path
        A model folder (an sb-meta export, or any SpeechBrain ``EncoderASR`` /
        ``EncoderDecoderASR`` folder), or a model hub id (``org/name``)
        already in the local cache.
    savedir : str or pathlib.Path, optional
        Where SpeechBrain collects the files; defaults to the folder itself.
    device : str, optional
        ``"cpu"``, ``"cuda:0"``...; default SpeechBrain's choice.
    adapters : str or pathlib.Path, optional
        A folder written by :meth:`AdaptableASR.export_adapters` for this base model.
    trust : bool
        Load the folder even when its ``hyperparams.yaml`` names code outside
        what :mod:`sb_meta.trust` allows (a model folder is code: only for
        sources you trust). Default: such a folder is refused before anything
        in it runs.

    Returns
    -------
    AdaptableASR

    Raises
    ------
    FileNotFoundError
        For a missing folder, an incomplete export (naming the missing files),
        or a hub id that is not cached.
    ValueError
        For a folder that is not a SpeechBrain ASR model, a corrupt file (named),
        or adapters made for another base model.
    sb_meta.trust.UntrustedModelError
        (a ``ValueError``) For a folder whose YAML names code sb-meta does not
        run without ``trust=True`` (naming the tag and its line).

    Example
    -------
    >>> model = load_model("results/pretrained")  # doctest: +SKIP
    >>> model.transcribe_file("speech.wav")  # doctest: +SKIP
    """
    model = AdaptableASR(**read_pretrained(source, savedir=savedir, device=device, trust=trust))
    if adapters is not None:
        model = model.with_adapters(adapters)
    return model
