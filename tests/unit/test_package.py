"""The distribution's face: one version (sb_meta.__version__, which setup.cfg reads) shown
by ``sb-meta --version`` and CITATION.cff, and the Apache-2.0 licence it declares."""

import pathlib
import re

import pytest

from sb_meta import __version__
from sb_meta.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_sb_meta_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"sb-meta {__version__}"


def test_the_citation_and_setup_cfg_name_that_version_and_licence():
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(__version__)}$", citation, re.M)
    assert "license: Apache-2.0" in citation
    setup = (ROOT / "setup.cfg").read_text()
    assert "version = attr: sb_meta.__version__" in setup and "license = Apache-2.0" in setup
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
