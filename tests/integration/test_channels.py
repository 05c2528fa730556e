"""Channels on real-speech manifests: (speaker, channel) tasks."""

import pathlib

import pytest
import torch


from helpers import tiny_asr as h


def test_channels_do_what_they_say():
    from sb_meta.data.channels import apply_channel, snr_db

    g = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(32000, generator=g)
    assert torch.equal(apply_channel(wav, "clean"), wav)
    for snr in (20, 10, 5, 0):
        assert snr_db(wav, apply_channel(wav, f"noise{snr}", seed=3) - wav) == pytest.approx(snr, abs=0.01)
    tel = apply_channel(wav, "telephone", seed=3)
    spec = torch.fft.rfft(tel).abs() ** 2
    freqs = torch.fft.rfftfreq(tel.numel(), 1 / 16000)
    assert spec[freqs > 4200].sum() < 1e-2 * spec.sum()  # -20 dB above the 8 kHz Nyquist band
    rev = apply_channel(wav, "reverb", seed=3)
    assert float(rev.pow(2).mean().sqrt()) == pytest.approx(float(wav.pow(2).mean().sqrt()), rel=1e-3)
    assert torch.equal(apply_channel(wav, "reverb", seed=3), rev)  # seeded
    with pytest.raises(ValueError, match="unknown channel 'radio'"):
        apply_channel(wav, "radio")


def test_prepare_channels_makes_speaker_channel_tasks(tmp_path, capsys):
    from sb_meta.cli import main
    from sb_meta.data.manifest import read_manifest
    from sb_meta.episodes import EpisodeSampler

    csv = h.make_corpus(tmp_path / "corpus", speakers=(("s0", 3), ("s1", 3)))
    assert main(["channels", "--manifests", str(csv), "--out", str(tmp_path / "ch"),
                 "--channels", "clean,telephone,noise10", "--quiet"]) == 0
    rows = read_manifest(tmp_path / "ch" / "data.csv")
    assert len(rows) == 18 and {r["channel"] for r in rows} == {"clean", "telephone", "noise10"}
    assert {r["spk_channel"] for r in rows} == {f"{s}@{c}" for s in ("s0", "s1")
                                               for c in ("clean", "telephone", "noise10")}
    assert all(pathlib.Path(r["wav"]).is_file() for r in rows)
    sampler = EpisodeSampler(rows, task_column="spk_channel", k_support=2, k_query=1, meta_batch_tasks=2)
    assert len(sampler.task_names) == 6
    before = {r["wav"]: pathlib.Path(r["wav"]).stat().st_mtime_ns for r in rows}
    assert main(["channels", "--manifests", str(csv), "--out", str(tmp_path / "ch"),
                 "--channels", "clean,telephone,noise10", "--quiet"]) == 0  # reused
    assert {r["wav"]: pathlib.Path(r["wav"]).stat().st_mtime_ns for r in rows} == before
    assert main(["channels", "--manifests", str(csv), "--out", str(tmp_path / "x"), "--channels", "radio"]) == 2
    assert "unknown channel 'radio'" in capsys.readouterr().err
