"""Shared fixtures of the three test groups (as SpeechBrain groups its tests):

* ``tests/unit/``: one function or class at a time, toy models; ``make test-fast``;
* ``tests/integration/``: tiny trained models through the public API and the CLI,
  exports, preparation scripts, plugins installed for real;
* ``tests/e2e/``: end-to-end trainings of the recipes (their CI runs), the demo,
  the README's commands and the wheel installed outside the checkout.

Helpers the tests share live in the ``helpers`` package beside this file (put on
``sys.path`` here); no test file imports another.

Real corpora are reached through environment variables (``.ci/run`` exports
them). When a variable is unset the tests that need it skip, saying why; when
it is set but the data is not there, they fail.
"""

import os
import pathlib
import sys

import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent
for path in (HERE, HERE.parent):  # the helpers package; the repository (studies/, benchmarks/)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def _corpus_root(var, must_contain):
    value = os.environ.get(var)
    if not value:
        pytest.skip(f"{var} is not set; set it to run tests on the real corpus")
    root = pathlib.Path(value)
    missing = [p for p in must_contain if not (root / p).exists()]
    if missing:
        pytest.fail(f"{var}={value} is set but {missing} is missing there")
    return root


@pytest.fixture(scope="session")
def an4_root():
    """Root of the CMU AN4 corpus in its original layout ($SBMETA_AN4_ROOT)."""
    return _corpus_root(
        "SBMETA_AN4_ROOT",
        ["etc/an4_train.transcription", "etc/an4_test.transcription", "wav"],
    )


@pytest.fixture(scope="session")
def speechocean762_root():
    """speechocean762 in its published layout ($SBMETA_SPEECHOCEAN762_ROOT; CI: the 8-speaker mini copy)."""
    return _corpus_root(
        "SBMETA_SPEECHOCEAN762_ROOT",
        ["train/text", "train/wav.scp", "test/text", "test/wav.scp", "WAVE"],
    )


@pytest.fixture(scope="session")
def librispeech_root():
    """A LibriSpeech root in native layout ($SBMETA_LIBRISPEECH_ROOT)."""
    return _corpus_root("SBMETA_LIBRISPEECH_ROOT", [])


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """A tiny corpus of ``sb-meta synth`` (6 speakers x 5 utterances), made once."""
    from sb_meta.data.synth import generate_corpus

    out = tmp_path_factory.mktemp("synth")
    generate_corpus(out, speakers=6, utts_per_speaker=5, seed=1, progress=False)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one torch thread: tiny models are fastest so and do not
    suffer from a busy machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _restore_logging():
    """A recipe run configures logging (SpeechBrain's ``setup_logging``) with a stream
    handler bound to that test's captured stderr; later tests would see it write to
    a closed stream. Every test gets the root logger's handlers back as they were."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    disabled = {name: lg.disabled for name, lg in logging.root.manager.loggerDict.items()
                if isinstance(lg, logging.Logger)}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lg in logging.root.manager.loggerDict.items():
        if isinstance(lg, logging.Logger):
            lg.disabled = disabled.get(name, False)
