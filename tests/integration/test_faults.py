"""Bad input and faults, command by command, table-driven: every case ends in one
line naming the culprit and exit code 2, and nothing already written is lost.

Cases that need a real kill are elsewhere: tests/integration/test_export.py (kill -9 during an
export) and tests/integration/test_resume_and_ddp.py (kill -9 while a checkpoint is written).
"""

import json
import pathlib
import shutil

import pytest


from helpers import tiny_asr as h

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from sb_meta.export import export_brain

    tmp = tmp_path_factory.mktemp("faults")
    csv = h.make_corpus(tmp / "corpus", speakers=(("s0", 5), ("s1", 4), ("s2", 2)))
    brain, yaml_path = h.train_tiny_brain(tmp / "exp", csv, strategy="fomaml", epochs=1)
    model = export_brain(brain, tmp / "model", hparams_file=yaml_path)
    return {"tmp": tmp, "csv": csv, "model": model, "rows": h.read_rows(csv), "exp": tmp / "exp"}


def write_csv(path, rows, fields=("ID", "duration", "wav", "spk_id", "wrd")):
    lines = [",".join(fields)] + [",".join(str(r.get(f, "")) for f in fields) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def make(world, tmp, case):
    """(argv, expected message) of one case; may create files in ``tmp``."""
    m, csv, rows = str(world["model"]), str(world["csv"]), world["rows"]
    adapt = ["adapt", "--model", m, "--support", csv, "--task", "s0", "--k", "2", "--steps", "1",
             "--out", str(tmp / "out")]

    def with_(**kw):
        argv = list(adapt)
        for k, v in kw.items():
            flag = "--" + k.replace("_", "-")
            i = argv.index(flag)
            argv[i + 1] = str(v)
        return argv

    if case == "model folder missing":
        return with_(model=tmp / "nope"), "does not exist"
    if case == "model folder empty":
        (tmp / "empty").mkdir()
        return with_(model=tmp / "empty"), "no hyperparams.yaml"
    if case == "model folder of garbage":
        (tmp / "junk").mkdir()
        (tmp / "junk" / "hyperparams.yaml").write_text("::: not yaml [")
        return with_(model=tmp / "junk"), "hyperparams.yaml is not"
    if case == "an experiment folder as the model":
        (tmp / "xp").mkdir()
        (tmp / "xp" / "hyperparams.yaml").write_text("lr: 1\nmodules: {}\n")
        return with_(model=tmp / "xp"), "lacks ['modules.encoder'"
    if case == "truncated checkpoint":
        shutil.copytree(world["model"], tmp / "cut")
        data = (tmp / "cut" / "model.ckpt").read_bytes()
        (tmp / "cut" / "model.ckpt").write_bytes(data[: len(data) // 3])
        return with_(model=tmp / "cut"), "model.ckpt is unreadable"
    if case == "support csv missing":
        return with_(support=tmp / "none.csv"), "none.csv does not exist"
    if case == "support csv without wrd":
        return with_(support=write_csv(tmp / "s.csv", rows, ("ID", "duration", "wav", "spk_id"))), "missing column 'wrd'"
    if case == "duplicate IDs":
        dup = [dict(r) for r in rows]
        dup[1]["ID"] = dup[0]["ID"]
        return with_(support=write_csv(tmp / "s.csv", dup)), f"duplicate ID"
    if case == "empty wav field":
        bad = [dict(r) for r in rows]
        bad[0]["wav"] = ""
        return with_(support=write_csv(tmp / "s.csv", bad)), "empty 'wav'"
    if case == "audio file missing":
        bad = [dict(r, wav=str(tmp / "gone.wav")) if r["spk_id"] == "s0" else r for r in rows]
        return with_(support=write_csv(tmp / "s.csv", bad)), "gone.wav does not exist"
    if case == "unreadable audio":
        (tmp / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
        bad = [dict(r, wav=str(tmp / "bad.wav")) if r["spk_id"] == "s0" else r for r in rows]
        return with_(support=write_csv(tmp / "s.csv", bad)), "cannot read"
    if case == "unknown characters":
        bad = [dict(r, wrd="ABQZ") if r["spk_id"] == "s0" else r for r in rows]
        return with_(support=write_csv(tmp / "s.csv", bad)), "characters the model does not know: ['Q', 'Z']"
    if case == "empty transcript":
        bad = [dict(r, wrd=" ") if r["spk_id"] == "s0" else r for r in rows]
        return with_(support=write_csv(tmp / "s.csv", bad)), "empty transcript"
    if case == "k too large":
        return with_(k=9), "--k 9 support utterances requested but spk_id='s0' has 5"
    if case == "unknown task":
        return with_(task="nobody"), "no utterance of spk_id='nobody'"
    if case == "unknown strategy":
        return adapt + ["--strategy", "mamll"], "unknown strategy 'mamll'"
    if case == "steps 0":
        return with_(steps=0), "--steps must be >= 1"
    if case == "out is a file":
        (tmp / "f").write_text("x")
        return with_(out=tmp / "f"), "exists and is not a folder"
    if case == "out is an experiment folder":
        shutil.copytree(world["exp"], tmp / "exp_copy")
        return with_(out=tmp / "exp_copy"), "not an sb-meta export"
    if case == "out is an earlier export, no --force":
        shutil.copytree(world["model"], tmp / "earlier")
        return with_(out=tmp / "earlier"), "--force"
    if case == "evaluate --out is a file":
        (tmp / "report").write_text("x")
        return (["evaluate", "--model", m, "--data", csv, "--k", "0,1", "--repeats", "1", "--quiet",
                 "--out", str(tmp / "report")], "exists and is a file")
    if case == "transcribe a missing file":
        return ["transcribe", "--model", m, str(tmp / "gone.wav")], "gone.wav does not exist"
    # issue 29: untrusted folders, inputs as outputs, divergence, and the smaller ones
    if case in ("a model folder that runs code", "transcribe with a model folder that runs code"):
        shutil.copytree(world["model"], tmp / "evil")
        with open(tmp / "evil" / "hyperparams.yaml", "a") as f:
            f.write(f'__evil: !apply:os.system ["touch {tmp / "pwned"}"]\n')
        line = len((tmp / "evil" / "hyperparams.yaml").read_text().splitlines())
        argv = (with_(model=tmp / "evil") if case.startswith("a model") else
                ["transcribe", "--model", str(tmp / "evil"), rows[0]["wav"]])
        return argv, f"hyperparams.yaml line {line}: !apply:os.system"
    if case == "adapt --out is the model":
        shutil.copytree(world["model"], tmp / "base")
        return with_(model=tmp / "base", out=tmp / "base") + ["--force"], "is the input"
    if case == "a diverging step size":
        return with_(steps=3) + ["--lr", "5"], "adaptation diverged with step size lr 5"
    if case == "evaluate --lr nan":
        return (["evaluate", "--model", m, "--data", csv, "--k", "0,1", "--repeats", "1", "--quiet",
                 "--lr", "nan", "--out", str(tmp / "report")], "--lr must be a finite number > 0, got nan")
    if case == "--out under a file":
        (tmp / "f").write_text("x")
        return with_(out=tmp / "f" / "sub"), "is a file"
    if case == "a relative wav path found nowhere":
        bad = [dict(r, wav="wav/nowhere.wav") if r["spk_id"] == "s0" else r for r in rows]
        return with_(support=write_csv(tmp / "s.csv", bad)), "and then from the manifest's folder"
    if case == "a file the YAML names is missing":
        shutil.copytree(world["model"], tmp / "moved")
        (tmp / "moved" / "sbmeta.json").unlink()
        (tmp / "moved" / "model.ckpt").unlink()
        with open(tmp / "moved" / "hyperparams.yaml", "a") as f:
            f.write("  paths:\n    model: weights/asr.ckpt\n")
        return with_(model=tmp / "moved"), "weights/asr.ckpt (relative to the working directory), which"
    if case == "channels --out is the input folder":
        (tmp / "corp").mkdir()
        shutil.copy(csv, tmp / "corp" / "test.csv")
        return (["channels", "--manifests", str(tmp / "corp"), "--out", str(tmp / "corp"),
                 "--channels", "telephone", "--quiet"], "contains the input")
    if case == "channels --out holds a manifest it did not write":
        (tmp / "o").mkdir()
        (tmp / "o" / "data.csv").write_text("mine\n")
        return (["channels", "--manifests", csv, "--out", str(tmp / "o"), "--channels", "clean", "--quiet"],
                "did not write it")
    if case == "summary of a folder without manifests":
        (tmp / "nothing").mkdir()
        return ["summary", str(tmp / "nothing")], "holds none of the manifests"
    raise AssertionError(case)


CASES = [
    "model folder missing", "model folder empty", "model folder of garbage",
    "an experiment folder as the model", "truncated checkpoint", "support csv missing",
    "support csv without wrd", "duplicate IDs", "empty wav field", "audio file missing",
    "unreadable audio", "unknown characters", "empty transcript", "k too large", "unknown task",
    "unknown strategy", "steps 0", "out is a file", "out is an experiment folder",
    "out is an earlier export, no --force", "evaluate --out is a file", "transcribe a missing file",
    "a model folder that runs code", "transcribe with a model folder that runs code",
    "adapt --out is the model", "a diverging step size", "evaluate --lr nan", "--out under a file",
    "a relative wav path found nowhere", "a file the YAML names is missing",
    "channels --out is the input folder", "channels --out holds a manifest it did not write",
    "summary of a folder without manifests",
]


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line_and_loses_nothing(world, tmp_path, case, capsys):
    from sb_meta.cli import main

    argv, message = make(world, tmp_path, case)
    before = snapshot(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    expected = 1 if case == "transcribe a missing file" else 2
    assert code == expected, err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    after = snapshot(tmp_path)
    assert {p: b for p, b in after.items() if p in before} == before  # nothing lost or changed
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "pwned").exists()  # nothing a model folder names ran
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_verbose_shows_the_traceback(world, tmp_path):
    from sb_meta.cli import main

    argv, _ = make(world, tmp_path, "steps 0")
    with pytest.raises(ValueError, match="--steps must be >= 1"):
        main(["--verbose"] + argv)


def test_a_good_command_still_works_after_the_bad_ones(world, tmp_path, capsys):
    from sb_meta.cli import main

    argv, _ = make(world, tmp_path, "steps 0")
    argv[argv.index("--steps") + 1] = "1"
    assert main(argv) == 0
    info = json.loads((tmp_path / "out" / "sbmeta.json").read_text())
    assert info["adaptations"][-1]["steps"] == 1


# -- issue 29: the smaller faults that left the user guessing --------------------------------

BOOM_PLUGIN = '''
from sb_meta.plugins import hookimpl
from sb_meta.strategy import AddOn


class Boom(AddOn):
    """Raises inside its loss hook."""
    name = "boom"
    options = {"boom_kind": "bug"}

    @hookimpl
    def sbmeta_loss(self, predictions, phase):
        if self.option("boom_kind") == "bug":
            return 1 / 0
        raise ValueError("boom_kind must be 'bug'")


@hookimpl
def sbmeta_addons():
    return [Boom]
'''


@pytest.mark.parametrize("kind", ["bug", "config"])
def test_a_hook_that_raises_is_named_in_one_line(tmp_path, kind):
    from sb_meta.plugins import PluginHookError
    from sb_meta.testing import make_toy_brain, toy_dataset

    plugin = tmp_path / "boom.py"
    plugin.write_text(BOOM_PLUGIN)
    brain = make_toy_brain({"meta_strategy": "fomaml", "plugins": [str(plugin)], "meta_addons": ["boom"],
                            "boom_kind": kind, "k_support": 2, "k_query": 2, "meta_batch_tasks": 2})
    loader = brain.make_episode_loader(toy_dataset(n_tasks=4, utts_per_task=4))
    error = PluginHookError if kind == "bug" else ValueError  # a configuration error keeps its type
    detail = "ZeroDivisionError: division by zero" if kind == "bug" else "boom_kind must be 'bug'"
    with pytest.raises(error) as err:
        brain.fit(range(1, 2), loader, progressbar=False)
    assert str(err.value) == f"plugin 'boom', hook sbmeta_loss, phase inner: {detail}"


def test_silent_support_audio_is_warned_about(world, tmp_path, caplog):
    import numpy as np
    import soundfile

    from sb_meta.cli import main

    rows = [dict(r) for r in world["rows"] if r["spk_id"] == "s0"]
    for r in rows:
        r["wav"] = str(tmp_path / f"{r['ID']}.wav")
        soundfile.write(r["wav"], np.zeros(16000, dtype=np.float32), 16000)
    support = write_csv(tmp_path / "s.csv", rows)
    with caplog.at_level("WARNING", logger="sb_meta.adapt.support"):
        assert main(["adapt", "--model", str(world["model"]), "--support", str(support), "--k", "2",
                     "--steps", "1", "--lr", "0.01", "--out", str(tmp_path / "out")]) == 0
    silent = [m for m in caplog.messages if "is silent" in m]
    assert len(silent) == 2 and all("support utterance s0_" in m for m in silent)


def test_relative_wav_paths_are_also_read_from_the_manifest_folder(world, tmp_path, monkeypatch):
    from sb_meta.cli import main

    corpus = pathlib.Path(world["csv"]).parent
    rows = [dict(r, wav=str(pathlib.Path(r["wav"]).relative_to(corpus))) for r in world["rows"]]
    support = write_csv(corpus / "relative.csv", rows)
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    try:
        assert main(["adapt", "--model", str(world["model"]), "--support", str(support), "--task", "s0",
                     "--k", "2", "--steps", "1", "--lr", "0.01", "--out", str(tmp_path / "out")]) == 0
    finally:
        support.unlink()


def test_exports_are_as_readable_as_the_umask_allows(world, tmp_path):
    import os

    from sb_meta.cli import main

    old = os.umask(0o022)
    try:
        assert main(["adapt", "--model", str(world["model"]), "--support", str(world["csv"]), "--task", "s0",
                     "--k", "2", "--steps", "1", "--lr", "0.01", "--out", str(tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in (tmp_path / "out").iterdir())


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes anywhere: an unwritable folder cannot be made")
def test_an_unwritable_out_is_refused_before_any_work(world, tmp_path, capsys):
    from sb_meta.cli import main

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["adapt", "--model", str(world["model"]), "--support", str(world["csv"]), "--task", "s0",
                     "--k", "2", "--steps", "1", "--out", str(locked / "out")])
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2 and "is not writable" in err and len(err.strip().splitlines()) == 1
