"""Trainable float hyperprior parts recovered from a model file that kept only their frozen forms.

Model files written before they kept the float hyper-synthesis and hyper-latent density (``train.*``)
hold the integer h_s and the z tables only.  Training can still go on from such a file: the integer
network computes (up to rounding) the same function as a float network whose hidden activations are
the integer ones times a per-layer scale, and the z density can be refitted to the frozen tables.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..intnet import WEIGHT_BITS, IntLayer


def float_layers(layers: list[IntLayer], output_scales: np.ndarray,
                 weight_max: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of each float layer behind an integer network.

    Layer k requantizes its accumulator by m/2^s = s_in·s_w/s_out.  The input scale of the first layer is
    1 (ẑ is integer) and the last layer's s_out is ``output_scales``; a hidden layer's s_out is free
    (leaky ReLU is positively homogeneous, so any choice gives the same function), and is chosen so that
    the layer's largest float weight is ``weight_max``.  By default that is the size which the last
    layer's largest weight then has too, so that no layer learns much faster than another under Adam.
    """
    if weight_max is None:
        last = float(np.abs(float_layers(layers, output_scales, 1.0)[-1][0]).max())
        weight_max = last ** (1 / len(layers))
    wmax = (1 << (WEIGHT_BITS - 1)) - 1
    out = []
    s_in = 1.0
    for n, layer in enumerate(layers):
        ratio = layer.mult.astype(np.float64) / np.exp2(layer.shift.astype(np.float64))
        if n == len(layers) - 1:
            s_w = ratio / (s_in * np.asarray(output_scales, np.float64))
            s_out = None
        else:
            # s_w = ratio·s_out/s_in; the largest |w| = wmax·max(s_w) is set to weight_max.
            s_out = weight_max * s_in / (wmax * float(ratio.max()))
            s_w = ratio * s_out / s_in
        shape = (1, -1) if layer.kind == "deconv" else (-1, 1)
        shape = shape + (1,) * (layer.weight.ndim - 2)
        weight = layer.weight.astype(np.float64) * s_w.reshape(shape)
        bias = layer.bias.astype(np.float64) * s_in * s_w
        out.append((weight.astype(np.float32), bias.astype(np.float32)))
        if s_out is not None:
            s_in = s_out
    return out


def load_float_layers(net: nn.Sequential, weights: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Copy (weight, bias) pairs into the (de)convolutions of ``net``, squeezing a 2-D kernel's unit height."""
    convs = [m for m in net if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d, nn.ConvTranspose2d))]
    if len(convs) != len(weights):
        raise ValueError(f"{len(weights)} layers for a network of {len(convs)}")
    with torch.no_grad():
        for conv, (w, b) in zip(convs, weights):
            w = torch.from_numpy(w)
            if w.ndim == conv.weight.ndim + 1:
                w = w[:, :, 0]
            conv.weight.copy_(w.reshape(conv.weight.shape))
            conv.bias.copy_(torch.from_numpy(b))


def table_radius(starts: np.ndarray, offsets: np.ndarray) -> int:
    """A radius whose [−radius, radius] holds every symbol of frozen channel tables (and a margin of 2)."""
    return int(np.abs(np.concatenate([offsets, offsets + np.diff(starts)])).max()) + 2


def table_pmfs(freqs: np.ndarray, starts: np.ndarray, offsets: np.ndarray, radius: int) -> np.ndarray:
    """Per-channel pmf over [−radius, radius] of frozen channel tables (their escape mass dropped)."""
    pmf = np.zeros((offsets.size, 2 * radius + 1))
    for c in range(offsets.size):
        f = freqs[starts[c]: starts[c + 1] - 1].astype(np.float64)
        lo = int(offsets[c]) + radius
        pmf[c, lo: lo + f.size] = f
    return pmf / pmf.sum(axis=1, keepdims=True)


def fit_density(density: nn.Module, target: np.ndarray, radius: int, steps: int = 600, lr: float = 0.02) -> float:
    """Fit a factorized density to per-channel pmfs (cross-entropy); returns the final KL in bits per value."""
    p = torch.from_numpy(target)
    support = p > 0
    opt = torch.optim.Adam(density.parameters(), lr=lr)
    v = torch.arange(-radius, radius + 1, dtype=torch.float32).expand(1, p.shape[0], 1, -1)
    kl = float("nan")
    for _ in range(steps):
        q = density.likelihood(v)[0, :, 0].double().clamp_min(1e-12)
        loss = -(p * torch.log2(q)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        kl = float(loss.detach()) + float((p[support] * torch.log2(p[support])).sum() / p.shape[0])
    return kl
