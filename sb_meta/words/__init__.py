"""Few-shot spoken terms: word heads, word models, enrolment, classification and evaluation.

* :mod:`sb_meta.words.heads`: prototype, matching-network and linear heads;
* :mod:`sb_meta.words.export`: word models as SpeechBrain ``EncoderClassifier`` folders;
* :mod:`sb_meta.words.model`: :func:`load_word_model`, :class:`WordModel` (enrol, classify, export);
* :mod:`sb_meta.words.evaluation`: N-way k-shot accuracy with 95% confidence intervals;
* :mod:`sb_meta.words.commands`: ``sb-meta words enrol | classify | evaluate | synth``.

The strategies that train word encoders (``protonet``, ``matching``,
``finetune_classifier``) are in ``plugins/metric.py``; the recipe is
``recipes/AN4Words``.
"""

from sb_meta.words.model import WordModel, load_word_model

__all__ = ["WordModel", "load_word_model"]
