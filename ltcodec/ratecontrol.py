"""The quality search behind ``--bpp`` and ``--kbps``: a secant search on log-rate against quality.

A model's log-rate is close to linear in its (fractional) quality, about 0.3–0.4 per quality step, so
a secant search lands within a few tenths of a percent of a target in 2–4 trials where bisection needs
ten; once a trial lies on each side of the target, the search stays between them.  Callers measure a
trial cheaply (the ideal code lengths of the streams, not the range coder) and choose among the trials:
the nearest rate (audio) or the highest quality under a size (images).
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
    secant is flat (a rate that saturates).  Until the target is bracketed each step follows the secant
    through the last two trials; once a trial lies on each side, steps stay inside the bracket (regula
    falsi with the Illinois rule), so a curve far from linear — log-rate rises ever faster between the
    lowest qualities — cannot make the search overshoot back and forth until its trials run out.
    Returns every trial (quality → log error); the caller picks.
    """
    tried: dict[float, float] = {}
    ends: dict[str, list[float]] = {}  # "under" / "over": the bracket's ends as [quality, log error]

    def measure(q: float) -> tuple[float, str | None]:
        e = tried[q] = log_error(q)
        side = "under" if e < 0 else "over" if e > 0 else None
        if side and (side not in ends or (q > ends[side][0] if side == "under" else q < ends[side][0])):
            ends[side] = [q, e]
            return e, side
        return e, None

    q = snap_quality(start, top)
    e, _ = measure(q)
    previous: tuple[float, float] | None = None
    replaced = None
    for _ in range(trials):
        if accept(e):
            break
        if len(ends) == 2:
            (lo, e_lo), (hi, e_hi) = ends["under"], ends["over"]
            nq = snap_quality(lo - e_lo * (hi - lo) / (e_hi - e_lo), top)
            if nq in (lo, hi):
                nq = snap_quality((lo + hi) / 2, top)
        else:
            s = (e - previous[1]) / (q - previous[0]) if previous else slope
            nq = snap_quality(q - e / (s if s > 0.02 else slope), top)
        if nq in tried:  # the bracket is one grid step wide, or the search is held at 1 or ``top``
            break
        previous = (q, e)
        q = nq
        e, side = measure(q)
        if side is not None and len(ends) == 2:
            if side == replaced:  # Illinois: the end kept twice in a row weighs half as much
                ends["over" if side == "under" else "under"][1] /= 2
            replaced = side
    return tried
