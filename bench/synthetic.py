"""Rate–distortion bench on synthetic sources with known limits (real coded bits).

    python -m bench.synthetic --source gaussian --method ltc --lattice e8 --quick --json
    python -m bench.synthetic --all [--quick]      # every source × method; writes bench/results/

Methods (each trained on the CPU, then run on ≥ 100,000 held-out samples and coded to bytes):

* ``ntc``      nonlinear transform coding: MLP transforms, scalar rounding, factorized density
               (Ballé et al. 2018), coded with per-channel integer tables.
* ``ltc``      lattice transform coding: the same transforms, the latent quantized on a lattice in
               blocks, a learned Gaussian scale per block coordinate, coded with the box code.  For iid
               sources the transforms act per sample and the lattice spans a block of samples (the
               LTC paper's block variant).
* ``learned``  LTC with a learned lattice basis (Babai rounding, orthogonality penalty).
* ``vq``       learned-codebook VQ with a categorical entropy model, trained with the soft relaxation
               and soft/hard cross-entropy rate terms ("Learned transform compression with optimized
               entropy encoding"); product VQ of 2-dimensional sub-vectors.
* ``klt``      classical: KLT, uniform scalar quantization, per-coefficient empirical entropy coding.

Rates are bits per sample (sawbridge: bits per realization), from the bytes the coder wrote.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

import constriction

from ltcodec.boxcode import (BoxCoder, ChannelTables, LatticeCodingSpec, ScaleTables, density_tables,
                             level_of_scale)
from ltcodec.entropy import FactorizedDensity, box_likelihood
from ltcodec.lattice import LearnedLattice, get_lattice

from . import sources as S
from .host import machine

METHODS = ("ntc", "ltc", "learned", "vq", "klt")
LATTICES = ("z", "a2", "d4", "e8", "bw16", "leech")
RESULTS = Path(__file__).parent / "results"
HELD_OUT_SAMPLES = 100_000


# ----------------------------------------------------------------------------------------------------
# Rate points
# ----------------------------------------------------------------------------------------------------

#: Training steps of one rate point.  The full bench trains as long as the quick one, which already
#: meets the targets; it measures twice the rate points (and so takes about 2x as long).
TRAIN_STEPS = 1500


def results_stem(quick: bool) -> str:
    """File stem under ``bench/results/``: the quick and full benches keep separate reports."""
    return "synthetic-quick" if quick else "synthetic"


def target_rates(source: str, quick: bool) -> list[float]:
    """Rates (bits per sample; sawbridge: per realization) that the λ sweep aims at."""
    if source == "sawbridge":
        return [1.0, 2.0, 3.0, 4.0] if quick else [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    return [1.0, 2.0, 3.0] if quick else [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


def lagrangian(source: str, rate: float) -> float:
    """λ of D + λ·R whose optimum sits near ``rate``: the slope −dD/dR of the bound there."""
    d = S.bound_distortion(source, rate)
    return 2 * math.log(2) * d if source != "sawbridge" else math.log(2) * d


# ----------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------

class Compander(nn.Module):
    """Elementwise increasing map x ↦ a·x + Σ_k w_k·tanh(s_k·(x − b_k)), w_k, s_k ≥ 0.

    The transform of iid sources (per sample).  Monotonicity is the structure of optimal scalar
    companding; an unconstrained MLP learns to park inputs on quantizer boundaries, where the
    uniform-noise relaxation of rounding is most wrong.
    """

    def __init__(self, gain: float, hidden: int = 16):
        super().__init__()
        self.log_gain = nn.Parameter(torch.tensor(math.log(gain)))
        self.w = nn.Parameter(torch.full((hidden,), -6.0))  # softplus(-6) ≈ 0: starts linear
        self.s = nn.Parameter(torch.zeros(hidden))
        self.b = nn.Parameter(torch.linspace(-3, 3, hidden) / max(gain, 1e-3) ** 0)

    def forward(self, x):
        w = nn.functional.softplus(self.w)
        s = nn.functional.softplus(self.s)
        return torch.exp(self.log_gain) * x + (w * torch.tanh(s * (x.unsqueeze(-1) - self.b))).sum(-1)


class VectorMLP(nn.Module):
    """x ↦ A·x + MLP(x) for vector sources; A starts as ``init`` (scaled by ``gain``) or orthogonal."""

    def __init__(self, d_in: int, d_out: int, gain: float, hidden: int = 256, init: torch.Tensor | None = None):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, bias=False)
        with torch.no_grad():
            if init is None:
                nn.init.orthogonal_(self.linear.weight)
            else:
                self.linear.weight.copy_(init)
            self.linear.weight.mul_(gain)
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.1), nn.Linear(hidden, d_out))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x):
        return self.linear(x) + self.mlp(x)


_PCA: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

#: Hidden width of the vector sources' MLPs, where it differs from 256.
HIDDEN = {"ar1": 128}


def principal_axes(source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(variances, axes as columns) of the source's covariance, largest first, from 40,000 samples
    drawn with a fixed seed: the KLT, used to start the learned transforms where it leaves off."""
    if source not in _PCA:
        x = S.sample(source, 40_000, np.random.default_rng(12345)).astype(np.float64)
        vals, vecs = np.linalg.eigh(np.cov(x, rowvar=False))
        order = np.argsort(vals)[::-1]
        _PCA[source] = (torch.from_numpy(vals[order].copy()).float(), torch.from_numpy(vecs[:, order].copy()).float())
    return _PCA[source]


def _transforms(source: str, latent: int, gain: float, klt: bool = True):
    """Analysis and synthesis transforms.

    With ``klt`` vector sources start from the KLT (its leading axes; for the sawbridge the gain is set
    so that the first coefficient spans about 2^R quantizer steps, its one degree of freedom carrying
    the whole rate).  Without it they start from a random rotation, which spreads the variance evenly
    over the latents: what a code with one entropy model for every block needs (LTC).
    """
    if S.iid(source):
        return Compander(gain), Compander(1 / gain)
    d = S.dimension(source)
    # The AR(1) source is Gaussian, so its best transform is linear (the KLT): a narrower MLP on top of
    # the linear map serves it as well at 0.6x the training time (E8 at 2 bits, seeds 0/1/2: width 256
    # 2.09/2.50/2.82 dB from R(D), width 128 2.90/2.51/2.07 dB, differences within the seed spread).
    hidden = HIDDEN.get(source, 256)
    if not klt:
        if source == "sawbridge":
            # A realization's norm is ~√(d/3); start with latents of unit spread per quantizer step.
            gain = gain / math.sqrt(d / 3)
        return VectorMLP(d, latent, gain, hidden), VectorMLP(latent, d, 1 / gain, hidden)
    variances, axes = principal_axes(source)
    axes = axes[:, :latent]
    if axes.shape[1] < latent:  # more latents than dimensions: pad with zero rows
        axes = torch.cat([axes, torch.zeros(d, latent - axes.shape[1])], 1)
    if source == "sawbridge":  # gain = 1 / step = 2^R: the first coefficient spans ~2^R steps
        gain = gain / (math.sqrt(12.0) * float(variances[0]) ** 0.5)
    return VectorMLP(d, latent, gain, hidden, init=axes.T), VectorMLP(latent, d, 1 / gain, hidden, init=axes)


def _step_for_rate(source: str, rate: float) -> float:
    """High-rate estimate of the quantizer step that gives ``rate`` bits per sample."""
    h = {"gaussian": 0.5 * math.log2(2 * math.pi * math.e), "laplace": math.log2(2 * math.e / math.sqrt(2)),
         "ar1": 0.5 * math.log2(2 * math.pi * math.e * (1 - S.AR1_RHO**2)), "sawbridge": 0.0}[source]
    return 2.0 ** (h - rate)


# ----------------------------------------------------------------------------------------------------
# Codes
# ----------------------------------------------------------------------------------------------------

class BlockContext(nn.Module):
    """Density of coordinate i of a lattice point given its coordinates 1 … i−1 (a masked MLP).

    The box code assigns each lattice point the mass of a box, not of its Voronoi cell; at low rates
    that costs a few hundredths of a bit per sample (DESIGN-NOTES §2).  Conditioning each coordinate's
    Gaussian on the block's earlier coordinates recovers most of it.  Trained on hard-quantized points,
    its likelihood is exactly the rate the coder then writes.
    """

    def __init__(self, n: int, hidden: int = 32):
        super().__init__()
        self.n = n
        self.w1 = nn.Parameter(torch.randn(n, n, hidden) * 0.1)
        self.b1 = nn.Parameter(torch.zeros(n, hidden))
        self.w2 = nn.Parameter(torch.zeros(n, hidden, 2))
        self.b2 = nn.Parameter(torch.zeros(n, 2))
        self.register_buffer("mask", torch.tril(torch.ones(n, n), -1))  # coordinate i sees j < i

    def forward(self, x: torch.Tensor, base_log_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, n) lattice points → mean (B, n), log scale (B, n)."""
        h = torch.nn.functional.softplus(torch.einsum("bj,ijh->bih", x, self.w1 * self.mask[..., None]) + self.b1)
        out = torch.einsum("bih,iho->bio", h, self.w2) + self.b2
        return out[..., 0], base_log_scale + out[..., 1]

    def coordinate(self, x: torch.Tensor, base_log_scale: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log scale (each (B,)) of coordinate i alone: what the coder asks for, n times cheaper."""
        h = torch.nn.functional.softplus(x[:, :i] @ self.w1[i, :i] + self.b1[i])
        out = h @ self.w2[i] + self.b2[i]
        return out[:, 0], base_log_scale[i] + out[:, 1]


_NOISE_BANKS: dict[str, torch.Tensor] = {}


def _noise_bank(lattice, size: int = 1 << 16) -> torch.Tensor:
    """Voronoi-uniform samples of a fixed lattice, drawn once per process and shared by every run."""
    if lattice.name not in _NOISE_BANKS or _NOISE_BANKS[lattice.name].shape[1] != lattice.dim:
        gen = torch.Generator().manual_seed(7)
        _NOISE_BANKS[lattice.name] = lattice.voronoi_noise((size, lattice.dim), generator=gen)
    return _NOISE_BANKS[lattice.name]


class LatticeCode(nn.Module):
    """g_a → lattice in blocks → Gaussian per block coordinate (box code) → g_s.

    Optionally a :class:`BlockContext` refines each coordinate's density from the earlier ones.
    """

    def __init__(self, source: str, lattice, rate: float, density: str = "gaussian"):
        super().__init__()
        self.source = source
        self.lattice = lattice
        # "nonparametric": a learned density per block coordinate (Ballé et al.'s factorized prior)
        self.density = FactorizedDensity(lattice.dim, init_scale=4.0) if density == "nonparametric" else None
        n = lattice.dim
        self.latent = S.dimension(source) if S.iid(source) else (
            max(n, 16) if source == "ar1" else max(n, 4))
        self.latent = -(-self.latent // n) * n
        # One Gaussian scale per block coordinate serves every block: start from a random rotation,
        # which spreads the variance evenly over the blocks (the KLT would not).
        self.g_a, self.g_s = _transforms(source, self.latent, 1 / _step_for_rate(source, rate), klt=False)
        self.log_scale = nn.Parameter(torch.zeros(n))
        self.context: BlockContext | None = None
        # Voronoi-uniform noise drawn once: a closest-point search per training step saved (Leech).
        if not isinstance(lattice, LearnedLattice):
            self.register_buffer("noise_bank", _noise_bank(lattice))

    def noise(self, y):
        if isinstance(self.lattice, LearnedLattice):
            return self.lattice.quantize(y, "noise")
        idx = torch.randint(0, self.noise_bank.shape[0], (y.shape[0],))
        return y + self.noise_bank[idx]

    def blocks(self, y):
        return y.reshape(-1, self.lattice.dim)

    def box_likelihood(self, points, scale):
        if self.density is not None:
            return self.density.box_likelihood(points, self.lattice.diagonal.detach())
        return box_likelihood(points, self.lattice.diagonal, scale)

    def forward(self, x):
        y = self.blocks(self.g_a(x))
        scale = torch.exp(self.log_scale).expand_as(y)
        noisy = self.noise(y)
        bits = -torch.log2(self.box_likelihood(noisy, scale)).sum()
        hard = self.lattice.quantize(y, "ste")
        x_hat = self.g_s(hard.reshape(x.shape[0], -1))
        return x_hat, bits

    @torch.no_grad()
    def code(self, x):
        y = self.blocks(self.g_a(x)).double()
        q = self.lattice.closest(y)
        if isinstance(self.lattice, LearnedLattice):
            g = self.lattice.generator.detach().double()
            u = torch.round(torch.linalg.solve_triangular(g, q.T, upper=False).T).long()
        else:
            u = self.lattice.coordinates(q)
        spec = LatticeCodingSpec.from_lattice(self.lattice)
        levels = np.broadcast_to(level_of_scale(torch.exp(self.log_scale).double().numpy()), u.shape).copy()
        if self.density is not None:
            dens = self.density

            def cdf(i, pts):
                v = torch.from_numpy(pts).float()[None].expand(self.lattice.dim, -1)
                return torch.sigmoid(dens.cdf_logits(v)[i]).double().numpy()

            g_min = float(np.diagonal(spec.unit_generator).min())
            radius = int(min(np.abs(q.numpy()).max() / g_min + 8, 2000))
            coder = BoxCoder(spec, density_tables(cdf, spec, radius), per_dimension=True)
            words = coder.encode(u.numpy(), None)
            u2 = coder.decode(words, None, blocks=u.shape[0])
        elif self.context is None:
            lo, hi = int(levels.min() + spec.level_offset.min()), int(levels.max() + spec.level_offset.max())
            coder = BoxCoder(spec, ScaleTables.build(lo - 1, hi + 1, spec.fractions()))
            words = coder.encode(u.numpy(), levels)
            u2 = coder.decode(words, levels)
        else:
            g = torch.from_numpy(spec.unit_generator)

            def conditional(i, prefix):
                pts = torch.zeros(prefix.shape[0], self.lattice.dim, dtype=torch.float64)
                if i:
                    pts[:, :i] = torch.from_numpy(prefix).double() @ g[:i, :i].T
                mean, log_scale = self.context.coordinate(pts.float(), self.log_scale, i)
                return level_of_scale(torch.exp(log_scale).double().numpy()), mean.double().numpy()

            lo, hi = int(levels.min()) - 40, int(levels.max()) + 16
            coder = BoxCoder(spec, ScaleTables.build(lo, hi, spec.fractions(conditional=True)))
            with torch.no_grad():
                words = coder.encode(u.numpy(), None, conditional)
                u2 = coder.decode(words, None, conditional, blocks=u.shape[0])
        if not np.array_equal(u2, u.numpy()):
            raise RuntimeError("box code round trip failed")
        q2 = self.lattice.points(torch.from_numpy(u2), torch.float64) if not isinstance(self.lattice, LearnedLattice) \
            else (torch.from_numpy(u2).double() @ self.lattice.generator.detach().double().T)
        x_hat = self.g_s(q2.float().reshape(x.shape[0], -1))
        return x_hat, 4 * len(words)


class ScalarCode(nn.Module):
    """Scalar NTC: g_a → rounding → factorized density per latent channel → g_s."""

    def __init__(self, source: str, rate: float):
        super().__init__()
        self.source = source
        self.latent = S.dimension(source) if S.iid(source) else (16 if source == "ar1" else 1)
        self.channels = 1 if S.iid(source) else self.latent
        self.g_a, self.g_s = _transforms(source, self.latent, 1 / _step_for_rate(source, rate))
        self.density = FactorizedDensity(self.channels, init_scale=4.0)

    def _lik(self, y):
        # y: (B, latent) → (1, channels, B, latent/channels) layout for the density
        b = y.shape[0]
        return self.density.likelihood(y.reshape(b, self.channels, -1).permute(1, 0, 2).unsqueeze(0))

    def forward(self, x):
        y = self.g_a(x)
        noisy = y + torch.rand_like(y) - 0.5
        bits = -torch.log2(self._lik(noisy)).sum()
        # iid sources (monotone companders) use the mixed relaxation: hard quantization with a
        # straight-through gradient for the distortion, noise for the rate.  The straight-through
        # gradient hands the encoder the decoder's slope *between* quantized points, which an
        # unconstrained MLP decoder never learned; on the sawbridge the MLP encoder then folds the
        # latent (cells that are unions of intervals: 0.5 bit above H(D) at 3 bits).  Vector sources
        # therefore train on the dithered latent throughout (Ballé et al. 2017), and the hard
        # fine-tuning that follows fits the decoder to the real cells.  (LTC keeps the mixed
        # relaxation everywhere: on AR(1) the dithered path cost it 1–2 dB.)
        if not S.iid(self.source):
            return self.g_s(noisy), bits
        hard = y + (torch.round(y) - y).detach()
        return self.g_s(hard), bits

    @torch.no_grad()
    def code(self, x):
        y = torch.round(self.g_a(x)).long()
        b = y.shape[0]
        sym = y.reshape(b, self.channels, -1).permute(1, 0, 2).reshape(self.channels, -1).numpy()
        radius = int(max(64, np.abs(sym).max() + 8))
        tables = ChannelTables.from_pmfs(self.density.pmf(radius), -radius)
        words = tables.encode(sym)
        back = tables.decode(words, sym.shape[1])
        if not np.array_equal(back, sym):
            raise RuntimeError("table code round trip failed")
        return self.g_s(y.float()), 4 * len(words)


class VQCode(nn.Module):
    """Product VQ of 2-dim sub-vectors of the latent with a learned categorical model per group."""

    def __init__(self, source: str, rate: float, codewords: int = 256, sub: int = 2):
        super().__init__()
        self.source = source
        self.latent = S.dimension(source) if S.iid(source) else (16 if source == "ar1" else 2)
        self.sub = sub
        self.groups = 1 if S.iid(source) else self.latent // sub
        step = _step_for_rate(source, rate)
        self.g_a, self.g_s = _transforms(source, self.latent, 1.0, klt=False)
        # Codebook initialized on a grid of the right step (a good start for k-means-like training).
        side = int(math.isqrt(codewords))
        grid = (torch.arange(side) - (side - 1) / 2) * step * 1.0
        self.codebook = nn.Parameter(torch.cartesian_prod(grid, grid).float())
        self.logits = nn.Parameter(-(self.codebook.detach() ** 2).sum(1).repeat(self.groups, 1) / 2)
        self.sharpness = 1.0 / step**2

    def _split(self, y):
        return y.reshape(y.shape[0], -1, self.sub)  # (B, G·k, 2)

    def _dist2(self, z):
        # ‖z − c‖² expanded: a matrix product instead of a (B, G, K, 2) difference tensor (2× faster).
        c = self.codebook
        return (z ** 2).sum(-1, keepdim=True) - 2 * z @ c.T + (c ** 2).sum(-1)

    def _group_logits(self, count):
        # Sub-vector j of a vector belongs to group j % groups.
        return self.logits[torch.arange(count) % self.groups]

    def forward(self, x):
        z = self._split(self.g_a(x))
        d2 = self._dist2(z)  # (B, G, K)
        soft = torch.softmax(-self.sharpness * d2, -1)
        hard_idx = d2.argmin(-1)
        hard = self.codebook[hard_idx]
        soft_rec = soft @ self.codebook
        z_hat = hard + soft_rec - soft_rec.detach()
        logp = torch.log_softmax(self._group_logits(z.shape[1]), -1) / math.log(2)  # (G, K)
        soft_ce = -(soft * logp).sum()
        hard_ce = -logp.gather(1, hard_idx.T).sum()
        return self.g_s(z_hat.reshape(x.shape[0], -1)), 0.5 * soft_ce + 0.5 * hard_ce

    @torch.no_grad()
    def code(self, x):
        z = self._split(self.g_a(x))
        idx = self._dist2(z).argmin(-1)  # (B, G)
        probs = torch.softmax(self._group_logits(z.shape[1]).double(), -1).numpy()
        enc = constriction.stream.queue.RangeEncoder()
        for g in range(idx.shape[1]):
            enc.encode(idx[:, g].numpy().astype(np.int32),
                       constriction.stream.model.Categorical(probs[g], perfect=False))
        words = enc.get_compressed()
        dec = constriction.stream.queue.RangeDecoder(words)
        back = np.stack([dec.decode(constriction.stream.model.Categorical(probs[g], perfect=False), idx.shape[0])
                         for g in range(idx.shape[1])], 1)
        if not np.array_equal(back, idx.numpy()):
            raise RuntimeError("VQ round trip failed")
        return self.g_s(self.codebook[idx].reshape(x.shape[0], -1)), 4 * len(words)


# ----------------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------------

@dataclass
class RunConfig:
    steps: int
    batch_samples: int = 16384
    lr: float = 3e-3

    def vectors(self, source: str) -> int:
        """Source vectors per step: ``batch_samples`` samples, at least 64 vectors."""
        return max(self.batch_samples // S.dimension(source), 64)


def train(model: nn.Module, source: str, lam: float, cfg: RunConfig, rng: np.random.Generator) -> None:
    d = S.dimension(source)
    batch = cfg.vectors(source)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    per = d if source != "sawbridge" else 1  # rate and distortion per sample / per realization
    for step in range(cfg.steps):
        x = torch.from_numpy(S.sample(source, batch, rng))
        x_hat, bits = model(x)
        dist = ((x_hat - x) ** 2).mean()
        rate = bits / (batch * per)
        loss = dist + lam * rate
        pen = getattr(getattr(model, "lattice", None), "orthogonality_penalty", None)
        if pen is not None:
            loss = loss + 1e-2 * pen()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


@torch.no_grad()
def klt_points(source: str, rates: list[float], rng: np.random.Generator, test: np.ndarray) -> list[dict]:
    """KLT + uniform scalar quantization + per-coefficient empirical entropy coding."""
    train_x = S.sample(source, 40_000 if not S.iid(source) else 20_000, rng).astype(np.float64)
    cov = np.cov(train_x, rowvar=False)
    _, vecs = np.linalg.eigh(cov)
    out = []
    train_c = train_x @ vecs
    test_c = test.astype(np.float64) @ vecs
    per = 1 if source == "sawbridge" else train_x.shape[1]

    def entropy(delta: float) -> float:
        """Empirical entropy of the quantized training coefficients, bits per sample (or realization)."""
        total = 0.0
        for col in np.round(train_c / delta).astype(np.int64).T:
            _, counts = np.unique(col, return_counts=True)
            p = counts / counts.sum()
            total -= float((p * np.log2(p)).sum())
        return total / per

    for rate in rates:
        # Find the step whose empirical rate is nearest the target (bisection on log step), then code it.
        lo, hi = math.log(1e-4), math.log(1e2)
        for _ in range(30):
            mid = (lo + hi) / 2
            if entropy(math.exp(mid)) > rate:
                lo = mid
            else:
                hi = mid
        delta = math.exp((lo + hi) / 2)
        c_train = np.round(train_c / delta).astype(np.int64)
        c_test = np.round(test_c / delta).astype(np.int64)
        radius = int(max(np.abs(c_train).max(), np.abs(c_test).max())) + 1
        hist = np.stack([np.bincount(c + radius, minlength=2 * radius + 1) for c in c_train.T]).astype(np.float64)
        tables = ChannelTables.from_pmfs((hist + 0.01) / (hist + 0.01).sum(1, keepdims=True), -radius, floor=0)
        words = tables.encode(c_test.T)
        if not np.array_equal(tables.decode(words, c_test.shape[0]), c_test.T):
            raise RuntimeError("KLT round trip failed")
        x_hat = (c_test * delta) @ vecs.T
        out.append(_row(source, test, x_hat, 4 * len(words), {"method": "klt", "step": delta}))
    return out


def _row(source: str, x: np.ndarray, x_hat, nbytes: int, extra: dict) -> dict:
    x_hat = np.asarray(x_hat, dtype=np.float64)
    n_vec, d = x.shape
    if source == "sawbridge":
        samples, per = n_vec, n_vec
        mse = S.distortion(source, x, x_hat)
        unit = "bits/realization"
    else:
        samples, per = n_vec * d, n_vec * d
        mse = S.distortion(source, x, x_hat)
        unit = "bits/sample"
    rate = 8 * nbytes / per
    bound = S.bound_distortion(source, rate)
    return {"source": source, **extra, "rate_bits": rate, "rate_unit": unit, "mse": mse, "bound_mse": bound,
            "gap_db": 10 * math.log10(mse / bound), "bound_rate": S.bound_rate(source, mse),
            "gap_bits": rate - S.bound_rate(source, mse), "coded_bytes": nbytes, "samples": samples}


def build(method: str, source: str, lattice: str, rate: float, density: str = "gaussian") -> nn.Module:
    if method == "ntc":
        return ScalarCode(source, rate)
    if method == "ltc":
        return LatticeCode(source, get_lattice(lattice), rate, density)
    if method == "learned":
        return LatticeCode(source, LearnedLattice(8, init="identity"), rate)
    if method == "vq":
        return VQCode(source, rate)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def hard_bank(model: nn.Module, source: str, cfg: RunConfig, rng: np.random.Generator,
              batches: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples and their hard-quantized latents under the frozen encoder, computed once.

    The phases after training fit only the decoder and the entropy model (a few hundred parameters)
    to the encoder's real quantization cells; ``batches`` batches of fresh samples estimate those
    cells well (and at least 16,384 vectors, so that the sawbridge decoder does not overfit), and one
    closest-point search per sample instead of one per step keeps Leech fast.
    """
    x = torch.from_numpy(S.sample(source, max(cfg.vectors(source) * batches, 16384), rng))
    with torch.no_grad():
        y = model.g_a(x)
        q = torch.round(y) if isinstance(model, ScalarCode) else model.lattice.closest(model.blocks(y))
    return x, q.reshape(x.shape[0], -1)


def _draw(bank: tuple[torch.Tensor, torch.Tensor], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, bank[0].shape[0], (batch,))
    return bank[0][idx], bank[1][idx]


def finetune_hard(model: nn.Module, source: str, lam: float, cfg: RunConfig, rng: np.random.Generator,
                  bank: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Freeze the encoder; fit decoder and entropy model to hard-quantized latents.

    Both objectives are then exact: the decoder learns the conditional means of the real quantization
    cells, and the density the real symbol frequencies, so the training loss is the coded loss.
    """
    d = S.dimension(source)
    batch = cfg.vectors(source)
    per = d if source != "sawbridge" else 1
    bank = bank if bank is not None else hard_bank(model, source, cfg, rng)
    if isinstance(model, ScalarCode) or getattr(model, "density", None) is not None:
        entropy = list(model.density.parameters())
    else:
        entropy = [model.log_scale]
    groups = [{"params": list(model.g_s.parameters()), "lr": 1e-3}, {"params": entropy, "lr": 1e-2}]
    opt = torch.optim.Adam(groups)
    steps = cfg.steps // 2
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[1e-3, 1e-2], total_steps=steps, pct_start=0.05)
    for _ in range(steps):
        x, q = _draw(bank, batch)
        if isinstance(model, ScalarCode):
            bits = -torch.log2(model._lik(q)).sum()
            x_hat = model.g_s(q)
        else:
            q = model.blocks(q)
            bits = -torch.log2(model.box_likelihood(q, torch.exp(model.log_scale).expand_as(q))).sum()
            x_hat = model.g_s(q.reshape(x.shape[0], -1))
        loss = ((x_hat - x) ** 2).mean() + lam * bits / (batch * per)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def fit_density(model: "ScalarCode", bank: tuple[torch.Tensor, torch.Tensor], steps: int = 300) -> None:
    """Maximum-likelihood fit of the factorized density to every hard-quantized latent of the bank.

    The fine-tuning batches are small for vector sources (64 sawbridge realizations: 64 symbols per
    step), so the density they leave behind is noisy; full-batch steps on the frozen symbols fix it.
    """
    q = bank[1]
    # A one-dimensional density per channel: 65,536 symbols pin it down (and keep 300 steps cheap).
    q = q[: max(1, (1 << 16) // q.shape[1])]
    opt = torch.optim.Adam(model.density.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        bits = -torch.log2(model._lik(q)).mean()
        opt.zero_grad(set_to_none=True)
        bits.backward()
        opt.step()
        sched.step()


def fit_context(model: LatticeCode, source: str, cfg: RunConfig, rng: np.random.Generator,
                bank: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Fit the block context model to hard-quantized points of the trained (now frozen) transform."""
    model.context = BlockContext(model.lattice.dim)
    opt = torch.optim.Adam(model.context.parameters(), lr=3e-3)
    batch = cfg.vectors(source)
    bank = bank if bank is not None else hard_bank(model, source, cfg, rng)
    # An eighth of the training steps: on AR(1) with E8 at 2 bits the context saves 0.023 bit/sample
    # after 187 steps and 0.0004 more after 750, which cost 4x the time.
    steps = max(cfg.steps // 8, 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.05)
    for _ in range(steps):
        q = model.blocks(_draw(bank, batch)[1])
        mean, log_scale = model.context(q, model.log_scale.detach())
        bits = -torch.log2(box_likelihood(q - mean, model.lattice.diagonal, torch.exp(log_scale))).sum()
        opt.zero_grad(set_to_none=True)
        (bits / q.numel()).backward()
        opt.step()
        sched.step()


def _test_set(source: str, seed: int, held_out: int) -> np.ndarray:
    d = S.dimension(source)
    n_test = held_out if source == "sawbridge" else -(-held_out // d)
    return S.sample(source, n_test, np.random.default_rng(10_000 + seed))


def run_rate(source: str, method: str, lattice: str, rate: float, k: int, steps: int, seed: int = 0,
             context: bool = True, held_out: int = HELD_OUT_SAMPLES, density: str = "gaussian",
             threads: int | None = None) -> dict:
    """Train, code and measure one rate point.  Rate point k has its own seeds, so the result does not
    depend on which other points run, or on whether they run in parallel."""
    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.time()
    torch.manual_seed(1000 * seed + k)
    rng = np.random.default_rng([seed, k])
    test = _test_set(source, seed, held_out)
    # Smaller batches where one step costs most: the VQ's soft assignment touches every codeword for
    # every sub-vector, and Leech's closest-point search is 3x E8's per sample.  2,048 VQ sub-vectors
    # and 341 Leech blocks per step are still plenty for these few parameters.
    batch = {"vq": 4096}.get(method, 8192 if (method == "ltc" and lattice == "leech") else RunConfig.batch_samples)
    cfg = RunConfig(steps=steps, batch_samples=batch)
    model = build(method, source, lattice, rate, density)
    lam = lagrangian(source, rate)
    train(model, source, lam, cfg, rng)
    if isinstance(model, (ScalarCode, LatticeCode)):
        bank = hard_bank(model, source, cfg, rng)  # the encoder is frozen from here on
        finetune_hard(model, source, lam, cfg, rng, bank)
        if isinstance(model, ScalarCode):
            fit_density(model, bank)
        if isinstance(model, LatticeCode) and context and model.density is None:
            fit_context(model, source, cfg, rng, bank)
    model.eval()
    x_hat, nbytes = model.code(torch.from_numpy(test))
    return _row(source, test, x_hat.numpy(), nbytes, {
        "method": method, "lattice": lattice if method == "ltc" else ("learned8" if method == "learned" else "-"),
        "target_rate": rate, "lambda": lam, "train_steps": cfg.steps, "seconds": time.time() - t0,
        "context": bool(getattr(model, "context", None) is not None),
        **({"density": density} if method == "ltc" else {})})


def run(source: str, method: str, lattice: str, quick: bool, seed: int = 0, context: bool = True,
        steps: int | None = None, held_out: int = HELD_OUT_SAMPLES, rates: list[float] | None = None,
        density: str = "gaussian", jobs: int = 1, pool=None) -> list[dict]:
    """Every rate point of one source and method; ``jobs`` > 1 (0: one per rate point) trains rate
    points in parallel processes of one thread each, which is how the bench uses 2 cores: its small
    tensors leave a second thread of one process mostly idle.  A ``pool`` (of such processes) given
    by the caller is used instead, so that many configurations share workers already started."""
    rates = rates or target_rates(source, quick)
    if method == "klt":
        rng = np.random.default_rng(seed)
        test = _test_set(source, seed, held_out)
        return [dict(r, lattice="-", target_rate=t) for r, t in zip(klt_points(source, rates, rng, test), rates)]
    steps = steps or TRAIN_STEPS
    args = [(source, method, lattice, rate, k, steps, seed, context, held_out, density) for k, rate in enumerate(rates)]
    if pool is not None:
        return [f.result() for f in [pool.submit(run_rate, *a, threads=1) for a in args]]
    jobs = jobs or len(rates)
    if jobs <= 1 or len(rates) == 1:
        return [run_rate(*a) for a in args]
    with worker_pool(min(jobs, len(rates))) as ex:
        return run(source, method, lattice, quick, seed, context, steps, held_out, rates, density, pool=ex)


def worker_pool(workers: int):
    """Processes for rate points: spawned (a forked torch can deadlock), one thread each."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def configurations(sources=S.SOURCES) -> list[tuple[str, str, str]]:
    out = []
    for source in sources:
        out.append((source, "klt", "-"))
        out.append((source, "ntc", "-"))
        for lat in LATTICES[1:]:
            out.append((source, "ltc", lat))
        out.append((source, "learned", "-"))
        out.append((source, "vq", "-"))
    return out


def _config_key(source: str, method: str, lattice: str) -> tuple[str, str, str]:
    """A configuration as :func:`configurations` names it (rows name the learned lattice; configs "-")."""
    return source, method, lattice if method == "ltc" else "-"


def _config_seconds(rows: list[dict]) -> float:
    """Wall time of one source × method: measured around it, else its slowest rate point."""
    measured = [r["config_seconds"] for r in rows if "config_seconds" in r]
    return max(measured) if measured else max(r.get("seconds", 0.0) for r in rows)


def _timing_table(rows: list[dict], quick: bool) -> list[str]:
    """Wall time per source and method (all its rate points), against the budgets: 2 minutes for each
    with ``--quick``, one hour for all of them in the full bench."""
    keys = sorted({(r["source"], r["method"], r["lattice"]) for r in rows if r["method"] != "klt"},
                  key=lambda k: (S.SOURCES.index(k[0]), METHODS.index(k[1]), k[2]))
    if not keys:
        return []
    seconds = {k: _config_seconds([r for r in rows if (r["source"], r["method"], r["lattice"]) == k]) for k in keys}
    if quick:
        budget = "the quick budget is 2 minutes for each."
    else:
        total = sum(seconds.values()) / 60
        budget = (f"the full bench's budget is one hour for all of them: {len(keys)} take {total:.1f} min "
                  f"({'met' if total <= 60 else '**not met**'}).")
    lines = ["## Wall time per source and method", "",
             "All rate points of a source and method, trained in parallel processes; " + budget,
             "Rows without a measured total show the slowest rate point (a lower bound).", "",
             "| source | method | lattice | seconds |" + (" ≤ 120 s |" if quick else ""),
             "|---|---|---|---|" + ("---|" if quick else "")]
    for source, method, lat in keys:
        sub = [r for r in rows if (r["source"], r["method"], r["lattice"]) == (source, method, lat)]
        sec = seconds[source, method, lat]
        mark = "" if "config_seconds" in sub[0] else " (slowest point)"
        lines.append(f"| {source} | {method} | {lat} | {sec:.0f}{mark} |" +
                     (f" {'yes' if sec <= 120 else '**no**'} |" if quick else ""))
    return lines + [""]


def write_report(rows: list[dict], quick: bool, command: str, seconds: float, date: str | None = None,
                 host: str | None = None, jobs: int = 1) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = date or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {"command": command, "date": stamp, "machine": host or (
        f"{machine()}, rate points in parallel processes of 1 thread" if jobs != 1
        else f"{machine()}, {torch.get_num_threads()} thread(s)"),
            "quick": quick, "seconds": seconds}
    stem = results_stem(quick)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Synthetic sources: rate–distortion against known limits",
        "",
        f"Command: `{command}` · {stamp} · {meta['machine']} · {seconds / 60:.1f} min",
        "",
        "Rates from the bytes written by the coders on ≥ 100,000 held-out samples (sawbridge: realizations).",
        "Gap = 10·log10(MSE / D(R)) at the measured rate; for the sawbridge the bound is the entropy–distortion",
        "function H(D) and the gap in bits is R − H(D).",
        "",
    ]
    for source in S.SOURCES:
        sub = [r for r in rows if r["source"] == source]
        if not sub:
            continue
        unit = sub[0]["rate_unit"]
        runs: dict[str, list[str]] = {}
        for r in sub:
            run = r.get("run", {"command": command, "when": stamp})
            runs.setdefault(run["command"], []).append(run["when"])
        made = "; ".join(f"`{c}` ({min(w)}{' – ' + max(w) if max(w) != min(w) else ''})" for c, w in runs.items())
        lines += [f"## {source}", "", f"Rows from {made}.", "",
                  f"| method | lattice | rate ({unit}) | MSE | bound MSE | gap (dB) | gap (bits) |",
                  "|---|---|---|---|---|---|---|"]
        for r in sub:
            lines.append(f"| {r['method']} | {r['lattice']} | {r['rate_bits']:.3f} | {r['mse']:.5f} | "
                         f"{r['bound_mse']:.5f} | {r['gap_db']:+.3f} | {r['gap_bits']:+.3f} |")
        lines.append("")
    lines += _timing_table(rows, quick)
    lines += ["## Targets (iid N(0,1), rates 1–3 bits/sample)", "", "| method | target | measured gaps (dB) | met |",
              "|---|---|---|---|"]
    targets = [("ntc", "-", (1.45, 1.65)), ("ltc", "e8", (None, 0.95)), ("ltc", "bw16", (None, 0.80)),
               ("ltc", "leech", (None, 0.65))]
    for method, lat, (lo, hi) in targets:
        sub = [r for r in rows if r["source"] == "gaussian" and r["method"] == method and r["lattice"] == lat
               and 0.9 <= r["rate_bits"] <= 3.3]
        if not sub:
            continue
        gaps = [r["gap_db"] for r in sub]
        ok = all((lo is None or g >= lo) and g <= hi for g in gaps)
        want = f"{lo}–{hi} dB" if lo is not None else f"≤ {hi} dB"
        lines.append(f"| {method} {lat if lat != '-' else ''} | {want} | {', '.join(f'{g:.3f}' for g in gaps)} | "
                     f"{'yes' if ok else '**no**'} |")
    saw = [r for r in rows if r["source"] == "sawbridge"]
    if saw:
        klt = [r for r in saw if r["method"] == "klt"]
        lines += ["", "Sawbridge: learned codecs within 0.1 bit/realization of H(D), and the KLT coder's gap at the",
                  "same target rate:", ""]
        for r in saw:
            # (a point that codes nothing, at the rate-0 end of H(D), does not count)
            if r["method"] in ("ntc", "ltc", "learned", "vq") and r["gap_bits"] <= 0.1 and r["rate_bits"] >= 0.5:
                k = [x for x in klt if x["target_rate"] == r["target_rate"]]
                kg = f"{k[0]['gap_bits']:.3f}" if k else "?"
                lines.append(f"- {r['method']} {r['lattice']} at {r['rate_bits']:.2f} bits: gap {r['gap_bits']:.3f} bits; "
                             f"KLT gap {kg} bits")
    lines += ["", f"![rate–distortion]({stem}.png)", ""]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    present = [s for s in S.SOURCES if any(r["source"] == s for r in rows)]
    fig, axes = plt.subplots(2, len(present), figsize=(5 * len(present), 8), squeeze=False)
    for col, source in enumerate(present):
        top, bottom = axes[0][col], axes[1][col]
        sub = [r for r in rows if r["source"] == source]
        rmax = max(r["rate_bits"] for r in sub) * 1.1
        grid = np.linspace(0.05 if source != "sawbridge" else 0.3, rmax, 200)
        top.plot(grid, [10 * math.log10(S.bound_distortion(source, g)) for g in grid], "k-", lw=2,
                 label="H(D)" if source == "sawbridge" else "R(D)")
        for method, lat in sorted({(r["method"], r["lattice"]) for r in sub}):
            pts = sorted((r["rate_bits"], 10 * math.log10(r["mse"]), r["gap_db"]) for r in sub
                         if r["method"] == method and r["lattice"] == lat)
            label = f"{method} {lat}" if lat != "-" else method
            top.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=label)
            bottom.plot([p[0] for p in pts], [p[2] for p in pts], "o-", ms=3, label=label)
        top.set_title(source)
        top.set_ylabel("distortion (dB)")
        bottom.set_ylabel("gap to the bound at equal rate (dB)")
        for ax in (top, bottom):
            ax.set_xlabel(sub[0]["rate_unit"])
            ax.grid(alpha=0.3)
        bottom.set_ylim(bottom=0)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=S.SOURCES, default="gaussian")
    p.add_argument("--method", choices=METHODS, default="ltc")
    p.add_argument("--lattice", choices=LATTICES, default="e8")
    p.add_argument("--quick", action="store_true", help="3–4 rate points per configuration (the full bench: 6)")
    p.add_argument("--json", action="store_true", help="one JSON object per rate point on stdout")
    p.add_argument("--threads", type=int, default=int(os.environ.get("LTCODEC_THREADS", "1")))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=0,
                   help="rate points trained in parallel processes (default 0: one process per rate point)")
    p.add_argument("--no-context", action="store_true", help="LTC: plain per-coordinate Gaussians")
    p.add_argument("--density", choices=("gaussian", "nonparametric"), default="gaussian",
                   help="LTC: Gaussian per block coordinate (+ context model), or a learned non-parametric one")
    p.add_argument("--all", action="store_true",
                   help="every source and method; writes bench/results/synthetic.* (with --quick: synthetic-quick.*)")
    p.add_argument("--sources", nargs="*", default=list(S.SOURCES), help="with --all: these sources only")
    p.add_argument("--methods", nargs="*", default=list(METHODS), help="with --all: these methods only")
    p.add_argument("--lattices", nargs="*", default=list(LATTICES[1:]), help="with --all: these LTC lattices only")
    p.add_argument("--report", action="store_true",
                   help="rewrite the Markdown and plot from the saved JSON (with --quick: the quick bench's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report:
        saved = json.loads((RESULTS / f"{results_stem(args.quick)}.json").read_text())
        m = saved["meta"]
        write_report(saved["rows"], m["quick"], m["command"], m["seconds"], date=m["date"], host=m["machine"])
        return
    if args.all:
        t0 = time.time()
        configs = [c for c in configurations(args.sources) if c[1] in args.methods
                   and (c[1] != "ltc" or c[2] in args.lattices)]
        # Rows of configurations not rerun are kept from the previous report, so the bench can be run
        # piece by piece.
        previous = RESULTS / f"{results_stem(args.quick)}.json"
        kept = []
        if previous.exists():
            rerun = {_config_key(*c) for c in configs}
            kept = [r for r in json.loads(previous.read_text())["rows"]
                    if _config_key(r["source"], r["method"], r["lattice"]) not in rerun]
        rows = []
        cmd = "python -m bench.synthetic --all" + (" --quick" if args.quick else "") + "".join(
            f" --{name} {' '.join(chosen)}" for name, chosen, every in (
                ("sources", args.sources, S.SOURCES), ("methods", args.methods, METHODS),
                ("lattices", args.lattices, LATTICES[1:])) if list(chosen) != list(every))
        # One pool of workers serves every configuration (default: one per rate point of the widest).
        workers = args.jobs or max(len(target_rates(c[0], args.quick)) for c in configs)
        pool = worker_pool(workers) if workers > 1 else None
        for n, (source, method, lat) in enumerate(configs, 1):
            t1 = time.time()
            got = run(source, method, lat if lat != "-" else "e8", args.quick, args.seed, context=not args.no_context,
                      jobs=args.jobs, pool=pool)
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            took = time.time() - t1
            rows += [dict(r, run={"command": cmd, "when": stamp}, config_seconds=took) for r in got]
            print(f"[{n}/{len(configs)}] {source} {method} {lat}: " + ", ".join(
                f"{r['rate_bits']:.2f}→{r['gap_db']:+.2f} dB" for r in got) + f" ({took:.0f} s)",
                file=sys.stderr, flush=True)
            write_report(kept + rows, args.quick, cmd, time.time() - t0, jobs=workers)
        if pool is not None:
            pool.shutdown()
        return
    rows = run(args.source, args.method, args.lattice, args.quick, args.seed, context=not args.no_context,
               density=args.density, jobs=args.jobs)
    for r in rows:
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{r['source']:9s} {r['method']:7s} {r['lattice']:8s} rate {r['rate_bits']:.3f} {r['rate_unit']}"
                  f"  mse {r['mse']:.5f}  bound {r['bound_mse']:.5f}  gap {r['gap_db']:+.3f} dB"
                  f"  ({r['gap_bits']:+.3f} bits)", flush=True)


if __name__ == "__main__":
    main()
