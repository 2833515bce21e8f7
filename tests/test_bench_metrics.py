"""BD-rate and image metrics against cases with known answers."""

import math

import numpy as np
import pytest

from bench.bdrate import bd_psnr, bd_rate, bd_rate_segments
from bench.metrics import ms_ssim, psnr


def test_bd_rate_of_a_uniformly_cheaper_codec_is_its_rate_ratio():
    psnrs = [28.0, 31.0, 34.0, 37.0]
    anchor = [0.2, 0.45, 0.9, 1.7]
    assert bd_rate(anchor, psnrs, [0.8 * r for r in anchor], psnrs) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(anchor, psnrs, [1.5 * r for r in anchor], psnrs) == pytest.approx(50.0, abs=1e-9)
    assert bd_rate(anchor, psnrs, anchor, psnrs) == pytest.approx(0.0, abs=1e-12)


def test_bd_rate_on_log_linear_curves_with_different_sample_points():
    # quality = 10·log10(rate) + c: a 1 dB shift is a factor 10^(−1/10) in rate
    ra = np.geomspace(0.1, 2, 7)
    rt = np.geomspace(0.12, 1.8, 5)
    qa = 10 * np.log10(ra) + 30
    qt = 10 * np.log10(rt) + 31
    assert bd_rate(ra, qa, rt, qt) == pytest.approx((10 ** (-0.1) - 1) * 100, abs=1e-6)
    assert bd_psnr(ra, qa, rt, qt) == pytest.approx(1.0, abs=1e-6)


def test_bd_rate_segments_make_up_the_bd_rate_and_find_where_it_is_lost():
    psnrs = [26.0, 29.0, 32.0, 35.0, 38.0]
    anchor = [0.15, 0.3, 0.6, 1.1, 2.0]
    test_q = [27.0, 30.0, 33.0, 36.0]
    test = [0.25, 0.33, 0.62, 1.6]  # worst at the ends
    pieces = bd_rate_segments(anchor, psnrs, test, test_q)
    assert [p["from"] for p in pieces] == [27.0, 30.0, 33.0] and pieces[-1]["to"] == 36.0
    assert sum(p["share"] for p in pieces) == pytest.approx(1.0)
    total = math.exp(sum(p["share"] * math.log(p["ratio"]) for p in pieces)) - 1
    assert total * 100 == pytest.approx(bd_rate(anchor, psnrs, test, test_q), abs=1e-9)
    middle = pieces[1]["ratio"]
    assert middle < pieces[0]["ratio"] and middle < pieces[2]["ratio"]
    same = bd_rate_segments(anchor, psnrs, [0.9 * r for r in anchor], psnrs)
    assert all(p["ratio"] == pytest.approx(0.9) for p in same)
    assert bd_rate_segments([0.1, 0.2], [20, 22], [1, 2], [40, 42]) == []


def test_bd_rate_without_overlap_is_nan():
    assert math.isnan(bd_rate([0.1, 0.2], [20, 22], [1, 2], [40, 42]))


def test_psnr_and_ms_ssim_basics():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)  # ≥ 11 px at the coarsest of 5 scales
    assert psnr(a, a) == math.inf
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-9)
    b = np.clip(a.astype(int) + 4, 0, 255).astype(np.uint8)
    assert 30 < psnr(a, b) < 37
    c = np.clip(a.astype(int) + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert ms_ssim(a, c) < ms_ssim(a, b) < 1.0
