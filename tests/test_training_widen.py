"""Widening a trained network keeps what it computes, and a widened audio run resumes from there."""

import json

import pytest
import torch

from ltcodec.audio_model import AudioLatticeCodec, AudioModelConfig
from ltcodec.training import audio as train_audio
from ltcodec.training.widen import widen_state


def _randomized(model):
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.mark.parametrize("channels", [6, 8, 12])
def test_widened_audio_model_computes_the_same_signal(channels):
    narrow = _randomized(AudioLatticeCodec(AudioModelConfig(channels=4, M=16, N=8)))
    wide = AudioLatticeCodec(AudioModelConfig(channels=channels, M=16, N=8)).eval()
    wide.load_state_dict(widen_state(narrow.state_dict(), wide))
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in narrow.parameters())
    x = torch.randn(1, 1, narrow.config.hop * 8) * 0.3
    q = torch.tensor([2.0])
    with torch.no_grad():
        a, b = narrow.estimate(x, q), wide.estimate(x, q)
    assert torch.allclose(a["x_hat"], b["x_hat"], atol=1e-5)
    assert torch.allclose(a["bits_y"], b["bits_y"], rtol=1e-4) and torch.allclose(a["bits_z"], b["bits_z"], rtol=1e-4)


def test_widening_noise_perturbs_the_copies_a_little():
    narrow = _randomized(AudioLatticeCodec(AudioModelConfig(channels=4, M=16, N=8)))
    wide = AudioLatticeCodec(AudioModelConfig(channels=8, M=16, N=8))
    exact = widen_state(narrow.state_dict(), wide)
    noisy = widen_state(narrow.state_dict(), wide, noise=0.01, generator=torch.Generator().manual_seed(0))
    w = "g_a.0.weight"
    assert not torch.equal(exact[w], noisy[w])
    assert float((exact[w] - noisy[w]).std()) < 0.03 * float(exact[w].std())
    with pytest.raises(ValueError):
        widen_state(wide.state_dict(), AudioLatticeCodec(AudioModelConfig(channels=4, M=16, N=8)))


def test_audio_run_resumes_widened(tmp_path, monkeypatch):
    from tests.test_training_audio import _corpus

    monkeypatch.setattr(train_audio, "CACHE", tmp_path / "cache")
    _corpus(tmp_path / "data")
    out = tmp_path / "run"
    common = ["--data", str(tmp_path / "data"), "--media", str(tmp_path / "none"), "--eval", str(tmp_path / "none"),
              "--out", str(out), "--batch", "2", "--frames", "8", "--M", "16", "--log-every", "1", "--threads", "1"]
    train_audio.main(common + ["--steps", "2", "--channels", "4"])
    with pytest.raises(SystemExit):
        train_audio.main(common + ["--steps", "3", "--resume", "--channels", "2"])
    train_audio.main(common + ["--steps", "3", "--resume", "--channels", "6"])
    state = torch.load(out / "last.ckpt", weights_only=False)
    assert state["step"] == 3 and state["config"]["channels"] == 6
    assert state["history"][-1] == {"step": 2, "channels_from": 4, "channels": 6}
    assert state["model"]["g_a.0.weight"].shape[0] == 6 and state["ema"]["g_a.0.weight"].shape[0] == 6
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"step": 2, "channels_from": 4, "channels": 6} in log
