"""speechocean762 preparation: on the 8-speaker mini copy ($SBMETA_SPEECHOCEAN762_ROOT) and on
tiny corpora built in the published layout, with bad inputs."""

import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from sb_meta.data.manifest import read_manifest
from sb_meta.data.validate import DataPreparationError
from sb_meta.utils import load_script

REPO = pathlib.Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "SpeechOcean762"
so = load_script(RECIPE / "speechocean762_prepare.py", "speechocean762_prepare_under_test")
COLUMNS = ["ID", "duration", "wav", "spk_id", "wrd", "age", "gender", "age_group"]


def make_corpus(root, speakers=None):
    """A tiny corpus in the published layout: ``{split: {speaker: (age, gender, n_utts)}}``."""
    speakers = speakers or {"train": {"0001": (7, "m", 2), "0002": (30, "f", 2), "0003": (9, "f", 2),
                                      "0004": (25, "m", 2)},
                            "test": {"0010": (8, "m", 2), "0011": (40, "f", 2)}}
    rng = np.random.default_rng(0)
    for split, spks in speakers.items():
        folder = root / split
        folder.mkdir(parents=True)
        text, scp, utt2spk, ages, genders = [], [], [], [], []
        for spk, (age, gender, n) in spks.items():
            ages.append(f"{spk}\t{age}")
            genders.append(f"{spk}\t{gender}")
            for i in range(n):
                utt = f"{spk}{i:05d}"
                wav = root / "WAVE" / f"SPEAKER{spk}" / f"{utt}.WAV"
                wav.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(wav, (rng.standard_normal(1600) * 1000).astype("int16"), 16000)
                text.append(f"{utt}\tHELLO WORLD {i}")
                scp.append(f"{utt}\tWAVE/SPEAKER{spk}/{utt}.WAV")
                utt2spk.append(f"{utt} {spk}")
        for name, lines in [("text", text), ("wav.scp", scp), ("utt2spk", utt2spk),
                            ("spk2age", ages), ("spk2gender", genders)]:
            (folder / name).write_text("\n".join(lines) + "\n")
        (folder / "spk2utt").write_text("")
    return root


# ------------------------------------------------------------------ the mini copy


@pytest.fixture(scope="module")
def mini(speechocean762_root, tmp_path_factory):
    save = tmp_path_factory.mktemp("so762")
    result = so.prepare_speechocean762(speechocean762_root, save, dev_speakers=2)
    return save, result, {s: read_manifest(save / f"{s}.csv") for s in ("train", "dev", "test")}


def test_the_mini_copy_gives_manifests_with_age_groups(mini, speechocean762_root):
    save, result, rows = mini
    assert (save / "train.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert result["utterances"] == {"train": 40, "dev": 40, "test": 80}
    for split, split_rows in rows.items():
        for r in split_rows:
            assert r["age_group"] == ("child" if int(r["age"]) < 18 else "adult"), r
            assert pathlib.Path(r["wav"]).is_file() and r["wrd"] == r["wrd"].upper()
    # the mini copy holds two children and two adults in each published split
    test_groups = {r["spk_id"]: r["age_group"] for r in rows["test"]}
    assert sorted(test_groups.values()) == ["adult", "adult", "child", "child"]
    # dev: whole training speakers, children and adults in proportion (1 + 1 of 2 + 2)
    dev_groups = {r["spk_id"]: r["age_group"] for r in rows["dev"]}
    assert sorted(dev_groups.values()) == ["adult", "child"]


def test_speakers_are_disjoint_across_train_dev_and_test(mini):
    _, _, rows = mini
    spk = {s: {r["spk_id"] for r in split_rows} for s, split_rows in rows.items()}
    assert not spk["train"] & spk["dev"] and not spk["train"] & spk["test"] and not spk["dev"] & spk["test"]
    assert {len(v) for v in spk.values()} == {2, 4}


def test_a_second_preparation_is_skipped_until_the_corpus_changes(speechocean762_root, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(speechocean762_root, corpus)
    save = tmp_path / "m"
    assert not so.prepare_speechocean762(corpus, save, dev_speakers=2)["reused"]
    assert so.prepare_speechocean762(corpus, save, dev_speakers=2)["reused"]
    assert not so.prepare_speechocean762(corpus, save, dev_speakers=2, seed=7)["reused"]  # options
    assert so.prepare_speechocean762(corpus, save, dev_speakers=2, seed=7)["reused"]
    text = corpus / "test" / "text"
    text.write_text(text.read_text().replace("\t", "\t ", 1) + "")  # same utterances, other bytes
    assert not so.prepare_speechocean762(corpus, save, dev_speakers=2, seed=7)["reused"]


# ------------------------------------------------------------------ bad inputs


def _break_missing_wav(root):
    (root / "WAVE" / "SPEAKER0002" / "000200001.WAV").unlink()
    return "000200001"


def _break_speaker_in_both(root):
    with open(root / "test" / "utt2spk", "a") as f:  # a test utterance said by training speaker 0003
        f.write("001100001 0003\n")
    with open(root / "test" / "spk2age", "a") as f:
        f.write("0003\t9\n")
    with open(root / "test" / "spk2gender", "a") as f:
        f.write("0003\tf\n")
    lines = (root / "test" / "utt2spk").read_text().splitlines()
    (root / "test" / "utt2spk").write_text("\n".join(l for l in lines if l != "001100001 0011") + "\n")
    return "speaker 0003"


def _break_no_text(root):
    lines = (root / "train" / "text").read_text().splitlines()
    (root / "train" / "text").write_text("\n".join(l for l in lines if not l.startswith("000400000")) + "\n")
    return "000400000"


def _break_unreadable(root):
    (root / "WAVE" / "SPEAKER0010" / "001000001.WAV").write_bytes(b"RIFF but not audio")
    return "001000001.WAV"


@pytest.mark.parametrize("breaker", [_break_missing_wav, _break_speaker_in_both, _break_no_text,
                                     _break_unreadable])
def test_bad_input_is_named_and_nothing_is_written(tmp_path, breaker):
    root = make_corpus(tmp_path / "corpus")
    culprit = breaker(root)
    save = tmp_path / "out"
    with pytest.raises(DataPreparationError) as err:
        so.prepare_speechocean762(root, save, dev_speakers=2)
    assert culprit in str(err.value) and "nothing was written" in str(err.value).splitlines()[0]
    assert not save.exists() or not any(save.iterdir())
    # the command line says it on stderr and exits 1, writing nothing either
    proc = subprocess.run([sys.executable, str(RECIPE / "speechocean762_prepare.py"),
                           f"--data_folder={root}", f"--save_folder={save}", "--dev_speakers=2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "\nerror: " in proc.stderr and culprit in proc.stderr.split("\nerror: ")[1]
    assert not save.exists() or not any(save.iterdir())


def test_a_missing_list_file_names_it(tmp_path):
    root = make_corpus(tmp_path / "corpus")
    (root / "test" / "spk2age").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing test/spk2age"):
        so.prepare_speechocean762(root, tmp_path / "out")


def test_unlisted_audio_is_ignored_and_dev_speakers_follow_the_age_groups(tmp_path):
    root = make_corpus(tmp_path / "corpus")
    soundfile.write(root / "WAVE" / "SPEAKER0001" / "extra.WAV", np.zeros(1600, dtype="int16"), 16000)
    result = so.prepare_speechocean762(root, tmp_path / "out", dev_speakers=2, seed=3)
    assert result["utterances"] == {"train": 4, "dev": 4, "test": 4}
    groups = {r["spk_id"]: r["age_group"] for r in read_manifest(tmp_path / "out" / "dev.csv")}
    assert sorted(groups.values()) == ["adult", "child"]
    with pytest.raises(ValueError, match="dev_speakers=4 must be between 0 and 3"):
        so.prepare_speechocean762(root, tmp_path / "out2", dev_speakers=4)
