"""sb-meta runs from a pip install: the wheel built from this checkout, installed into a
fresh folder outside it (its dependencies from the current environment), runs
``sb-meta --version`` and ``sb-meta demo`` with a tiny setting from another folder,
importing nothing from the checkout."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: what the wheel is built from: the package, its plugins and the build files
SOURCES = ("sb_meta", "plugins", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip wheel`` of a copy of the checkout, ``pip install --no-deps --target`` of the
    wheel; returns (the target, an environment whose Python finds the target first)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("sb_meta-*.whl")
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, text=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    return target, env


def run(args, env, cwd):
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def test_the_installed_package_is_the_one_imported(installed, tmp_path):
    target, env = installed
    out = run([sys.executable, "-c", "import sb_meta, sb_meta.demo.recipe as r, sb_meta_plugins; "
               "print(sb_meta.__file__); print(r.HPARAMS); print(sb_meta_plugins.__file__)"], env, tmp_path)
    for line in out.split():
        assert pathlib.Path(line).resolve().is_relative_to(target.resolve()), line
    from sb_meta import __version__

    assert run([str(target / "bin" / "sb-meta"), "--version"], env, tmp_path).strip() == f"sb-meta {__version__}"


def test_the_demo_runs_from_the_installed_wheel(installed, tmp_path):
    target, env = installed
    args = [str(target / "bin" / "sb-meta"), "demo", "--out", "demo_out", "--quiet"]
    for setting in ("speakers=7", "utts_per_speaker=9", "epochs=1", "episodes_per_epoch=1", "k=2"):
        args += ["--set", setting]
    out = run(args, env, tmp_path)
    assert "WER before" in out and "Demo finished" in out
    assert (tmp_path / "demo_out" / "experiment" / "pretrained" / "sbmeta.json").is_file()
    assert (tmp_path / "demo_out" / "report" / "results.json").is_file()
