"""AN4 preparation: on the real corpus ($SBMETA_AN4_ROOT) and on tiny built ones.

Bad-input handling is in ``test_bad_input.py``.
"""

import pathlib
import shutil
import tarfile

import numpy as np
import pytest
import soundfile

from sb_meta.utils import load_script
from sb_meta.data.manifest import read_manifest

REPO = pathlib.Path(__file__).resolve().parents[2]


an4 = load_script(REPO / "recipes/AN4/an4_prepare.py", "an4_prepare_under_test")


def write_sph(path, seconds=0.1, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (np.random.default_rng(0).standard_normal(int(seconds * sr)) * 1000).astype("int16")
    soundfile.write(path, samples, sr, format="NIST", subtype="PCM_16")


def make_an4(root, train_speakers=("fabc", "mdef", "fghi", "mjkl"), utts=2):
    """Build a tiny AN4 in CMU's layout: ``utts`` utterances per speaker, one test speaker."""
    splits = {"train": ("an4_clstk", train_speakers, True), "test": ("an4test_clstk", ("mtst",), False)}
    n = 1
    for split, (folder, speakers, tags) in splits.items():
        lines, fileids = [], []
        for spk in speakers:
            for _ in range(utts):
                utt = f"an{n}-{spk}-b"
                text = f"WORD{n} TWO" if tags else f"TEST{n} THREE"
                lines.append(f"<s> {text} </s> ({utt})" if tags else f"{text} ({utt})")
                fileids.append(f"{folder}/{spk}/{utt}")
                write_sph(root / "wav" / folder / spk / f"{utt}.sph", seconds=0.1 + 0.01 * n)
                n += 1
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / f"an4_{split}.transcription").write_text("\n".join(lines) + "\n")
        (root / "etc" / f"an4_{split}.fileids").write_text("\n".join(fileids) + "\n")
    return root


# ---------------------------------------------------------------- real corpus


@pytest.fixture(scope="module")
def real_an4(an4_root, tmp_path_factory):
    save = tmp_path_factory.mktemp("an4_manifests")
    result = an4.prepare_an4(an4_root, save)
    return result, {s: read_manifest(save / f"{s}.csv") for s in ("train", "dev", "test")}


def test_real_an4_counts(real_an4):
    result, rows = real_an4
    train_dev = rows["train"] + rows["dev"]
    assert len(train_dev) == 948
    assert len({r["spk_id"] for r in train_dev}) == 74
    assert len(rows["test"]) == 130
    assert len({r["spk_id"] for r in rows["test"]}) == 10
    assert result["skipped"] == {}
    assert result["utterances"] == {s: len(r) for s, r in rows.items()}


def test_real_an4_dev_is_whole_held_out_speakers(real_an4):
    result, rows = real_an4
    dev_spk = {r["spk_id"] for r in rows["dev"]}
    train_spk = {r["spk_id"] for r in rows["train"]}
    assert len(dev_spk) == 6 and dev_spk == set(result["dev_speakers"])
    assert not dev_spk & train_spk
    assert not dev_spk & {r["spk_id"] for r in rows["test"]}


def test_real_an4_rows_are_sound(real_an4, an4_root):
    _, rows = real_an4
    all_rows = [r for split in rows.values() for r in split]
    assert len({r["ID"] for r in all_rows}) == len(all_rows) == 1078
    for r in all_rows:
        assert r["ID"].split("-")[1] == r["spk_id"]
        wav = pathlib.Path(r["wav"])
        assert wav.is_absolute() and wav.suffix == ".sph" and wav.parent.name == r["spk_id"]
        assert 0.5 <= float(r["duration"]) <= 10
        assert r["wrd"] and r["wrd"] == r["wrd"].upper()
        assert "<s>" not in r["wrd"] and "</s>" not in r["wrd"] and "(" not in r["wrd"]
    assert all("an4test_clstk" in r["wav"] for r in rows["test"])
    first = rows["train"][0]
    assert soundfile.info(first["wav"]).samplerate == 16000
    # transcripts are the corpus's own: the test file has no <s> tags, the train file has them
    assert rows["test"][0]["wrd"] == "RUBOUT G M E F THREE NINE"
    total_words = sum(len(r["wrd"].split()) for r in rows["test"])
    assert total_words == 773


def test_real_an4_audio_reads_with_speechbrain(real_an4):
    from speechbrain.dataio.dataio import read_audio

    _, rows = real_an4
    row = rows["test"][0]
    signal = read_audio(row["wav"])
    assert abs(signal.shape[0] / 16000 - float(row["duration"])) < 1e-3


# ---------------------------------------------------------------- built corpus


def test_tiny_an4_manifests(tmp_path):
    root = make_an4(tmp_path / "an4")
    result = an4.prepare_an4(root, tmp_path / "out", dev_speakers=1)
    rows = {s: read_manifest(tmp_path / "out" / f"{s}.csv") for s in ("train", "dev", "test")}
    assert [len(rows[s]) for s in ("train", "dev", "test")] == [6, 2, 2]
    assert result["utterances"] == {"train": 6, "dev": 2, "test": 2}
    assert result["speakers"] == {"train": 3, "dev": 1, "test": 1}
    assert list(rows["train"][0]) == ["ID", "duration", "wav", "spk_id", "wrd"]
    by_id = {r["ID"]: r for split in rows.values() for r in split}
    assert by_id["an1-fabc-b"]["wrd"] == "WORD1 TWO"
    assert by_id["an9-mtst-b"]["wrd"] == "TEST9 THREE"
    assert by_id["an1-fabc-b"]["duration"] == "0.110"
    assert by_id["an1-fabc-b"]["wav"] == str((root / "wav/an4_clstk/fabc/an1-fabc-b.sph").resolve())


def test_dev_speakers_follow_the_seed(tmp_path):
    root = make_an4(tmp_path / "an4", train_speakers=[f"s{i:02d}x" for i in range(12)], utts=1)
    a = an4.prepare_an4(root, tmp_path / "a", dev_speakers=3, seed=1)["dev_speakers"]
    b = an4.prepare_an4(root, tmp_path / "b", dev_speakers=3, seed=1)["dev_speakers"]
    c = an4.prepare_an4(root, tmp_path / "c", dev_speakers=3, seed=2)["dev_speakers"]
    assert a == b and len(a) == 3 and a != c
    assert an4.prepare_an4(root, tmp_path / "d", dev_speakers=0)["utterances"]["dev"] == 0
    with pytest.raises(ValueError, match="dev_speakers=12"):
        an4.prepare_an4(root, tmp_path / "e", dev_speakers=12)


def test_preparation_is_reused_only_for_the_same_options(tmp_path):
    root = make_an4(tmp_path / "an4")
    out = tmp_path / "out"
    first = an4.prepare_an4(root, out, dev_speakers=1)
    assert not first["reused"] and (out / "opts.json").is_file()
    mtime = (out / "train.csv").stat().st_mtime_ns
    again = an4.prepare_an4(root, out, dev_speakers=1)
    assert again["reused"] and (out / "train.csv").stat().st_mtime_ns == mtime
    assert {k: again[k] for k in ("utterances", "speakers", "dev_speakers")} == {
        k: first[k] for k in ("utterances", "speakers", "dev_speakers")
    }
    changed = an4.prepare_an4(root, out, dev_speakers=2)
    assert not changed["reused"] and changed["utterances"]["dev"] == 4
    forced = an4.prepare_an4(root, out, dev_speakers=2, skip_prep_if_exists=False)
    assert not forced["reused"]
    (out / "dev.csv").unlink()
    assert not an4.prepare_an4(root, out, dev_speakers=2)["reused"]


def test_missing_corpus_names_what_is_missing_and_the_url(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        an4.prepare_an4(tmp_path / "nothing", tmp_path / "out")
    msg = str(err.value)
    assert "etc/an4_train.transcription" in msg and "wav/an4test_clstk" in msg
    assert "http://www.speech.cs.cmu.edu/databases/an4/an4_sphere.tar.gz" in msg
    assert not (tmp_path / "out").exists()


def test_parent_folder_holding_an4_is_accepted(tmp_path):
    make_an4(tmp_path / "corpora" / "an4")
    result = an4.prepare_an4(tmp_path / "corpora", tmp_path / "out", dev_speakers=1)
    assert result["utterances"]["test"] == 2


def test_download_from_url_unpacks_the_tarball(tmp_path):
    # A file:// URL stands in for CMU's server (no network here); same code path.
    src = make_an4(tmp_path / "src" / "an4")
    archive = tmp_path / "an4_sphere.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="an4")
    data = tmp_path / "data" / "an4"
    result = an4.prepare_an4(data, tmp_path / "out", dev_speakers=1, url=archive.as_uri())
    assert result["utterances"] == {"train": 6, "dev": 2, "test": 2}
    assert (data / "etc" / "an4_train.transcription").is_file()
    assert (data / "an4_sphere.tar.gz").is_file()
    assert sorted(p.name for p in data.iterdir()) == ["an4_sphere.tar.gz", "etc", "wav"]  # no temp left
    # The corpus is there now: the url is not used again.
    shutil.rmtree(tmp_path / "out")
    assert an4.prepare_an4(data, tmp_path / "out", dev_speakers=1, url="http://unused.invalid/x")


def test_cli_prints_a_summary(tmp_path, capsys):
    root = make_an4(tmp_path / "an4")
    argv = ["--data_folder", str(root), "--save_folder", str(tmp_path / "out"), "--dev_speakers", "1"]
    assert an4.main(argv) == 0
    out = capsys.readouterr().out
    assert "train" in out and "dev" in out and "test" in out and "dev speakers:" in out
    assert an4.main(["--data_folder", str(tmp_path / "none"), "--save_folder", str(tmp_path / "o2")]) == 1
    assert "an4_sphere.tar.gz" in capsys.readouterr().err


def test_another_training_seed_keeps_the_split_and_its_manifests(tmp_path):
    """`--seed=2` used to pick other dev speakers and rewrite a shared prepare folder."""
    recipe = load_script(REPO / "recipes/AN4/train.py", "an4_train_under_test")
    root = make_an4(tmp_path / "an4", train_speakers=[f"s{i:02d}x" for i in range(12)], utts=1)
    hp = {"prepare_folder": str(tmp_path / "m"), "data_folder": str(root), "dev_speakers": 3,
          "data_seed": 1234}
    recipe.prepare(dict(hp, seed=1234))
    dev, mtime = (tmp_path / "m" / "dev.csv").read_text(), (tmp_path / "m" / "dev.csv").stat().st_mtime_ns
    recipe.prepare(dict(hp, seed=2))
    assert (tmp_path / "m" / "dev.csv").read_text() == dev
    assert (tmp_path / "m" / "dev.csv").stat().st_mtime_ns == mtime  # reused, not rewritten
    recipe.prepare(dict(hp, seed=2, data_seed=2, prepare_folder=str(tmp_path / "n")))
    assert (tmp_path / "n" / "dev.csv").read_text() != dev  # the data seed does choose them
    for name in ("crdnn_ctc_meta", "crdnn_attention_meta", "transformer_meta"):
        text = (REPO / "recipes/AN4/hparams" / f"{name}.yaml").read_text()
        assert "\ndata_seed: 1234" in text, name


def test_heldout_speakers_are_a_second_pool_of_unseen_speakers(tmp_path):
    root = make_an4(tmp_path / "an4", train_speakers=[f"s{i:02d}x" for i in range(12)], utts=1)
    plain = an4.prepare_an4(root, tmp_path / "plain", dev_speakers=3, seed=1)
    out = tmp_path / "held"
    held = an4.prepare_an4(root, out, dev_speakers=3, seed=1, heldout_speakers=4)
    rows = {s: read_manifest(out / f"{s}.csv") for s in ("train", "dev", "heldout")}
    spk = {s: {r["spk_id"] for r in r_} for s, r_ in rows.items()}
    # the dev split is the one without held-out speakers; the pools are disjoint and cover train
    assert held["dev_speakers"] == plain["dev_speakers"] and len(spk["heldout"]) == 4
    assert not spk["heldout"] & (spk["train"] | spk["dev"])
    assert spk["train"] | spk["heldout"] == {r["spk_id"] for r in read_manifest(tmp_path / "plain" / "train.csv")}
    assert held["utterances"]["heldout"] == 4 and held["utterances"]["train"] == 5
    # reused with the same options; without held-out speakers the manifests are rewritten
    assert an4.prepare_an4(root, out, dev_speakers=3, seed=1, heldout_speakers=4)["reused"]
    again = an4.prepare_an4(root, out, dev_speakers=3, seed=1)
    assert not again["reused"] and again["utterances"]["train"] == 9 and "heldout" not in again["utterances"]
    assert not (out / "heldout.csv").exists()  # its speakers are training speakers now
    # a preparation made before the option existed stays up to date
    assert an4.prepare_an4(root, tmp_path / "plain", dev_speakers=3, seed=1)["reused"]
    with pytest.raises(ValueError, match="heldout_speakers=9 must be between 0 and 8"):
        an4.prepare_an4(root, tmp_path / "bad", dev_speakers=3, heldout_speakers=9)
