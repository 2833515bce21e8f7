"""The audio training recipe runs, checkpoints, resumes and exports a model that codes (tiny settings)."""

import json

import numpy as np
import soundfile as sf
import torch

from ltcodec.audio import audio_info, decode_audio, encode_audio
from ltcodec.audio_codec import AudioCodecModel, export_audio_model
from ltcodec.audio_model import AudioLatticeCodec, AudioModelConfig
from ltcodec.training import audio as train_audio


def _corpus(root):
    rng = np.random.default_rng(0)
    for kind, rate, ch in (("speech", 16000, 1), ("music", 44100, 2)):
        (root / kind).mkdir(parents=True)
        for i in range(2):
            t = np.arange(rate * 2) / rate
            x = 0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t)[:, None] + 0.02 * rng.standard_normal((t.size, ch))
            sf.write(root / kind / f"{i}.flac", x, rate)


def test_train_resume_export(tmp_path, monkeypatch):
    monkeypatch.setattr(train_audio, "CACHE", tmp_path / "cache")
    _corpus(tmp_path / "data")
    out = tmp_path / "run"
    common = ["--data", str(tmp_path / "data"), "--media", str(tmp_path / "none"), "--eval", str(tmp_path / "data"),
              "--out", str(out), "--batch", "2", "--frames", "8", "--channels", "4", "--M", "16",
              "--log-every", "1", "--eval-every", "2", "--threads", "1"]
    train_audio.main(common + ["--steps", "2"])
    state = torch.load(out / "last.ckpt", weights_only=False)
    assert state["step"] == 2
    train_audio.main(common + ["--steps", "3", "--resume"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert any("eval" in r and "eval_ema" in r for r in log)
    state = torch.load(out / "last.ckpt", weights_only=False)
    assert set(state["ema"]) == set(state["model"]) and state["ema_decay"] == 0.999
    assert state["history"] == [] and state["lr"] == 3e-4
    del state["lr"]  # a checkpoint from before the rate was kept: every such run trained at 3e-4
    torch.save(state, out / "last.ckpt")
    train_audio.main(common + ["--steps", "4", "--resume", "--lr", "1.5e-4"])
    change = {"step": 3, "lr_from": 3e-4, "lr": 1.5e-4}
    assert torch.load(out / "last.ckpt", weights_only=False)["history"] == [change]
    assert change in [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    net = AudioLatticeCodec(AudioModelConfig.from_dict(state["config"]))
    net.load_state_dict(state["model"])
    export_audio_model(net, [np.zeros(24000, np.float32)], tmp_path / "m.safetensors", "m")
    model = AudioCodecModel.from_file(tmp_path / "m.safetensors")
    x = np.sin(np.arange(8000) / 5.0).astype(np.float32) * 0.3
    data = encode_audio(x, 16000, model=model)
    assert audio_info(data).frames == 8000
    assert decode_audio(data, model=model)[0].shape == (8000,)
