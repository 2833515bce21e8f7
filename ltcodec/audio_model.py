"""The audio model: a SEANet-style waveform encoder/decoder, a temporal hyperprior and a lattice latent.

::

    x ──g_a──► y ──×2^θ_q──► y' ──(y'−μ') on Λ in blocks of n channels──► ŷ' ──×2^φ_q──► ŷ ──g_s──► x̂
    (24 kHz)   (75 frames/s)  │                     ▲ μ', σ'
                              └──h_a──► z ──round──► ẑ ──h_s──┘   (z at 18.75 frames/s)

The same shape as the image model (:mod:`ltcodec.image_model`), in one dimension: strided
convolutions with ELU and one residual unit per stage (EnCodec's "ec" layout, DESIGN-NOTES §4),
no recurrent layers.  Layers are built either as ``Conv1d`` (faster to train) or as ``Conv2d`` with
``(1, k)`` kernels on ``(B, C, 1, T)`` tensors (faster to run on CPU in channels_last, and what the
exact integer hyper-synthesis of :mod:`ltcodec.intnet` needs); the weights are the same numbers, so
a trained 1-D model converts to the 2-D layout by adding an axis (:func:`to_two_d_state`).

One model covers every bitrate: per-quality gains as in the image model.  Each quality has a target
bitrate; training adapts its rate weight until the measured rate meets it (see
:mod:`ltcodec.training.audio`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .entropy import FactorizedDensity, box_likelihood
from .image_model import LOG2_SCALE_MIN, bounded_log2_scale, rate_points
from .lattice import Lattice, get_lattice

__all__ = ["AudioModelConfig", "AudioLatticeCodec", "DEFAULT_TARGET_KBPS", "to_two_d_state"]

#: Bitrate each quality is trained to reach (kbps of one channel at the model's rate).
DEFAULT_TARGET_KBPS = (4.0, 6.0, 9.0, 13.0, 19.0, 27.0, 38.0, 54.0)


@dataclass
class AudioModelConfig:
    sample_rate: int = 24000
    channels: int = 16  # width of the first stage; doubles at each downsampling
    strides: tuple[int, ...] = (2, 4, 5, 8)
    M: int = 96  # latent channels
    N: int = 64  # hyper-latent channels
    lattice: str = "e8"
    target_kbps: tuple[float, ...] = field(default_factory=lambda: DEFAULT_TARGET_KBPS)
    scale_floor_level: int = int(LOG2_SCALE_MIN * 8)  # as in ImageModelConfig

    @property
    def hop(self) -> int:
        h = 1
        for s in self.strides:
            h *= s
        return h

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strides"] = list(self.strides)
        d["target_kbps"] = list(self.target_kbps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AudioModelConfig":
        d = dict(d)
        d["strides"] = tuple(d.get("strides", (2, 4, 5, 8)))
        d["target_kbps"] = tuple(d.get("target_kbps", DEFAULT_TARGET_KBPS))
        return cls(**d)


class _Layers:
    """Factory for 1-D or (1, k) 2-D convolutions with the same weights."""

    def __init__(self, two_d: bool):
        self.two_d = two_d

    def conv(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, padding: int | None = None) -> nn.Module:
        p = (k - 1) * dilation // 2 if padding is None else padding
        if self.two_d:
            return nn.Conv2d(cin, cout, (1, k), (1, stride), (0, p), (1, dilation))
        return nn.Conv1d(cin, cout, k, stride, p, dilation)

    def deconv(self, cin: int, cout: int, k: int, stride: int, padding: int, output_padding: int) -> nn.Module:
        if self.two_d:
            return nn.ConvTranspose2d(cin, cout, (1, k), (1, stride), (0, padding), (0, output_padding))
        return nn.ConvTranspose1d(cin, cout, k, stride, padding, output_padding)


class ResidualUnit(nn.Module):
    def __init__(self, L: _Layers, channels: int, dilation: int = 1):
        super().__init__()
        self.block = nn.Sequential(
            nn.ELU(), L.conv(channels, channels // 2, 3, dilation=dilation), nn.ELU(), L.conv(channels // 2, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _down_padding(s: int) -> int:
    return (s + 1) // 2  # with kernel 2s: T → T/s exactly when s divides T


def build_encoder(c: AudioModelConfig, L: _Layers) -> nn.Sequential:
    layers: list[nn.Module] = [L.conv(1, c.channels, 7)]
    ch = c.channels
    for s in c.strides:
        layers += [ResidualUnit(L, ch), nn.ELU(), L.conv(ch, 2 * ch, 2 * s, s, padding=_down_padding(s))]
        ch *= 2
    layers += [nn.ELU(), L.conv(ch, c.M, 3)]
    return nn.Sequential(*layers)


def build_decoder(c: AudioModelConfig, L: _Layers) -> nn.Sequential:
    ch = c.channels * 2 ** len(c.strides)
    layers: list[nn.Module] = [L.conv(c.M, ch, 7)]
    for s in reversed(c.strides):
        p = _down_padding(s)
        layers += [nn.ELU(), L.deconv(ch, ch // 2, 2 * s, s, p, 2 * p - s), ResidualUnit(L, ch // 2)]
        ch //= 2
    layers += [nn.ELU(), L.conv(ch, 1, 7)]
    return nn.Sequential(*layers)


def build_hyper(c: AudioModelConfig, L: _Layers) -> tuple[nn.Sequential, nn.Sequential]:
    N, M = c.N, c.M
    H = N * 3 // 2
    h_a = nn.Sequential(
        L.conv(M, N, 3), nn.LeakyReLU(0.125), L.conv(N, N, 5, 2), nn.LeakyReLU(0.125), L.conv(N, N, 5, 2),
    )
    h_s = nn.Sequential(
        L.deconv(N, N, 5, 2, 2, 1), nn.LeakyReLU(0.125), L.deconv(N, H, 5, 2, 2, 1), nn.LeakyReLU(0.125),
        L.conv(H, 2 * M, 3),
    )
    return h_a, h_s


#: Hyper-latent frames per latent frame: the hyperprior halves time twice.
HYPER_STRIDE = 4


class AudioLatticeCodec(nn.Module):
    """Training model (1-D layers).  Input (B, 1, T) at ``config.sample_rate``, T a multiple of hop·4."""

    def __init__(self, config: AudioModelConfig | None = None, two_d: bool = False):
        super().__init__()
        self.config = c = config or AudioModelConfig()
        self.lattice: Lattice = get_lattice(c.lattice)
        if c.M % self.lattice.dim:
            raise ValueError(f"M={c.M} is not a multiple of the lattice dimension {self.lattice.dim}")
        L = _Layers(two_d)
        self.two_d = two_d
        self.g_a = build_encoder(c, L)
        self.g_s = build_decoder(c, L)
        self.h_a, self.h_s = build_hyper(c, L)
        self.z_density = FactorizedDensity(c.N)
        q = len(c.target_kbps)
        init = torch.arange(q, dtype=torch.float32)[:, None] * 0.5 - 1.0
        self.enc_gain = nn.Parameter(init.repeat(1, c.M))
        self.dec_gain = nn.Parameter(-init.repeat(1, c.M))

    @property
    def qualities(self) -> int:
        return len(self.config.target_kbps)

    def gains(self, quality: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder and decoder gains (B, M, 1[, 1]) for 0-based, possibly fractional, quality indices."""
        q = quality.clamp(0, self.qualities - 1)
        lo = q.floor().long().clamp(max=self.qualities - 2)
        t = (q - lo.to(q.dtype))[:, None]
        hi = (lo + 1).clamp(max=self.qualities - 1)
        enc = torch.exp2((1 - t) * self.enc_gain[lo] + t * self.enc_gain[hi])[..., None]
        dec = torch.exp2((1 - t) * self.dec_gain[lo] + t * self.dec_gain[hi])[..., None]
        if self.two_d:
            enc, dec = enc[..., None], dec[..., None]
        return enc, dec

    def to_blocks(self, t: Tensor) -> Tensor:
        """(B, M, T) → (B, T, M/n, n)."""
        b, m, n_t = t.shape
        n = self.lattice.dim
        return t.permute(0, 2, 1).reshape(b, n_t, m // n, n)

    def from_blocks(self, t: Tensor) -> Tensor:
        b, n_t, k, n = t.shape
        return t.reshape(b, n_t, k * n).permute(0, 2, 1)

    def hyper_parameters(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        mean, log2_scale = self.h_s(z_hat).chunk(2, dim=1)
        return mean, bounded_log2_scale(log2_scale, self.config.scale_floor_level)

    def forward(self, x: Tensor, quality: Tensor, rate: str = "noise") -> dict[str, Tensor]:
        """Training pass (1-D layout): reconstruction and bits per example (box likelihood + factorized z);
        ``rate`` as in :meth:`LatticeHyperprior.forward <ltcodec.image_model.LatticeHyperprior.forward>`."""
        enc_g, dec_g = self.gains(quality)
        y = self.g_a(x) * enc_g
        z = self.h_a(y)
        z_noisy = z + torch.rand_like(z) - 0.5
        z_hat = z + (torch.round(z) - z).detach()
        mean, log2_scale = self.hyper_parameters(z_hat)
        residual = self.to_blocks(y - mean)
        scale = self.to_blocks(torch.exp2(log2_scale))
        hard = self.lattice.quantize(residual, "ste")
        lik_y = box_likelihood(rate_points(self.lattice, residual, hard, rate), self.lattice.diagonal, scale)
        lik_z = self.z_density.likelihood(z_noisy[:, :, None, :])
        y_hat = (self.from_blocks(hard) + mean) * dec_g
        x_hat = self.g_s(y_hat)
        return {
            "x_hat": x_hat,
            "bits_y": -torch.log2(lik_y).flatten(1).sum(1),
            "bits_z": -torch.log2(lik_z).flatten(1).sum(1),
        }

    @torch.no_grad()
    def estimate(self, x: Tensor, quality: Tensor) -> dict[str, Tensor]:
        """Hard quantization everywhere: bits are the box-code ideal."""
        enc_g, dec_g = self.gains(quality)
        y = self.g_a(x) * enc_g
        z_hat = torch.round(self.h_a(y))
        mean, log2_scale = self.hyper_parameters(z_hat)
        hard = self.lattice.quantize(self.to_blocks(y - mean), "hard")
        lik_y = box_likelihood(hard, self.lattice.diagonal, self.to_blocks(torch.exp2(log2_scale)))
        lik_z = self.z_density.likelihood(z_hat[:, :, None, :])
        x_hat = self.g_s((self.from_blocks(hard) + mean) * dec_g)
        return {
            "x_hat": x_hat,
            "bits_y": -torch.log2(lik_y).flatten(1).sum(1),
            "bits_z": -torch.log2(lik_z).flatten(1).sum(1),
        }


def to_two_d_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A 1-D model's state for the (1, k) 2-D layout: convolution weights gain a height axis."""
    convs = ("g_a.", "g_s.", "h_a.", "h_s.")
    return {k: (v[:, :, None, :] if k.startswith(convs) and v.ndim == 3 else v) for k, v in state.items()}
