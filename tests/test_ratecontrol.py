"""The quality search behind --bpp and --kbps, on rate curves of known shape."""

import math

import pytest

from ltcodec.ratecontrol import QUALITY_STEP, search_quality


def curve(slope: float, at_one: float, cap: float = math.inf):
    """log-rate linear in quality (kbps at quality 1 = ``at_one``), saturating at ``cap``."""
    return lambda q: min(math.log(at_one) + slope * (q - 1), math.log(cap))


def search_recording(log_rate, target: float, start: float, slope: float, trials: int):
    """``search_quality`` towards ``target`` within 2%: its trials and the qualities in the order tried."""
    calls = []

    def log_error(q):
        calls.append(q)
        return log_rate(q) - math.log(target)

    return search_quality(log_error, start, 8.0, slope, lambda e: abs(e) < math.log(1.02), trials), calls


@pytest.mark.parametrize("slope", [0.2, 0.35, 0.6])
@pytest.mark.parametrize("target", [5.0, 11.0, 40.0])
def test_lands_within_tolerance_in_few_trials_whatever_the_slope(slope, target):
    rate = curve(slope, 4.0)
    tried, calls = search_recording(rate, target, 4.0, 0.35, 5)
    best = min(tried, key=lambda q: abs(tried[q]))
    reachable = math.log(4.0) <= math.log(target) <= rate(8.0)
    if reachable:
        assert abs(tried[best]) < math.log(1.02)
        assert len(calls) <= 4
    else:
        assert best == (1.0 if target < 4.0 else 8.0)
    assert len(calls) == len(set(calls))  # no quality is measured twice
    assert all(abs(q / QUALITY_STEP - round(q / QUALITY_STEP)) < 1e-9 and 1.0 <= q <= 8.0 for q in tried)


def test_a_saturating_rate_stops_at_the_top_quality():
    rate = curve(0.35, 4.0, cap=10.0)
    tried = search_quality(lambda q: rate(q) - math.log(30.0), 2.0, 8.0, 0.35, lambda e: abs(e) < 0.02, 6)
    assert 8.0 in tried
    assert len(tried) <= 5


def test_a_curve_far_from_linear_is_bracketed_not_overshot():
    """Log-rate of a stereo music clip between qualities 1 and 2, measured with real files (it rises
    ever faster: 1.34, 1.66, 2.62, 4.77, 7.64 kbps at 1, 1.25, 1.5, 1.75, 2), then 0.4 per quality."""
    qs = [1.0, 1.25, 1.5, 1.75, 2.0, 8.0]
    logs = [math.log(k) for k in (1.34, 1.664, 2.615, 4.766, 7.637)] + [math.log(7.637) + 0.4 * 6]

    def log_rate(q):
        for (a, la), (b, lb) in zip(zip(qs, logs), zip(qs[1:], logs[1:])):
            if q <= b:
                return la + (lb - la) * (q - a) / (b - a)

    for target in (2.0, 3.0, 4.0, 5.0, 6.0, 7.0):
        tried, calls = search_recording(log_rate, target, 1.207, 0.44, 6)
        best = min(tried, key=lambda q: abs(tried[q]))
        assert abs(tried[best]) < math.log(1.02), (target, tried)
        for i, q in enumerate(calls):  # once bracketed, every trial lies inside the bracket
            under = [p for p in calls[:i] if tried[p] < 0]
            over = [p for p in calls[:i] if tried[p] > 0]
            if under and over:
                assert max(under) < q < min(over), (target, calls)
