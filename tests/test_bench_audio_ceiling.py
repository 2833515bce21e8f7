import json

import numpy as np
import torch

from bench.audio_ceiling import measure, references, report
from ltcodec.audio_model import AudioLatticeCodec, AudioModelConfig


def fake_metrics(kind, ref, deg, rate):
    """Stands in for ViSQOL: the metrics only need to see signals of equal length at the clip's rate."""
    assert ref.shape == deg.shape and ref.shape[1] == 1
    err = float(np.mean((ref - deg) ** 2))
    return {"visqol": 5.0 - err, "si_sdr": -10 * np.log10(err + 1e-12)}


def test_measure_reports_coded_and_unquantized_for_every_quality():
    torch.manual_seed(0)
    net = AudioLatticeCodec(AudioModelConfig(channels=4, M=16, N=8))
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal((8000, 2))).astype(np.float32)  # stereo at another rate
    measured = measure(net, "speech", [("a.flac", clip, 16000)], fake_metrics)
    rows = measured["rows"]
    assert measured["visqol_resampled"] > 4.9  # 16 kHz through a 24 kHz model's resampler: nearly lossless
    assert [r["quality"] for r in rows] == list(range(1, net.qualities + 1))
    for r in rows:
        assert r["kbps"] > 0
        for k in ("visqol_coded", "visqol_unquantized", "si_sdr_coded", "si_sdr_unquantized"):
            assert np.isfinite(r[k])
    text = report({"speech": measured}, {}, "tiny", {"speech": 1}, "python -m bench.audio_ceiling", "now")
    assert text.count("\n| ") == net.qualities + 1 and "(1 clip)" in text and "resampled to the model's 24 kHz" in text


def test_references_pick_the_points_nearest_24_kbps(tmp_path):
    path = tmp_path / "audio.json"
    path.write_text(json.dumps({"results": {"speech": {
        "mp3": [{"kbps": 16.7, "visqol": 4.2}, {"kbps": 24.9, "visqol": 4.5}, {"kbps": 33.1, "visqol": 4.8}],
        "opus": []}}}))
    assert references(path) == {"speech": {"mp3": {"kbps": 24.9, "visqol": 4.5}}}
    assert references(tmp_path / "missing.json") == {}


def test_the_resampled_ceiling_loses_what_the_models_rate_cannot_carry():
    torch.manual_seed(0)
    net = AudioLatticeCodec(AudioModelConfig(channels=4, M=16, N=8))
    t = np.arange(14400) / 48000
    tone = np.sin(2 * np.pi * 18000 * t).astype(np.float32)[:, None]  # above a 24 kHz model's 12 kHz band
    measured = measure(net, "music", [("hi.flac", tone, 48000)], fake_metrics)
    assert measured["visqol_resampled"] < 4.6  # the tone is gone: mean squared error ≈ 0.5
