"""The quality search behind ``--bpp`` and ``--kbps``: a secant search on log-rate against quality.

A model's log-rate is close to linear in its (fractional) quality, about 0.3–0.4 per quality step, so
a secant search lands within a few tenths of a percent of a target in 2–4 trials where bisection needs
ten.  Callers measure a trial cheaply (the ideal code lengths of the streams, not the range coder) and
choose among the trials: the nearest rate (audio) or the highest quality under a size (images).
"""

from __future__ import annotations

from typing import Callable

__all__ = ["QUALITY_STEP", "search_quality"]

#: Qualities are coded in 1/256 steps.
QUALITY_STEP = 1 / 256


def snap_quality(q: float, top: float) -> float:
    """``q`` clamped to 1 … ``top`` and rounded to the coded 1/256 grid."""
    return round(min(max(q, 1.0), top) / QUALITY_STEP) * QUALITY_STEP


def search_quality(log_error: Callable[[float], float], start: float, top: float, slope: float,
                   accept: Callable[[float], bool], trials: int) -> dict[float, float]:
    """Trials of ``log_error(q)`` = log(rate at q / target), from ``start``, until one is accepted.

    ``slope`` is the expected d log(rate)/d quality, used for the first step and whenever the measured
    secant is flat (a rate that saturates).  Each step aims at ``accept``'s window by way of the
    secant through the last two trials.  Returns every trial (quality → log error); the caller picks.
    """
    tried: dict[float, float] = {}

    def err(q: float) -> float:
        q = snap_quality(q, top)
        if q not in tried:
            tried[q] = log_error(q)
        return tried[q]

    q0 = snap_quality(start, top)
    if accept(err(q0)):
        return tried
    q1 = snap_quality(q0 - err(q0) / slope, top)
    for _ in range(trials):
        e0, e1 = err(q0), err(q1)
        if accept(e1) or q1 == q0:
            break
        s = (e1 - e0) / (q1 - q0)
        q0, q1 = q1, snap_quality(q1 - e1 / (s if s > 0.02 else slope), top)
        if q1 in tried and q0 in tried and abs(q1 - q0) <= QUALITY_STEP:
            break
    return tried
