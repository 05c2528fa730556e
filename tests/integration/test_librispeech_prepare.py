"""LibriSpeech preparation: on the real mini copy ($SBMETA_LIBRISPEECH_ROOT) and tiny built ones.

Bad-input handling is in ``test_bad_input.py``.
"""

import pathlib

import numpy as np
import pytest
import soundfile

from sb_meta.utils import load_script
from sb_meta.data.manifest import read_manifest

REPO = pathlib.Path(__file__).resolve().parents[2]


libri = load_script(REPO / "recipes/LibriSpeech/librispeech_prepare.py", "librispeech_prepare_under_test")

SPEAKERS_TXT = """\
; comment lines start with a semicolon
;ID  |SEX| SUBSET           |MINUTES| NAME
11   | F | test-other       | 1.00  | Alice
22   | M | test-other       | 1.00  | |CBW|Bob
33   | M | dev-clean        | 1.00  | Carl
"""


def write_flac(path, seconds=0.1, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (np.random.default_rng(0).standard_normal(int(seconds * sr)) * 1000).astype("int16")
    soundfile.write(path, samples, sr, format="FLAC")


def make_librispeech(root, layout=None, speakers_txt=True):
    """Build a tiny LibriSpeech: ``layout`` is ``{split: {speaker: chapter}}``, 3 utterances each."""
    layout = layout or {"test-other": {"11": "100", "22": "200"}, "dev-clean": {"33": "300"}}
    for split, speakers in layout.items():
        for spk, chapter in speakers.items():
            folder = root / split / spk / chapter
            lines = []
            for i in range(3):
                utt = f"{spk}-{chapter}-{i:04d}"
                write_flac(folder / f"{utt}.flac", seconds=0.1 * (i + 1))
                lines.append(f"{utt} WORDS OF {spk} NUMBER {i}")
            (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    if speakers_txt:
        (root / "SPEAKERS.TXT").write_text(SPEAKERS_TXT)
    return root


# ---------------------------------------------------------------- real corpus


@pytest.fixture(scope="module")
def real_libri(librispeech_root, tmp_path_factory):
    save = tmp_path_factory.mktemp("libri_manifests")
    result = libri.prepare_librispeech(librispeech_root, save, splits=("test-other",))
    return result, read_manifest(save / "test-other.csv")


def test_real_librispeech_counts(real_libri):
    result, rows = real_libri
    assert len(rows) == 100
    speakers = {r["spk_id"] for r in rows}
    assert len(speakers) == 10
    assert all(sum(r["spk_id"] == s for r in rows) == 10 for s in speakers)
    assert result["utterances"] == {"test-other": 100} and result["speakers"] == {"test-other": 10}
    assert result["skipped"] == {}


def test_real_librispeech_rows_are_sound(real_libri):
    _, rows = real_libri
    assert list(rows[0]) == ["ID", "duration", "wav", "spk_id", "wrd", "chapter", "gender"]
    for r in rows:
        speaker, chapter, _ = r["ID"].split("-")
        assert r["spk_id"] == speaker and r["chapter"] == chapter
        assert float(r["duration"]) > 0
        assert r["wrd"].strip() and r["wrd"] == r["wrd"].upper()
        wav = pathlib.Path(r["wav"])
        assert wav.is_absolute() and wav.is_file() and wav.name == f"{r['ID']}.flac"
    genders = {r["spk_id"]: r["gender"] for r in rows}
    assert sorted(genders.values()) == ["F"] * 5 + ["M"] * 5
    assert 10 * 60 < sum(float(r["duration"]) for r in rows) < 15 * 60


# ---------------------------------------------------------------- built corpus


def test_tiny_librispeech_manifests(tmp_path):
    root = make_librispeech(tmp_path / "LibriSpeech")
    result = libri.prepare_librispeech(root, tmp_path / "out", splits=("test-other", "dev-clean"))
    assert result["utterances"] == {"test-other": 6, "dev-clean": 3}
    assert result["speakers"] == {"test-other": 2, "dev-clean": 1}
    rows = read_manifest(tmp_path / "out" / "test-other.csv")
    by_id = {r["ID"]: r for r in rows}
    assert by_id["22-200-0001"] == {
        "ID": "22-200-0001",
        "duration": "0.200",
        "wav": str((root / "test-other/22/200/22-200-0001.flac").resolve()),
        "spk_id": "22",
        "wrd": "WORDS OF 22 NUMBER 1",
        "chapter": "200",
        "gender": "M",
    }
    assert by_id["11-100-0000"]["gender"] == "F"
    assert read_manifest(tmp_path / "out" / "dev-clean.csv")[0]["spk_id"] == "33"


def test_without_speakers_txt_there_is_no_gender_column(tmp_path):
    root = make_librispeech(tmp_path / "LibriSpeech", speakers_txt=False)
    libri.prepare_librispeech(root, tmp_path / "out")
    header = (tmp_path / "out" / "test-other.csv").read_text().splitlines()[0]
    assert header == "ID,duration,wav,spk_id,wrd,chapter"


def test_speaker_missing_from_speakers_txt_is_warned_about(tmp_path, caplog):
    root = make_librispeech(tmp_path / "LibriSpeech", layout={"test-other": {"44": "400"}})
    libri.prepare_librispeech(root, tmp_path / "out")
    assert "44" in caplog.text and "SPEAKERS.TXT" in caplog.text
    assert read_manifest(tmp_path / "out" / "test-other.csv")[0]["gender"] == ""


def test_parent_of_librispeech_folder_and_comma_splits(tmp_path):
    make_librispeech(tmp_path / "LibriSpeech")
    result = libri.prepare_librispeech(tmp_path, tmp_path / "out", splits="test-other,dev-clean")
    assert set(result["manifests"]) == {"test-other", "dev-clean"}


def test_missing_split_is_named(tmp_path):
    root = make_librispeech(tmp_path / "LibriSpeech")
    with pytest.raises(FileNotFoundError, match="train-clean-100.*dev-clean, test-other"):
        libri.prepare_librispeech(root, tmp_path / "out", splits=("test-other", "train-clean-100"))
    assert not (tmp_path / "out").exists()


def test_preparation_is_reused_only_for_the_same_options(tmp_path):
    root = make_librispeech(tmp_path / "LibriSpeech")
    out = tmp_path / "out"
    assert not libri.prepare_librispeech(root, out)["reused"]
    again = libri.prepare_librispeech(root, out)
    assert again["reused"] and again["utterances"] == {"test-other": 6}
    both = libri.prepare_librispeech(root, out, splits=("test-other", "dev-clean"))
    assert not both["reused"]
    assert not libri.prepare_librispeech(root, out, skip_prep_if_exists=False)["reused"]


def test_cli_prints_a_summary(tmp_path, capsys):
    root = make_librispeech(tmp_path / "LibriSpeech")
    argv = ["--data_folder", str(root), "--save_folder", str(tmp_path / "out"), "--splits", "test-other,dev-clean"]
    assert libri.main(argv) == 0
    out = capsys.readouterr().out
    assert "test-other" in out and "dev-clean" in out
    assert libri.main(argv[:4] + ["--splits", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
