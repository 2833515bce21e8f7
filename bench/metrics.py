"""Image quality metrics on 8-bit RGB: PSNR and MS-SSIM (Wang, Simoncelli & Bovik 2003)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "ms_ssim"]

_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim(x, y, win):
    c1, c2 = 0.01**2, 0.03**2
    ch = x.shape[1]
    w1 = win.reshape(1, 1, 1, -1).repeat(ch, 1, 1, 1)
    w2 = win.reshape(1, 1, -1, 1).repeat(ch, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, w1, groups=ch), w2, groups=ch)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = ((2 * mx * my + c1) / (mx**2 + my**2 + c1)) * cs
    return ssim.flatten(2).mean(-1), cs.flatten(2).mean(-1)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two uint8 (H, W, C) images, per channel then averaged (as CompressAI reports it)."""
    x = torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)[None]
    y = torch.from_numpy(b.astype(np.float32) / 255).permute(2, 0, 1)[None]
    win = _gauss()
    values = []
    for i, w in enumerate(_WEIGHTS):
        ssim, cs = _ssim(x, y, win)
        values.append((ssim if i == len(_WEIGHTS) - 1 else cs).clamp_min(0))
        if i < len(_WEIGHTS) - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    out = torch.ones_like(values[0])
    for v, w in zip(values, _WEIGHTS):
        out = out * v**w
    return float(out.mean())
