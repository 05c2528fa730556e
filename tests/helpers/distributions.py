"""Third-party plugins installed for real in a test: a module and its ``.dist-info``
with an ``sb_meta.plugins`` entry point, on a folder put on ``sys.path``."""


def install_fake_distribution(root, dist, module, source, ep_name):
    """A real installed distribution: module + .dist-info with an entry point."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[sb_meta.plugins]\n{ep_name} = {module}\n")


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


def run_python(code, env):
    """Run ``code`` in a fresh Python with ``env`` (an installed example's); its stdout, or a
    failed assertion with the end of its output."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout
