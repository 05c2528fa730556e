"""Third-party plugins installed for real in a test: a module and its ``.dist-info``
with an ``sb_meta.plugins`` entry point, on a folder put on ``sys.path``; or an
example of ``examples/`` installed with pip. The ``*_fixture`` factories make the
pytest fixtures the tests share."""

import sys

import pytest


def install_fake_distribution(root, dist, module, source, ep_name):
    """A real installed distribution: module + .dist-info with an entry point."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[sb_meta.plugins]\n{ep_name} = {module}\n")


def fake_plugin_fixture(dist, module, source, ep_name):
    """A fixture that installs ``source`` as distribution ``dist`` (module ``module``, entry
    point ``ep_name``) on a temporary folder put on ``sys.path``, for one test."""

    @pytest.fixture
    def installed(tmp_path, monkeypatch):
        monkeypatch.syspath_prepend(str(tmp_path))
        install_fake_distribution(tmp_path, dist, module, source, ep_name)
        yield
        sys.modules.pop(module, None)

    return installed


def example_fixture(name):
    """A module-scoped fixture: ``examples/<name>`` installed with pip into a temporary target
    (:func:`pip_install_example`), checked to declare its entry points; its value is the
    environment of a Python that has the target on its path."""

    @pytest.fixture(scope="module")
    def installed(tmp_path_factory):
        target = tmp_path_factory.mktemp("site")
        env = pip_install_example(name, target, tmp_path_factory.mktemp("build"))
        dist = name.replace("-", "_")
        assert list(target.glob(f"{dist}-0.1.0.dist-info/entry_points.txt")), f"{name}: no entry points installed"
        return env

    return installed


def pip_install_example(name, target, build):
    """``pip install --no-deps --target <target> examples/<name>`` (offline, from a copy:
    building leaves ``build/`` and ``*.egg-info`` beside the sources); returns the
    environment of a Python that has ``target`` on its path."""
    import importlib.util
    import os
    import shutil
    import subprocess
    import sys

    from helpers.recipes import ROOT

    source = build / name
    shutil.copytree(ROOT / "examples" / name, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-input", "--target", str(target), str(source)]
    if importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel"):
        cmd.insert(4, "--no-build-isolation")  # build offline with what is installed
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", TMPDIR=str(build))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1")


def run_python(code, env, *args, timeout=300):
    """Run ``code`` with ``args`` as ``sys.argv[1:]`` in a fresh Python with ``env`` (an installed
    example's); its stdout, or a failed assertion with the end of its output."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout
