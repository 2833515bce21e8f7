"""The shipped audio codec: float waveform transforms, an exact integer hyper-synthesis, frozen tables.

The model file has the layout of the image model's (:mod:`ltcodec.image_codec`): float g_a, h_a, g_s
and gains, the integer h_s, and the tables, in safetensors with JSON metadata (``kind: audio``).  The
transforms run as ``Conv2d`` with ``(1, k)`` kernels on ``(1, C, 1, T)`` tensors in channels_last,
which is the fast layout for CPU inference (DESIGN-NOTES §4); the latent ``(1, M, 1, F)`` is coded by
the same :class:`~ltcodec.latent_coding.HyperLatentCoding` as images, with h = 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .audio_model import HYPER_STRIDE, AudioLatticeCodec, AudioModelConfig, to_two_d_state
from .latent_coding import Z_CLAMP, HyperLatentCoding, freeze_entropy_model, write_model_file

__all__ = ["AudioCodecModel", "export_audio_model"]


class AudioCodecModel(HyperLatentCoding, nn.Module):
    """A loaded audio model: mono signals at ``config.sample_rate`` in, latents out, and back."""

    kind = "audio"
    config_class = AudioModelConfig

    def __init__(self, config: AudioModelConfig, name: str, sha256: str):
        super().__init__()
        self._adopt(AudioLatticeCodec(config, two_d=True), config, name, sha256)

    @property
    def qualities(self) -> int:
        return len(self.config.target_kbps)

    @property
    def hop(self) -> int:
        return self.config.hop

    # -- the pipeline --------------------------------------------------------------------------------
    def z_shape(self, latent_shape: tuple[int, int]) -> tuple[int, int]:
        return 1, latent_shape[1] // HYPER_STRIDE

    @torch.no_grad()
    def analysis(self, x: np.ndarray) -> Tensor:
        """Latent (1, M, 1, len/hop) of a mono float signal whose length is a multiple of the hop."""
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None, None]
        return self.g_a(t.contiguous(memory_format=torch.channels_last))

    @torch.no_grad()
    def synthesis(self, y_hat: Tensor) -> np.ndarray:
        """Mono float signal (frames·hop,) of a decoded latent (1, M, 1, frames)."""
        return self.g_s(y_hat.contiguous(memory_format=torch.channels_last))[0, 0, 0].numpy()


@torch.no_grad()
def export_audio_model(net: AudioLatticeCodec, calibration: list[np.ndarray], path: str | Path, name: str,
                       half: bool = True, extra_meta: dict | None = None) -> str:
    """Freeze a trained (1-D) model into a shipped model file; returns the file's SHA-256.

    ``calibration`` holds mono signals at the model's rate; their hyper-latents at every quality set
    the integer h_s's activation ranges.
    """
    net = net.eval()
    two = AudioLatticeCodec(net.config, two_d=True).eval()
    two.load_state_dict(to_two_d_state(net.state_dict()))
    unit = net.config.hop * HYPER_STRIDE
    zs = []
    for sig in calibration:
        n = len(sig) // unit * unit
        x = torch.from_numpy(np.ascontiguousarray(sig[:n], np.float32))[None, None, None]
        y = two.g_a(x)
        for q in range(two.qualities):
            enc_g, _ = two.gains(torch.tensor([float(q)]))
            zs.append(torch.round(two.h_a(y * enc_g)).clamp(-Z_CLAMP, Z_CLAMP))
    z_cal = torch.cat([z.reshape(1, z.shape[1], 1, -1) for z in zs], dim=3)
    h_s_int, entropy_arrays, specs = freeze_entropy_model(two.h_s, two.z_density, two.lattice, net.config.M, z_cal)
    return write_model_file(path, "audio", name, net.config.to_dict(), two.state_dict(), h_s_int, entropy_arrays,
                            specs, half, extra_meta)
