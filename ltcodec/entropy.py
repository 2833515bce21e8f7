"""Learned densities and the box likelihood of lattice points (the training side of entropy coding).

The box code (DESIGN-NOTES §2) codes a lattice point x = G u coordinate by coordinate: coordinate i gets
the mass of the interval [x_i − g_ii/2, x_i + g_ii/2) under its density.  Those boxes tile space, so the
product of the n interval masses *is* the probability the coder uses: training with
:func:`box_likelihood` optimizes the rate that is actually written.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import lower_bound

__all__ = ["box_likelihood", "gaussian_box_mass", "FactorizedDensity", "LIKELIHOOD_FLOOR"]

#: Smallest likelihood used in training, so one unlikely symbol cannot dominate the rate gradient.
LIKELIHOOD_FLOOR = 1e-9

_SQRT_HALF = math.sqrt(0.5)


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-_SQRT_HALF * x)


def gaussian_box_mass(x: Tensor, width: Tensor, scale: Tensor) -> Tensor:
    """Mass of [x − width/2, x + width/2) under N(0, scale²), computed on the left tail for accuracy."""
    ax = x.abs()
    upper = _std_normal_cdf((0.5 * width - ax) / scale)
    lower = _std_normal_cdf((-0.5 * width - ax) / scale)
    return upper - lower


def box_likelihood(x: Tensor, diagonal: Tensor, scale: Tensor, floor: float = LIKELIHOOD_FLOOR) -> Tensor:
    """Per-coordinate box-code likelihoods of (near-)lattice points ``x`` of shape ``(..., n)``.

    ``diagonal`` holds the box widths g_ii of the lattice generator (shape ``(n,)``), ``scale`` the
    Gaussian scale of each coordinate in the same units as ``x``; means are already subtracted.
    ``floor`` bounds each likelihood from below (a model's ``likelihood_floor``).
    """
    return lower_bound(gaussian_box_mass(x, diagonal.to(x.dtype), scale), floor)


class FactorizedDensity(nn.Module):
    """The univariate non-parametric density of Ballé et al., "Variational image compression with a
    scale hyperprior" (ICLR 2018), appendix 6.1: a monotone per-channel MLP gives the CDF.

    Used for the hyper-latent z, which is scalar-quantized; its integer coding table is frozen from
    this density at export (:meth:`integer_table`) and shipped with the weights.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def _logits_cdf(self, x: Tensor) -> Tensor:
        # x: (C, 1, K) → logits (C, 1, K)
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            x = torch.matmul(F.softplus(m), x) + b
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def cdf_logits(self, v: Tensor) -> Tensor:
        """Logit of the CDF at points ``v`` of shape (C, K), channel c under density c."""
        return self._logits_cdf(v.unsqueeze(1)).squeeze(1)

    def box_likelihood(self, x: Tensor, width: Tensor) -> Tensor:
        """Mass of [x − w/2, x + w/2) for x of shape (..., C): coordinate c under density c, width w_c.

        The box code of a lattice point under a learned non-parametric density per block coordinate.
        """
        c = x.shape[-1]
        flat = x.reshape(-1, c).T  # (C, K)
        half = (width.to(x.dtype) / 2)[:, None]
        lower = self.cdf_logits(flat - half)
        upper = self.cdf_logits(flat + half)
        sign = -torch.sign(lower + upper).detach()
        p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        return lower_bound(p.T.reshape(x.shape), LIKELIHOOD_FLOOR)

    def likelihood(self, z: Tensor) -> Tensor:
        """Mass of [z − ½, z + ½) per element of ``z`` (shape ``(B, C, H, W)``)."""
        b, c, h, w = z.shape
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self._logits_cdf(v - 0.5)
        upper = self._logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()
        p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        p = p.reshape(c, b, h, w).permute(1, 0, 2, 3)
        return lower_bound(p, LIKELIHOOD_FLOOR)

    @torch.no_grad()
    def pmf(self, radius: int) -> np.ndarray:
        """Probability of each integer in [−radius, radius] per channel, as float64 (C, 2·radius + 1)."""
        v = torch.arange(-radius, radius + 1, dtype=torch.float32)
        v = v.expand(self.channels, 1, -1)
        lower = self._logits_cdf(v - 0.5).double()
        upper = self._logits_cdf(v + 0.5).double()
        sign = -torch.sign(lower + upper)
        p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        return p.reshape(self.channels, -1).numpy()
