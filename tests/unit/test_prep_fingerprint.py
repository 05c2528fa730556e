"""Preparation checks the corpus, not only the options, before saying "up to date".

A preparation records a cheap fingerprint of every input file it read (path,
size and modification time; no audio is read) next to its options in
``opts.json``. Run again with the same options, it re-uses the manifests only
when the corpus is unchanged; otherwise it says what changed and prepares
again (or, without ``skip_bad``, stops on the problems the change made).
"""

import json
import logging
import os
import pathlib

import pytest

from sb_meta.data import validate as v
from sb_meta.data.manifest import read_manifest
from sb_meta.utils import load_script

from helpers.corpora import make_an4, make_libri, write_audio

REPO = pathlib.Path(__file__).resolve().parents[2]

an4 = load_script(REPO / "recipes/AN4/an4_prepare.py", "an4_prepare_fingerprint")
libri = load_script(REPO / "recipes/LibriSpeech/librispeech_prepare.py", "librispeech_prepare_fingerprint")


def ids(folder, *splits):
    return {r["ID"] for s in splits for r in read_manifest(folder / f"{s}.csv")}


def bump_mtime(path):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# ----------------------------------------------------------------------- AN4

AN4_SPLITS = ("train", "dev", "test")
AN4_ALL = {f"an{n}-{s}-b" for n, s in enumerate(
    ["fabc", "fabc", "mdef", "mdef", "fghi", "fghi", "mjkl", "mjkl", "mtst", "mtst"], start=1)}


def _an4_delete_audio(root):
    (root / "wav/an4_clstk/mdef/an3-mdef-b.sph").unlink()


def _an4_edit_transcript(root):
    path = root / "etc/an4_train.transcription"
    path.write_text(path.read_text().replace("<s> WORD2 </s>", "<s> CHANGED WORDS </s>"))
    bump_mtime(path)  # the same size would otherwise be possible within one mtime tick


def _an4_add_audio(root):
    write_audio(root / "wav/an4test_clstk/mtst/an99-mtst-b.sph", fmt="NIST")


def _an4_rewrite_audio(root):
    path = root / "wav/an4test_clstk/mtst/an10-mtst-b.sph"
    write_audio(path, frames=4800, fmt="NIST")


def _an4_touch_audio(root):
    bump_mtime(root / "wav/an4_clstk/fghi/an5-fghi-b.sph")


# (name, change, what the log names, IDs expected after a skip_bad re-preparation, extra check)
AN4_CHANGES = [
    ("deleted audio", _an4_delete_audio, ["0 files added, 1 removed, 0 modified", "wav/an4_clstk/mdef/an3-mdef-b.sph"],
     AN4_ALL - {"an3-mdef-b"}),
    ("edited transcript", _an4_edit_transcript, ["0 files added, 0 removed, 1 modified", "etc/an4_train.transcription"],
     AN4_ALL),
    ("added audio", _an4_add_audio, ["1 file added, 0 removed, 0 modified", "wav/an4test_clstk/mtst/an99-mtst-b.sph"],
     AN4_ALL),
    ("rewritten audio", _an4_rewrite_audio, ["0 files added, 0 removed, 1 modified", "an10-mtst-b.sph"], AN4_ALL),
    ("touched audio", _an4_touch_audio, ["1 modified", "wav/an4_clstk/fghi/an5-fghi-b.sph"], AN4_ALL),
]


@pytest.mark.parametrize("name,change,logged,expected_ids", AN4_CHANGES, ids=[c[0] for c in AN4_CHANGES])
def test_an4_reprepares_when_the_corpus_changed(tmp_path, caplog, name, change, logged, expected_ids):
    root = make_an4(tmp_path / "an4")
    out = tmp_path / "out"
    first = an4.prepare_an4(root, out, dev_speakers=1, skip_bad=True)
    assert not first["reused"] and ids(out, *AN4_SPLITS) == AN4_ALL
    assert an4.prepare_an4(root, out, dev_speakers=1, skip_bad=True)["reused"]

    change(root)
    with caplog.at_level(logging.INFO):
        again = an4.prepare_an4(root, out, dev_speakers=1, skip_bad=True)
    assert not again["reused"], "a changed corpus was taken as up to date"
    assert ids(out, *AN4_SPLITS) == expected_ids
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "corpus changed since the manifests were written" in text
    for item in logged:
        assert item in text, f"{item!r} not in:\n{text}"
    # Once prepared again, the new corpus is up to date.
    assert an4.prepare_an4(root, out, dev_speakers=1, skip_bad=True)["reused"]


def test_an4_deleted_audio_is_not_up_to_date(tmp_path, capsys):
    """The reported bug: delete one .sph, prepare again with the same options."""
    root = make_an4(tmp_path / "an4")
    out = tmp_path / "out"
    argv = ["--data_folder", str(root), "--save_folder", str(out), "--dev_speakers", "1"]
    assert an4.main(argv) == 0
    assert "an3-mdef-b" in ids(out, "train", "dev")
    capsys.readouterr()
    _an4_delete_audio(root)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert an4.main(argv) == 1  # the problem is named, not "manifests were up to date"
    captured = capsys.readouterr()
    assert "up to date" not in captured.out
    assert "an3-mdef-b" in captured.err and "transcript without audio" in captured.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half-written
    assert an4.main(argv + ["--skip_bad"]) == 0
    assert "an3-mdef-b" not in ids(out, "train", "dev")


def test_an4_edited_transcript_reaches_the_manifest(tmp_path):
    root = make_an4(tmp_path / "an4")
    out = tmp_path / "out"
    an4.prepare_an4(root, out, dev_speakers=0)
    _an4_edit_transcript(root)
    assert not an4.prepare_an4(root, out, dev_speakers=0)["reused"]
    words = {r["ID"]: r["wrd"] for r in read_manifest(out / "train.csv")}
    assert words["an2-fabc-b"] == "CHANGED WORDS"


def test_an4_up_to_date_check_reads_no_audio(tmp_path, monkeypatch):
    root = make_an4(tmp_path / "an4")
    out = tmp_path / "out"
    an4.prepare_an4(root, out, dev_speakers=1)

    def no_audio(path):
        raise AssertionError(f"audio {path} read by the up-to-date check")

    monkeypatch.setattr(an4, "check_audio", no_audio)
    assert an4.prepare_an4(root, out, dev_speakers=1)["reused"]


def test_an4_opts_json_records_the_fingerprint(tmp_path):
    root = make_an4(tmp_path / "an4")
    out = tmp_path / "out"
    an4.prepare_an4(root, out, dev_speakers=1)
    corpus = json.loads((out / "opts.json").read_text())["corpus"]
    assert corpus["files"] == 12 and len(corpus["digest"]) == 64
    sph = root / "wav/an4_clstk/fabc/an1-fabc-b.sph"
    st = sph.stat()
    assert corpus["listing"]["wav/an4_clstk/fabc/an1-fabc-b.sph"] == f"{st.st_size} {st.st_mtime_ns}"
    assert "etc/an4_test.transcription" in corpus["listing"]


def test_an4_record_without_fingerprint_is_prepared_again(tmp_path, caplog):
    """Manifests written before fingerprints existed are not trusted."""
    root = make_an4(tmp_path / "an4")
    out = tmp_path / "out"
    an4.prepare_an4(root, out, dev_speakers=1)
    record = json.loads((out / "opts.json").read_text())
    del record["corpus"]
    (out / "opts.json").write_text(json.dumps(record))
    with caplog.at_level(logging.INFO):
        assert not an4.prepare_an4(root, out, dev_speakers=1)["reused"]
    assert "no corpus fingerprint" in caplog.text
    assert an4.prepare_an4(root, out, dev_speakers=1)["reused"]


def test_an4_failed_repreparation_keeps_saying_the_corpus_changed(tmp_path):
    root = make_an4(tmp_path / "an4")
    out = tmp_path / "out"
    an4.prepare_an4(root, out, dev_speakers=1)
    _an4_delete_audio(root)
    for _ in range(2):  # the old record stays, and so does the mismatch
        with pytest.raises(v.DataPreparationError, match="an3-mdef-b"):
            an4.prepare_an4(root, out, dev_speakers=1)


# ---------------------------------------------------------------- LibriSpeech

TO = "test-other"


def _ls_delete_audio(root):
    (root / TO / "11/100/11-100-0001.flac").unlink()


def _ls_edit_transcript(root):
    path = root / TO / "22/200/22-200.trans.txt"
    path.write_text(path.read_text().replace("22-200-0002 SOME WORDS 2", "22-200-0002 OTHER WORDS 2"))
    bump_mtime(path)


def _ls_add_speakers_txt(root):
    (root / "SPEAKERS.TXT").write_text("11 | F | test-other | 1.0 | A\n22 | M | test-other | 1.0 | B\n")


def _ls_add_chapter(root):
    folder = root / TO / "11/101"
    write_audio(folder / "11-101-0000.flac")
    (folder / "11-101.trans.txt").write_text("11-101-0000 NEW CHAPTER\n")


LS_ALL = {f"{s}-{c}-{i:04d}" for s, c in (("11", "100"), ("22", "200")) for i in range(3)}

LIBRI_CHANGES = [
    ("deleted audio", _ls_delete_audio, ["1 removed", "test-other/11/100/11-100-0001.flac"], LS_ALL - {"11-100-0001"}),
    ("edited transcript", _ls_edit_transcript, ["1 modified", "test-other/22/200/22-200.trans.txt"], LS_ALL),
    ("SPEAKERS.TXT added", _ls_add_speakers_txt, ["1 file added", "SPEAKERS.TXT"], LS_ALL),
    ("chapter added", _ls_add_chapter, ["2 files added", "test-other/11/101/11-101-0000.flac"],
     LS_ALL | {"11-101-0000"}),
]


@pytest.mark.parametrize("name,change,logged,expected_ids", LIBRI_CHANGES, ids=[c[0] for c in LIBRI_CHANGES])
def test_librispeech_reprepares_when_the_corpus_changed(tmp_path, caplog, name, change, logged, expected_ids):
    root = make_libri(tmp_path / "LibriSpeech", dev_clean=False)
    out = tmp_path / "out"
    assert not libri.prepare_librispeech(root, out, skip_bad=True)["reused"]
    assert libri.prepare_librispeech(root, out, skip_bad=True)["reused"]
    change(root)
    with caplog.at_level(logging.INFO):
        again = libri.prepare_librispeech(root, out, skip_bad=True)
    assert not again["reused"], "a changed corpus was taken as up to date"
    assert ids(out, TO) == expected_ids
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "corpus changed since the manifests were written" in text
    for item in logged:
        assert item in text, f"{item!r} not in:\n{text}"
    assert libri.prepare_librispeech(root, out, skip_bad=True)["reused"]


def test_librispeech_changes_follow_into_the_manifest(tmp_path):
    root = make_libri(tmp_path / "LibriSpeech", dev_clean=False)
    out = tmp_path / "out"
    libri.prepare_librispeech(root, out)
    _ls_edit_transcript(root)
    _ls_add_speakers_txt(root)
    assert not libri.prepare_librispeech(root, out)["reused"]
    rows = {r["ID"]: r for r in read_manifest(out / f"{TO}.csv")}
    assert rows["22-200-0002"]["wrd"] == "OTHER WORDS 2" and rows["22-200-0002"]["gender"] == "M"


def test_librispeech_other_splits_do_not_count(tmp_path):
    """Only the prepared splits are fingerprinted: a change elsewhere keeps the manifests."""
    root = make_libri(tmp_path / "LibriSpeech", dev_clean=False)
    write_audio(root / "dev-clean/33/300/33-300-0000.flac")
    out = tmp_path / "out"
    libri.prepare_librispeech(root, out)
    (root / "dev-clean/33/300/33-300-0000.flac").unlink()
    assert libri.prepare_librispeech(root, out)["reused"]


# ------------------------------------------------------------ validate helpers


def test_fingerprint_and_changes(tmp_path):
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    old = v.corpus_fingerprint(tmp_path, files)
    assert old == v.corpus_fingerprint(tmp_path, list(reversed(files)))  # order does not matter
    assert list(old["listing"]) == ["a.txt", "b.txt", "sub/c.txt"] and old["files"] == 3
    (tmp_path / "a.txt").unlink()
    (tmp_path / "b.txt").write_text("longer text")
    (tmp_path / "d.txt").write_text("new")
    new = v.corpus_fingerprint(tmp_path, sorted(p for p in tmp_path.rglob("*") if p.is_file()))
    assert new["digest"] != old["digest"]
    assert v.corpus_changes(old, new) == {"added": ["d.txt"], "removed": ["a.txt"], "modified": ["b.txt"]}
    assert v.describe_corpus_changes(old, new) == (
        "corpus changed since the manifests were written: 1 file added, 1 removed, 1 modified "
        "(added d.txt; removed a.txt; modified b.txt)"
    )


def test_many_changes_are_counted_and_a_few_named(tmp_path):
    old = {"listing": {f"f{i:03d}": "1 1" for i in range(40)}}
    new = {"listing": {}}
    text = v.describe_corpus_changes(old, new)
    assert "0 files added, 40 removed, 0 modified" in text
    assert "f000" in text and f"f{v.MAX_NAMED_CHANGES - 1:03d}" in text
    assert f"f{v.MAX_NAMED_CHANGES:03d}" not in text and f"{40 - v.MAX_NAMED_CHANGES} more" in text


STALENESS_CASES = [
    # (recorded options, recorded corpus, options asked, corpus asked, reason or None)
    ({"a": 1}, {"digest": "x", "listing": {}}, {"a": 1}, {"digest": "x", "listing": {}}, None),
    ({"a": 1}, None, {"a": 1}, None, None),
    ({"a": 1}, {"digest": "x", "listing": {}}, {"a": 1}, None, None),
    ({"a": 1}, None, {"a": 1}, {"digest": "x", "listing": {}}, "no corpus fingerprint"),
    ({"a": 1}, {"digest": "x", "listing": {}}, {"a": 2}, {"digest": "x", "listing": {}}, "options changed: a"),
    ({"a": 1}, {"digest": "x", "listing": {}}, {"a": 1}, {"digest": "y", "listing": {"f": "1 2"}},
     "corpus changed since the manifests were written: 1 file added"),
]


@pytest.mark.parametrize("old_opts,old_corpus,opts,corpus,reason", STALENESS_CASES)
def test_prep_staleness(tmp_path, old_opts, old_corpus, opts, corpus, reason):
    (tmp_path / "a.csv").write_text("ID,duration,wav\n")
    v.record_prep_options(tmp_path, old_opts, skipped={}, corpus=old_corpus)
    stale = v.prep_staleness(tmp_path, opts, ["a.csv"], corpus=corpus)
    if reason is None:
        assert stale is None and v.prep_is_current(tmp_path, opts, ["a.csv"], corpus=corpus)
    else:
        assert reason in stale and not v.prep_is_current(tmp_path, opts, ["a.csv"], corpus=corpus)


def test_prep_staleness_without_earlier_preparation(tmp_path):
    assert "no earlier preparation" in v.prep_staleness(tmp_path / "none", {}, ["a.csv"])
    (tmp_path / "a.csv").write_text("ID,duration,wav\n")
    assert "b.csv" in v.prep_staleness(tmp_path, {}, ["a.csv", "b.csv"])
    assert "opts.json" in v.prep_staleness(tmp_path, {}, ["a.csv"])
