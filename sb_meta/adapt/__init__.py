"""Test-time adaptation of trained recognizers: load, adapt, transcribe, export.

:func:`load_model` loads any SpeechBrain ``EncoderASR`` / ``EncoderDecoderASR``
folder (sb-meta's exports and models sb-meta did not train) as an
:class:`AdaptableASR`, which transcribes like the SpeechBrain interface it
wraps and adapts to a speaker, an accent, a channel... from a few transcribed
utterances: :meth:`AdaptableASR.adapt` takes a :class:`Support` set and a
:class:`Method` (or its string form) and returns a *new* adapted model that
:meth:`AdaptableASR.export` writes as a pretrained folder again (or
:meth:`AdaptableASR.export_adapters` writes its adapters alone).

Example
-------
>>> model = load_model("results/AN4/fomaml/1234/pretrained")  # doctest: +SKIP
>>> adapted = model.adapt(Support(["a.wav", "b.wav"], ["YES", "NO"]), Method(steps=3))  # doctest: +SKIP
>>> adapted.export("speaker42")  # doctest: +SKIP
"""

from sb_meta.adapt.adapters import base_model_sha256
from sb_meta.adapt.loading import load_model
from sb_meta.adapt.method import Method, Support
from sb_meta.adapt.model import AdaptableASR, AdaptationError
from sb_meta.adapt.safeguard import guarded_adapt

__all__ = ["load_model", "AdaptableASR", "AdaptationError", "Method", "Support", "base_model_sha256", "guarded_adapt"]
