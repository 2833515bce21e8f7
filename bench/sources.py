"""Synthetic sources with known rate–distortion (or entropy–distortion) limits.

* ``gaussian``  iid N(0, 1):           D(R) = 2^(−2R) per sample.
* ``laplace``   iid Laplacian, var 1:  D(R) from the Blahut–Arimoto algorithm on a fine grid.
* ``ar1``       Gauss–Markov, ρ = 0.9, unit variance, blocks of 16: reverse water-filling on the
                block covariance (the block's own R(D), per sample).
* ``sawbridge`` X(t) = t − 1{t ≥ U}, U ~ U[0, 1] (Wagner & Ballé 2020), on a grid of 256 points;
                distortion ∫(X − X̂)² dt, rate per realization, bound H(D) (DESIGN-NOTES §2).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["SOURCES", "sample", "dimension", "iid", "bound_distortion", "bound_rate", "sawbridge_entropy"]

SOURCES = ("gaussian", "laplace", "sawbridge", "ar1")
IID_BLOCK = 48  # divisible by every lattice dimension (1, 2, 4, 8, 16, 24)
SAWBRIDGE_POINTS = 256
AR1_RHO = 0.9
AR1_BLOCK = 16


def iid(source: str) -> bool:
    return source in ("gaussian", "laplace")


def dimension(source: str) -> int:
    return {"gaussian": IID_BLOCK, "laplace": IID_BLOCK, "ar1": AR1_BLOCK, "sawbridge": SAWBRIDGE_POINTS}[source]


def sample(source: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n vectors of the source's dimension, float32."""
    d = dimension(source)
    if source == "gaussian":
        x = rng.standard_normal((n, d))
    elif source == "laplace":
        x = rng.laplace(0.0, 1 / math.sqrt(2), (n, d))
    elif source == "ar1":
        x = np.empty((n, d))
        x[:, 0] = rng.standard_normal(n)
        innov = rng.standard_normal((n, d)) * math.sqrt(1 - AR1_RHO**2)
        for k in range(1, d):
            x[:, k] = AR1_RHO * x[:, k - 1] + innov[:, k]
    elif source == "sawbridge":
        t = (np.arange(d) + 0.5) / d
        u = rng.random((n, 1))
        x = t[None, :] - (t[None, :] >= u)
    else:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    return x.astype(np.float32)


def distortion(source: str, x: np.ndarray, x_hat: np.ndarray) -> float:
    """Mean squared error per sample; for the sawbridge ∫(X − X̂)² dt per realization."""
    return float(((x.astype(np.float64) - x_hat) ** 2).mean())


# -- bounds --------------------------------------------------------------------------------------------

def sawbridge_entropy(d: float) -> float:
    """H(D) of the sawbridge (bits per realization), the closed form of DESIGN-NOTES §2."""
    if d >= 1 / 6:
        return 0.0
    n = math.floor(1 / (6 * d))
    q = (n + math.sqrt(max(n * ((n + 1) * 6 * d - 1), 0.0))) / (n * (n + 1))
    r = max(1 - n * q, 0.0)
    h = -n * q * math.log2(q)
    if r > 0:
        h -= r * math.log2(r)
    return h


LAPLACE_TABLE = Path(__file__).parent / "data" / "laplace_rd.csv"


@lru_cache(maxsize=None)
def _laplace_table() -> tuple[np.ndarray, np.ndarray]:
    """The Laplacian R(D) curve computed once by :func:`laplace_blahut_arimoto` and shipped as data
    (regenerate: ``python -m bench.sources``)."""
    if not LAPLACE_TABLE.exists():
        return laplace_blahut_arimoto()
    a = np.loadtxt(LAPLACE_TABLE, delimiter=",", comments="#")
    return a[:, 0], a[:, 1]


def laplace_blahut_arimoto(points: int = 481, half_width: float = 8.0, betas: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """(rates, distortions) of the unit-variance Laplacian by Blahut–Arimoto on a grid."""
    x = np.linspace(-half_width, half_width, points)
    b = 1 / math.sqrt(2)
    p = np.exp(-np.abs(x) / b)
    p /= p.sum()
    d = (x[:, None] - x[None, :]) ** 2
    rates, dists = [], []
    q = np.full(points, 1 / points)
    def channel(s, q):
        logw = -s * d + np.log(np.maximum(q, 1e-300))[None, :]
        logw -= logw.max(1, keepdims=True)
        w = np.exp(logw)
        return w / w.sum(1, keepdims=True)

    for s in np.geomspace(0.3, 3000, betas):
        for _ in range(300):
            q_new = p @ channel(s, q)
            if np.abs(q_new - q).max() < 1e-10:
                q = q_new
                break
            q = q_new
        w = channel(s, q)
        dist = float((p[:, None] * w * d).sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = float(np.nansum(p[:, None] * w * np.log2(np.where(w > 0, w / q[None, :], 1))))
        rates.append(rate)
        dists.append(dist)
    order = np.argsort(rates)
    return np.array(rates)[order], np.array(dists)[order]


def _ar1_eigenvalues() -> np.ndarray:
    k = np.arange(AR1_BLOCK)
    cov = AR1_RHO ** np.abs(k[:, None] - k[None, :])
    return np.linalg.eigvalsh(cov)


def _waterfill(lams: np.ndarray, rate: float) -> float:
    lo, hi = 1e-12, float(lams.max())
    for _ in range(200):
        theta = math.sqrt(lo * hi)
        r = np.maximum(0.0, 0.5 * np.log2(lams / theta)).mean()
        if r > rate:
            lo = theta
        else:
            hi = theta
    theta = math.sqrt(lo * hi)
    return float(np.minimum(theta, lams).mean())


def bound_distortion(source: str, rate: float) -> float:
    """The smallest achievable distortion at ``rate`` (per sample; sawbridge: per realization)."""
    if source == "gaussian":
        return 2.0 ** (-2 * rate)
    if source == "laplace":
        rates, dists = _laplace_table()
        if rate > rates[-1]:  # beyond the computed curve: Shannon lower bound is tight at high rate
            return float(math.exp(2 * (math.log(2 * math.e / math.sqrt(2)) - rate * math.log(2))) / (2 * math.pi * math.e))
        return float(np.exp(np.interp(rate, rates, np.log(dists))))
    if source == "ar1":
        return _waterfill(_ar1_eigenvalues(), rate)
    if source == "sawbridge":
        lo, hi = 1e-9, 1 / 6
        for _ in range(200):
            mid = math.sqrt(lo * hi)
            if sawbridge_entropy(mid) > rate:
                lo = mid
            else:
                hi = mid
        return hi
    raise ValueError(source)


def bound_rate(source: str, dist: float) -> float:
    """The smallest rate achieving ``dist`` (per sample; sawbridge: bits per realization)."""
    if source == "sawbridge":
        return sawbridge_entropy(dist)
    lo, hi = 0.0, 30.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if bound_distortion(source, mid) > dist:
            lo = mid
        else:
            hi = mid
    return hi


if __name__ == "__main__":
    r, d = laplace_blahut_arimoto()
    LAPLACE_TABLE.parent.mkdir(exist_ok=True)
    header = "Laplacian (unit variance) R(D) under MSE by Blahut-Arimoto: 481 points on [-8, 8], 36 slopes\n" \
             "written by: python -m bench.sources\nrate_bits,distortion"
    np.savetxt(LAPLACE_TABLE, np.stack([r, d], 1), delimiter=",", header=header, fmt="%.9g")
    print(f"wrote {LAPLACE_TABLE} ({len(r)} points)")
