import numpy as np
import pytest


def smooth_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful test picture with a few edges (no external data needed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 90 * np.sin(xx / 23.0 + seed)
    g = 128 + 90 * np.cos(yy / 17.0)
    b = 128 + 60 * np.sin((xx + yy) / 31.0) + np.where(xx > width / 2, 30, -30)
    img = np.stack([r, g, b], -1) + rng.normal(0, 2, (height, width, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="session")
def picture():
    return smooth_image(96, 80)


@pytest.fixture(scope="session")
def tiny_audio_model_path(tmp_path_factory):
    """A small untrained audio model exported as a shipped file (E8, M = 16): fast to code with."""
    import torch

    from ltcodec.audio_codec import export_audio_model
    from ltcodec.audio_model import AudioLatticeCodec, AudioModelConfig

    torch.manual_seed(0)
    net = AudioLatticeCodec(AudioModelConfig(channels=4, M=16, N=8))
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("models") / "tiny-audio.safetensors"
    export_audio_model(net, [rng.standard_normal(24000).astype(np.float32) * 0.1], path, "tiny-audio")
    return path


@pytest.fixture(scope="session")
def tiny_audio_model(tiny_audio_model_path):
    from ltcodec.audio_codec import AudioCodecModel

    return AudioCodecModel.from_file(tiny_audio_model_path)
