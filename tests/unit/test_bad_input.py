"""Bad input in AN4 and LibriSpeech corpora: clear errors naming the culprits, or skip with a warning.

Each test builds a tiny corpus in the original layout in ``tmp_path``, breaks
it, and checks that preparation either raises a ``DataPreparationError``
naming the files / utterance ids (and writes nothing, leaving earlier
manifests untouched), or with ``skip_bad=True`` warns once, reports the
skipped items in the result and writes manifests without the bad rows.
"""

import logging
import pathlib

import pytest

from sb_meta.data import validate as v
from sb_meta.utils import load_script
from sb_meta.data.manifest import read_manifest

from helpers.corpora import make_an4, make_libri, write_audio

REPO = pathlib.Path(__file__).resolve().parents[2]


an4 = load_script(REPO / "recipes/AN4/an4_prepare.py", "an4_prepare_bad_input")
libri = load_script(REPO / "recipes/LibriSpeech/librispeech_prepare.py", "librispeech_prepare_bad_input")


def replace_line(path, number, new):
    lines = path.read_text().splitlines()
    lines[number - 1] = new
    path.write_text("\n".join(lines) + "\n")


def fails_cleanly(prepare, out):
    """Run ``prepare`` over earlier manifests in ``out``; it must raise and leave them untouched."""
    out.mkdir(parents=True, exist_ok=True)
    before = {}
    for name in ("train.csv", "dev.csv", "test.csv", "test-other.csv", "dev-clean.csv", "opts.json"):
        (out / name).write_text(f"earlier {name}\n")
        before[name] = (out / name).read_bytes()
    with pytest.raises(v.DataPreparationError) as err:
        prepare()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written, no temp left
    return err.value


# ----------------------------------------------------------------------- AN4


def _an4_missing(root):
    (root / "wav/an4_clstk/mdef/an3-mdef-b.sph").unlink()


def _an4_corrupt(root):
    (root / "wav/an4_clstk/fghi/an5-fghi-b.sph").write_bytes(b"this is not a sphere file" * 10)


def _an4_zero_frames(root):
    write_audio(root / "wav/an4test_clstk/mtst/an10-mtst-b.sph", frames=0, fmt="NIST")


def _an4_truncated(root):
    path = root / "wav/an4_clstk/mjkl/an7-mjkl-b.sph"
    path.write_bytes(path.read_bytes()[:1024 + 10])


def _an4_empty_train(root):
    replace_line(root / "etc/an4_train.transcription", 2, "<s> </s> (an2-fabc-b)")


def _an4_empty_test(root):
    replace_line(root / "etc/an4_test.transcription", 1, "(an9-mtst-b)")


def _an4_extra_audio(root):
    write_audio(root / "wav/an4_clstk/fabc/an99-fabc-b.sph", fmt="NIST")


def _an4_malformed(root):
    replace_line(root / "etc/an4_train.transcription", 4, "<s> WORD4 </s>")


def _an4_bad_id(root):
    replace_line(root / "etc/an4_test.transcription", 2, "WORD10 (an10mtst)")


def _an4_duplicate(root):
    path = root / "etc/an4_train.transcription"
    path.write_text(path.read_text() + "<s> OTHER </s> (an1-fabc-b)\n")


AN4_CASES = [
    ("missing audio", _an4_missing, v.TRANSCRIPT_WITHOUT_AUDIO,
     ["an3-mdef-b", "an4_train.transcription:3", "wav/an4_clstk/mdef/an3-mdef-b.sph"]),
    ("corrupt audio", _an4_corrupt, v.UNREADABLE_AUDIO, ["wav/an4_clstk/fghi/an5-fghi-b.sph", "cannot be read"]),
    ("zero frames", _an4_zero_frames, v.UNREADABLE_AUDIO, ["an4test_clstk/mtst/an10-mtst-b.sph", "0 frames"]),
    ("truncated", _an4_truncated, v.UNREADABLE_AUDIO, ["an7-mjkl-b.sph", "truncated"]),
    ("empty transcript (train)", _an4_empty_train, v.EMPTY_TRANSCRIPT, ["an2-fabc-b", "an4_train.transcription:2"]),
    ("empty transcript (test)", _an4_empty_test, v.EMPTY_TRANSCRIPT, ["an9-mtst-b", "an4_test.transcription:1"]),
    ("audio without transcript", _an4_extra_audio, v.AUDIO_WITHOUT_TRANSCRIPT, ["wav/an4_clstk/fabc/an99-fabc-b.sph"]),
    ("malformed line", _an4_malformed, v.MALFORMED_LINE, ["an4_train.transcription:4", "(utterance-id)"]),
    ("malformed id", _an4_bad_id, v.MALFORMED_LINE, ["an4_test.transcription:2", "an10mtst"]),
    ("duplicate id", _an4_duplicate, v.DUPLICATE_ID, ["an1-fabc-b", "an4_train.transcription:9", "first at line 1"]),
]


@pytest.mark.parametrize("name,breaker,kind,culprits", AN4_CASES, ids=[c[0] for c in AN4_CASES])
def test_an4_bad_input_is_named(tmp_path, name, breaker, kind, culprits):
    root = make_an4(tmp_path / "an4")
    breaker(root)
    err = fails_cleanly(lambda: an4.prepare_an4(root, tmp_path / "out", dev_speakers=1), tmp_path / "out")
    assert kind in err.problems
    message = str(err)
    assert f"{kind} (" in message and "skip_bad" in message
    for culprit in culprits:
        assert culprit in message, f"{culprit!r} not named in:\n{message}"


def test_an4_malformed_line_also_orphans_its_audio(tmp_path):
    root = make_an4(tmp_path / "an4")
    _an4_malformed(root)
    with pytest.raises(v.DataPreparationError) as err:
        an4.prepare_an4(root, tmp_path / "out")
    assert err.value.counts == {v.MALFORMED_LINE: 1, v.AUDIO_WITHOUT_TRANSCRIPT: 1}
    assert "an4_clstk/mdef/an4-mdef-b.sph" in err.value.problems[v.AUDIO_WITHOUT_TRANSCRIPT][0]


def test_an4_lists_all_problems_grouped_with_counts(tmp_path):
    root = make_an4(tmp_path / "an4")
    for breaker in (_an4_missing, _an4_corrupt, _an4_empty_train, _an4_extra_audio, _an4_zero_frames):
        breaker(root)
    with pytest.raises(v.DataPreparationError) as err:
        an4.prepare_an4(root, tmp_path / "out")
    assert err.value.counts == {
        v.EMPTY_TRANSCRIPT: 1,
        v.TRANSCRIPT_WITHOUT_AUDIO: 1,
        v.UNREADABLE_AUDIO: 2,
        v.AUDIO_WITHOUT_TRANSCRIPT: 1,
    }
    message = str(err.value)
    assert message.startswith(f"AN4 preparation of {root.resolve()}: 5 problems found, nothing was written")
    assert "unreadable audio (2):" in message and "transcript without audio (1):" in message
    assert message.index("empty transcript") < message.index("transcript without audio") < message.index(
        "unreadable audio") < message.index("audio without transcript")
    assert not (tmp_path / "out").exists()


def test_an4_long_lists_are_truncated_but_counted(tmp_path):
    root = make_an4(tmp_path / "an4")
    path = root / "etc/an4_train.transcription"
    path.write_text(path.read_text() + "".join(f"<s> X </s> (an{100 + i}-zzzz-b)\n" for i in range(25)))
    with pytest.raises(v.DataPreparationError) as err:
        an4.prepare_an4(root, tmp_path / "out")
    message = str(err.value)
    assert "transcript without audio (25):" in message and "... and 5 more" in message
    assert "an119-zzzz-b" in message and "an120-zzzz-b" not in message
    assert len(err.value.problems[v.TRANSCRIPT_WITHOUT_AUDIO]) == 25  # all kept on the exception


def test_an4_skip_bad_warns_once_and_leaves_bad_rows_out(tmp_path, caplog):
    root = make_an4(tmp_path / "an4")
    for breaker in (_an4_missing, _an4_corrupt, _an4_empty_test, _an4_extra_audio, _an4_malformed):
        breaker(root)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        result = an4.prepare_an4(root, out, dev_speakers=1, skip_bad=True)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "skipped 6 problems" in text
    for culprit in ("an3-mdef-b", "an5-fghi-b.sph", "an9-mtst-b", "an99-fabc-b.sph", "an4_train.transcription:4",
                    "an4-mdef-b.sph"):
        assert culprit in text
    assert {k: len(items) for k, items in result["skipped"].items()} == {
        v.MALFORMED_LINE: 1,
        v.EMPTY_TRANSCRIPT: 1,
        v.TRANSCRIPT_WITHOUT_AUDIO: 1,
        v.UNREADABLE_AUDIO: 1,
        v.AUDIO_WITHOUT_TRANSCRIPT: 2,
    }
    ids = {r["ID"] for s in ("train", "dev", "test") for r in read_manifest(out / f"{s}.csv")}
    assert ids == {"an1-fabc-b", "an2-fabc-b", "an6-fghi-b", "an7-mjkl-b", "an8-mjkl-b", "an10-mtst-b"}
    assert result["utterances"]["train"] + result["utterances"]["dev"] == 5
    # Re-used later, the record of what was skipped comes back too.
    again = an4.prepare_an4(root, out, dev_speakers=1, skip_bad=True)
    assert again["reused"] and again["skipped"] == result["skipped"]


def test_an4_skip_bad_does_not_accept_an_empty_split(tmp_path):
    root = make_an4(tmp_path / "an4")
    _an4_empty_test(root)
    (root / "wav/an4test_clstk/mtst/an10-mtst-b.sph").unlink()
    err = fails_cleanly(lambda: an4.prepare_an4(root, tmp_path / "out", skip_bad=True), tmp_path / "out")
    assert v.EMPTY_SPLIT in err.problems and "an4_test.transcription" in str(err)


def test_an4_cli_reports_bad_input(tmp_path, capsys):
    root = make_an4(tmp_path / "an4")
    _an4_missing(root)
    argv = ["--data_folder", str(root), "--save_folder", str(tmp_path / "out"), "--dev_speakers", "1"]
    assert an4.main(argv) == 1
    assert "an3-mdef-b" in capsys.readouterr().err
    assert an4.main(argv + ["--skip_bad"]) == 0
    assert f"skipped 1 x {v.TRANSCRIPT_WITHOUT_AUDIO}" in capsys.readouterr().out


# ---------------------------------------------------------------- LibriSpeech

TO = "test-other"


def _ls_missing(root):
    (root / TO / "11/100/11-100-0001.flac").unlink()


def _ls_corrupt(root):
    (root / TO / "22/200/22-200-0000.flac").write_bytes(b"fLaC but not really")


def _ls_empty(root):
    replace_line(root / TO / "11/100/11-100.trans.txt", 3, "11-100-0002 ")


def _ls_extra_audio(root):
    write_audio(root / TO / "22/200/22-200-0009.flac")


def _ls_no_trans_file(root):
    (root / TO / "22/200/22-200.trans.txt").unlink()


def _ls_malformed(root):
    replace_line(root / TO / "11/100/11-100.trans.txt", 2, "HELLO WORLD")


def _ls_wrong_chapter(root):
    replace_line(root / TO / "11/100/11-100.trans.txt", 2, "11-999-0001 SOME WORDS")


def _ls_not_utf8(root):
    path = root / TO / "22/200/22-200.trans.txt"
    path.write_bytes(path.read_bytes().replace(b"22-200-0002 SOME", b"22-200-0002 \xff\xfeSOME"))


LIBRI_CASES = [
    ("missing audio", _ls_missing, v.TRANSCRIPT_WITHOUT_AUDIO,
     ["11-100-0001", "11-100.trans.txt:2", "test-other/11/100/11-100-0001.flac"]),
    ("corrupt audio", _ls_corrupt, v.UNREADABLE_AUDIO, ["test-other/22/200/22-200-0000.flac", "cannot be read"]),
    ("empty transcript", _ls_empty, v.EMPTY_TRANSCRIPT, ["11-100-0002", "11-100.trans.txt:3"]),
    ("audio without transcript", _ls_extra_audio, v.AUDIO_WITHOUT_TRANSCRIPT, ["test-other/22/200/22-200-0009.flac"]),
    ("chapter without transcript file", _ls_no_trans_file, v.AUDIO_WITHOUT_TRANSCRIPT,
     ["22-200-0000.flac", "22-200-0001.flac", "22-200-0002.flac", "audio without transcript (3)"]),
    ("malformed line", _ls_malformed, v.MALFORMED_LINE, ["11-100.trans.txt:2", "HELLO WORLD"]),
    ("id of another chapter", _ls_wrong_chapter, v.MALFORMED_LINE, ["11-100.trans.txt:2", "11-999-0001"]),
    ("not UTF-8", _ls_not_utf8, v.MALFORMED_LINE, ["22-200.trans.txt:3", "not UTF-8"]),
]


@pytest.mark.parametrize("name,breaker,kind,culprits", LIBRI_CASES, ids=[c[0] for c in LIBRI_CASES])
def test_librispeech_bad_input_is_named(tmp_path, name, breaker, kind, culprits):
    root = make_libri(tmp_path / "LibriSpeech")
    breaker(root)
    err = fails_cleanly(lambda: libri.prepare_librispeech(root, tmp_path / "out"), tmp_path / "out")
    assert kind in err.problems
    message = str(err)
    for culprit in culprits:
        assert culprit in message, f"{culprit!r} not named in:\n{message}"


def test_librispeech_validates_all_splits_before_writing_any(tmp_path):
    root = make_libri(tmp_path / "LibriSpeech")
    (root / "dev-clean/33/300/33-300-0002.flac").unlink()  # only the second split is bad
    with pytest.raises(v.DataPreparationError, match="33-300-0002"):
        libri.prepare_librispeech(root, tmp_path / "out", splits=(TO, "dev-clean"))
    assert not (tmp_path / "out").exists()
    err = fails_cleanly(
        lambda: libri.prepare_librispeech(root, tmp_path / "out2", splits=(TO, "dev-clean")), tmp_path / "out2"
    )
    assert err.counts == {v.TRANSCRIPT_WITHOUT_AUDIO: 1}


def test_librispeech_skip_bad_warns_once_and_leaves_bad_rows_out(tmp_path, caplog):
    root = make_libri(tmp_path / "LibriSpeech")
    for breaker in (_ls_missing, _ls_corrupt, _ls_empty, _ls_extra_audio):
        breaker(root)
    (root / "dev-clean/33/300/33-300-0000.flac").write_bytes(b"")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        result = libri.prepare_librispeech(root, out, splits=(TO, "dev-clean"), skip_bad=True)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "skipped 5 problems" in text and "2 unreadable audio" in text
    for culprit in ("11-100-0001", "22-200-0000.flac", "11-100-0002", "22-200-0009.flac", "33-300-0000.flac"):
        assert culprit in text
    assert sum(len(items) for items in result["skipped"].values()) == 5
    assert [r["ID"] for r in read_manifest(out / f"{TO}.csv")] == ["11-100-0000", "22-200-0001", "22-200-0002"]
    assert [r["ID"] for r in read_manifest(out / "dev-clean.csv")] == ["33-300-0001", "33-300-0002"]
    assert result["utterances"] == {TO: 3, "dev-clean": 2}


def test_librispeech_duplicate_ids_keep_neither_copy(tmp_path):
    root = make_libri(tmp_path / "LibriSpeech")
    path = root / TO / "11/100/11-100.trans.txt"
    path.write_text(path.read_text() + "11-100-0000 ANOTHER TEXT\n")
    with pytest.raises(v.DataPreparationError, match=r"11-100-0000 \(.*11-100.trans.txt:4; first at .*:1\)"):
        libri.prepare_librispeech(root, tmp_path / "out")
    result = libri.prepare_librispeech(root, tmp_path / "out", skip_bad=True)
    assert result["skipped"].keys() == {v.DUPLICATE_ID}
    assert "11-100-0000" not in {r["ID"] for r in read_manifest(tmp_path / "out" / f"{TO}.csv")}


def test_librispeech_cli_reports_bad_input(tmp_path, capsys):
    root = make_libri(tmp_path / "LibriSpeech")
    _ls_corrupt(root)
    argv = ["--data_folder", str(root), "--save_folder", str(tmp_path / "out")]
    assert libri.main(argv) == 1
    assert "22-200-0000.flac" in capsys.readouterr().err
    assert libri.main(argv + ["--skip_bad"]) == 0
    assert f"skipped 1 x {v.UNREADABLE_AUDIO}" in capsys.readouterr().out


# ------------------------------------------------------------ validate helpers


def test_check_audio_reasons(tmp_path):
    write_audio(tmp_path / "ok.sph", frames=3200, fmt="NIST")
    assert v.check_audio(tmp_path / "ok.sph") == (0.2, None)
    write_audio(tmp_path / "empty.sph", frames=0, fmt="NIST")
    assert "0 frames" in v.check_audio(tmp_path / "empty.sph")[1]
    (tmp_path / "zero.flac").write_bytes(b"")
    duration, reason = v.check_audio(tmp_path / "zero.flac")
    assert duration is None and reason.startswith("cannot be read")
    assert v.check_audio(tmp_path / "absent.flac")[0] is None


def test_error_is_a_value_error_with_singular_message():
    report = v.ProblemReport()
    report.add(v.EMPTY_TRANSCRIPT, "u1 (t.txt:1)")
    err = v.DataPreparationError(report, "toy")
    assert isinstance(err, ValueError)
    assert str(err).startswith("toy: 1 problem found, nothing was written\nempty transcript (1):\n  u1 (t.txt:1)")
