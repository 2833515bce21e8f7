"""Bjøntegaard delta rate (piecewise-cubic variant): average bitrate difference at equal quality.

BD-rate of a test curve against an anchor: log-rate is interpolated as a function of quality with a
monotone piecewise-cubic (PCHIP) interpolant on each curve, integrated over the overlapping quality
range, and the mean difference is turned into a percentage: negative means the test codec needs fewer
bits.  (Bjøntegaard, VCEG-M33, 2001; the piecewise-cubic form is the one of VCEG-AL22 / JVET-K0491.)
"""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = ["bd_rate", "bd_rate_rows", "bd_rate_segments", "bd_psnr"]


def _curve(rates, quality):
    """(quality, log rate) sorted by quality, for interpolating log rate as a function of quality."""
    return _sorted(quality, np.log(np.asarray(rates, dtype=np.float64)))


def _log_rate_curves(anchor_rates, anchor_quality, test_rates, test_quality):
    """Both curves' log rate as PCHIP functions of quality and the quality range they share, or None
    without overlap."""
    qa, la = _curve(anchor_rates, anchor_quality)
    qt, lt = _curve(test_rates, test_quality)
    lo, hi = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    if len(qa) < 2 or len(qt) < 2 or hi <= lo:
        return None
    return PchipInterpolator(qa, la), PchipInterpolator(qt, lt), qt, lo, hi


def bd_rate(anchor_rates, anchor_quality, test_rates, test_quality) -> float:
    """Percentage rate difference of test vs anchor at equal quality (NaN without overlap)."""
    curves = _log_rate_curves(anchor_rates, anchor_quality, test_rates, test_quality)
    if curves is None:
        return math.nan
    fa, ft, _, lo, hi = curves
    return (math.exp((ft.integrate(lo, hi) - fa.integrate(lo, hi)) / (hi - lo)) - 1) * 100


def bd_rate_segments(anchor_rates, anchor_quality, test_rates, test_quality) -> list[dict]:
    """Where a BD-rate comes from: the overlapping quality range cut at the test curve's points, and for
    each piece its share of the range (``share``) and the mean rate ratio of test to anchor over it
    (``ratio``, the exponential of the mean log difference).  The pieces make up :func:`bd_rate`
    exactly: ``exp(Σ share·log ratio) − 1``.  Empty without overlap."""
    curves = _log_rate_curves(anchor_rates, anchor_quality, test_rates, test_quality)
    if curves is None:
        return []
    fa, ft, qt, lo, hi = curves
    cuts = [lo, *[q for q in qt if lo < q < hi], hi]
    return [{"from": float(a), "to": float(b), "share": float((b - a) / (hi - lo)),
             "ratio": math.exp((ft.integrate(a, b) - fa.integrate(a, b)) / (b - a))}
            for a, b in zip(cuts[:-1], cuts[1:])]


def bd_rate_rows(anchor_rows: list[dict], test_rows: list[dict], lowest: int = 1) -> float:
    """:func:`bd_rate` of two curves given as rows of ``quality``, ``bpp`` and ``psnr``, from quality
    ``lowest`` up."""
    a = [r for r in anchor_rows if r["quality"] >= lowest]
    t = [r for r in test_rows if r["quality"] >= lowest]
    return bd_rate([r["bpp"] for r in a], [r["psnr"] for r in a], [r["bpp"] for r in t], [r["psnr"] for r in t])


def bd_psnr(anchor_rates, anchor_quality, test_rates, test_quality) -> float:
    """Average quality difference of test vs anchor at equal rate (dB for PSNR)."""
    lo, hi = max(np.log(np.asarray(anchor_rates)).min(), np.log(np.asarray(test_rates)).min()), \
        min(np.log(np.asarray(anchor_rates)).max(), np.log(np.asarray(test_rates)).max())
    if hi <= lo:
        return math.nan
    fa = PchipInterpolator(*_sorted(np.log(anchor_rates), anchor_quality))
    ft = PchipInterpolator(*_sorted(np.log(test_rates), test_quality))
    return (ft.integrate(lo, hi) - fa.integrate(lo, hi)) / (hi - lo)


def _sorted(x, y):
    """x ascending with y alongside, repeated x dropped (PCHIP needs strictly increasing abscissae)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    o = np.argsort(x)
    x, y = x[o], y[o]
    keep = np.concatenate([[True], np.diff(x) > 0])
    return x[keep], y[keep]
