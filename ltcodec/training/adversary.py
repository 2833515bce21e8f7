"""An adversarial term for the audio recipe: a small multi-scale STFT discriminator (EnCodec's kind).

The reconstruction losses (STFT, mel, waveform) pull the decoder towards the mean of what a latent may
have come from, which smooths the noise-like parts of a spectrogram; a discriminator that tells coded
crops from originals, and the distance between its features on the two (feature matching), reward the
texture instead.  On these CPUs it is kept small: an EnCodec-size discriminator (5 scales, 32 filters)
costs about ten times the generator's step; these three scales of 8 filters make a step on 4 crops of
1.07 s take 1.46 s on one thread instead of 0.65 s.  Training only, never shipped: the codec's weights
do not include it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: FFT sizes of the discriminator's scales (hop a quarter of each).
SCALES = (1024, 512, 256)


class _ScaleDiscriminator(nn.Module):
    """Convolutions over one complex spectrogram (real and imaginary parts as two channels), dilated
    along time, strided along frequency."""

    def __init__(self, n_fft: int, filters: int):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList([
            nn.Conv2d(2, filters, (3, 9), padding=(1, 4)),
            *[nn.Conv2d(filters, filters, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4)) for d in (1, 2, 4)],
            nn.Conv2d(filters, filters, (3, 3), padding=(1, 1)),
        ])
        self.out = nn.Conv2d(filters, 1, (3, 3), padding=(1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(x[:, 0], self.n_fft, self.n_fft // 4, window=self.window, return_complex=True)
        h = torch.stack([spec.real, spec.imag], 1).transpose(2, 3)  # (batch, 2, time, frequency)
        features = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            features.append(h)
        return self.out(h), features


class SpectrogramDiscriminator(nn.Module):
    """One :class:`_ScaleDiscriminator` per FFT size of :data:`SCALES`."""

    def __init__(self, filters: int = 8, scales: tuple[int, ...] = SCALES):
        super().__init__()
        self.filters = filters
        self.scales = nn.ModuleList([_ScaleDiscriminator(n, filters) for n in scales])

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [scale(x) for scale in self.scales]


def generator_terms(critic: SpectrogramDiscriminator, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per example: the hinge loss of the coded crops as the discriminator judges them plus the relative
    L1 distance between its features on them and on the originals (the originals' features are targets,
    not trained towards)."""
    with torch.no_grad():
        real = critic(x)
    critic.requires_grad_(False)  # its gradient here would be thrown away: only the decoder learns from this
    try:
        judged = critic(x_hat)
    finally:
        critic.requires_grad_(True)
    total = 0.0
    for (logits, feats), (_, real_feats) in zip(judged, real):
        total = total + F.relu(1 - logits).flatten(1).mean(1)
        fm = sum((f - r).abs().flatten(1).mean(1) / (r.abs().flatten(1).mean(1) + 1e-5)
                 for f, r in zip(feats, real_feats))
        total = total + fm / len(feats)
    return total / len(critic.scales)


def discriminator_loss(critic: SpectrogramDiscriminator, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The hinge loss that teaches the discriminator originals (≥ 1) from coded crops (≤ −1)."""
    total = 0.0
    for (real, _), (fake, _) in zip(critic(x), critic(x_hat.detach())):
        total = total + F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return total / len(critic.scales)
