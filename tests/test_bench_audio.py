"""The audio bench's own arithmetic: metrics, MP3 modes and the equal-ViSQOL interpolation."""

import math

import numpy as np
import pytest
import soundfile as sf

from bench.audio import _accuracy_text, _mp3_mode, load_set, log_mel_distance, measure_set, opus_equivalent, si_sdr


def test_si_sdr_is_scale_invariant_and_matches_the_noise_level():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48000, 1))
    n = rng.standard_normal((48000, 1)) * 0.1
    assert si_sdr(x, 3 * x + 3 * n) == pytest.approx(20.0, abs=0.2)
    assert si_sdr(x, 0.5 * x) > 100


def test_log_mel_distance_is_zero_for_equal_signals_and_grows_with_noise():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16000, 2)) * 0.1
    assert log_mel_distance(x, x, 16000) == 0
    small = log_mel_distance(x, x + 0.01 * rng.standard_normal(x.shape), 16000)
    large = log_mel_distance(x, x + 0.1 * rng.standard_normal(x.shape), 16000)
    assert 0 < small < large


def test_mp3_modes_exist_in_the_standard_tables():
    assert _mp3_mode(48000, 64) == (48000, 64)
    assert _mp3_mode(48000, 24) == (24000, 24)  # MPEG-2 at half rate
    assert _mp3_mode(16000, 6) == (16000, 8)  # nearest existing bitrate
    assert _mp3_mode(16000, 12) == (16000, 16)


def test_opus_equivalent_interpolates_in_log_bitrate():
    rows = {"opus": [{"kbps": 8.0, "visqol": 3.0}, {"kbps": 32.0, "visqol": 4.0}],
            "ltcodec": [{"kbps": 10.0, "visqol": 3.5}, {"kbps": 10.0, "visqol": 4.5}]}
    opus_equivalent(rows)
    assert rows["ltcodec"][0]["opus_kbps_same_visqol"] == pytest.approx(16.0)
    assert rows["ltcodec"][1]["opus_kbps_same_visqol"] is None
    assert not math.isnan(rows["ltcodec"][0]["visqol"])


def test_rate_accuracy_counts_only_clips_of_ten_seconds_or_more():
    rate = 1000
    clips = [("short", np.zeros((5 * rate, 1)), rate), ("a", np.zeros((10 * rate, 1)), rate),
             ("b", np.zeros((20 * rate, 1)), rate)]
    sizes = {5 * rate: 10 ** 6, 10 * rate: 10 * 1000 * 12 // 8, 20 * rate: 20 * 1000 * 15 // 8}

    def codec(x, r, k):  # 12 kbps on "a" (on target), 15 kbps on "b" (+25%), anything on the short clip
        return x, sizes[len(x)]

    rows = measure_set("music", clips, {"ltcodec": codec}, {"ltcodec": [12]}, lambda *a: {"visqol": 1.0},
                       lambda msg: None)
    row = rows["ltcodec"][0]
    assert (row["long_clips"], row["long_within_10pct"]) == (2, 1)
    assert row["long_worst_error"] == pytest.approx(0.25)
    assert _accuracy_text(row) == "1/2 (+25%)"


def test_rate_control_codes_the_set_as_one_file(tmp_path):
    import torch

    from bench.audio import rate_control
    from ltcodec.audio_codec import AudioCodecModel, export_audio_model
    from ltcodec.audio_model import AudioLatticeCodec, AudioModelConfig

    torch.manual_seed(0)
    net = AudioLatticeCodec(AudioModelConfig(channels=4, M=16, N=8))
    export_audio_model(net, [np.zeros(24000, np.float32)], tmp_path / "m.safetensors", "m")
    model = AudioCodecModel.from_file(tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    clips = [("a", 0.1 * rng.standard_normal((16000, 1)), 16000), ("b", 0.1 * rng.standard_normal((24000, 2)), 24000)]
    rows = rate_control(clips, [6, 12], model)
    assert [r["target_kbps"] for r in rows] == [6, 12]
    assert all(r["seconds"] == pytest.approx(2.0) and r["kbps"] > 0 for r in rows)


def test_the_report_sets_ltcodec_at_mp3s_actual_bitrates_beside_mp3(tmp_path, monkeypatch):
    import bench.audio as bench_audio

    monkeypatch.setattr(bench_audio, "RESULTS", tmp_path)
    old = {"date": "D1", "command": "C1", "machine": "M1"}
    mp3 = [{"target_kbps": 32, "kbps": 33.06, "visqol": 4.834, "measured": old},
           {"target_kbps": 48, "kbps": 49.45, "visqol": 4.945, "measured": old}]
    matched = [{"target_kbps": 33.06, "kbps": 32.9, "visqol": 4.80, "measured": {"date": "D", "command": "C"}},
               {"target_kbps": 49.45, "kbps": 49.3, "visqol": 4.95, "measured": {"date": "D", "command": "C"}}]
    meta = {"date": "D0", "machine": "M", "command": "C0", "sets": {"speech": {"clips": 2, "seconds": 9.0}}}
    bench_audio.write_report({"speech": {"mp3": mp3, bench_audio.AT_MP3_RATES: matched}}, meta)
    text = (tmp_path / "audio.md").read_text()
    assert "measured D on M; command `C`" in text
    assert "| 32 | 33.06 | 4.834 | 32.90 | 4.800 | -0.034 |" in text
    assert "| 48 | 49.45 | 4.945 | 49.30 | 4.950 | +0.005 |" in text
    assert "| ltcodec_at_mp3 |" not in text  # not a row of the main table
    assert "Rows measured: mp3 D1 on M1 by `C1`." in text  # kept rows name their own run


def test_a_set_can_leave_out_its_first_clips(tmp_path):
    for i in range(4):
        sf.write(tmp_path / f"clip{i}.wav", np.full((100, 1), i / 10, np.float32), 8000)
    (tmp_path / "SOURCES.md").write_text("not audio")
    names = [n for n, _, _ in load_set(tmp_path, None, skip=1)]
    assert names == ["clip1.wav", "clip2.wav", "clip3.wav"]
    assert [n for n, _, _ in load_set(tmp_path, 2, skip=1)] == ["clip1.wav", "clip2.wav"]
