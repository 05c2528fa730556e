"""sb-meta: meta-learning and transfer-learning adaptation for speech recognition.

sb-meta extends SpeechBrain: a recipe keeps its ``compute_forward`` /
``compute_objectives`` and subclasses :class:`sb_meta.MetaBrain` instead of
``sb.Brain``; adaptation methods are pluggy plugins (see ``sb-meta plugins``).
"""

from sb_meta.version import __version__


def __getattr__(name):
    # Lazy imports keep ``import sb_meta`` (and the CLI start-up) light.
    if name == "MetaBrain":
        from sb_meta.brain import MetaBrain

        return MetaBrain
    if name in ("ASRPredictions", "FastWeights", "Phase", "CommandOption"):
        from sb_meta import contract

        return getattr(contract, name)
    if name == "hookimpl":
        from sb_meta.plugins import hookimpl

        return hookimpl
    raise AttributeError(f"module 'sb_meta' has no attribute {name!r}")
