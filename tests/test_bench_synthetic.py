"""The synthetic bench: its bounds are the published/derived ones, and every method codes for real."""

import math

import pytest

from bench import sources as S
from bench import synthetic as B


def test_gaussian_and_sawbridge_bounds():
    assert S.bound_distortion("gaussian", 2.0) == pytest.approx(1 / 16)
    assert S.sawbridge_entropy(1 / 24) == pytest.approx(2.0, abs=1e-9)
    assert S.sawbridge_entropy(0.03) == pytest.approx(2.5121, abs=1e-4)  # DESIGN-NOTES §2
    assert S.sawbridge_entropy(1 / 6) == 0.0
    assert S.bound_distortion("sawbridge", 3.0) == pytest.approx(1 / 48, rel=1e-6)


@pytest.mark.slow
def test_shipped_laplace_table_is_what_blahut_arimoto_computes():
    import numpy as np

    r, d = S.laplace_blahut_arimoto()
    r0, d0 = S._laplace_table()
    assert np.allclose(r, r0, rtol=1e-6) and np.allclose(d, d0, rtol=1e-6)


def test_laplace_curve_meets_the_shannon_lower_bound_at_high_rate():
    h = math.log2(2 * math.e / math.sqrt(2))  # differential entropy of the unit-variance Laplacian
    for rate in (2.5, 3.0):
        slb = 2 ** (2 * (h - rate)) / (2 * math.pi * math.e)
        assert S.bound_distortion("laplace", rate) == pytest.approx(slb, rel=0.01)
    assert S.bound_distortion("laplace", 1.0) < S.bound_distortion("gaussian", 1.0)


def test_ar1_waterfilling_is_below_the_iid_bound_and_inverts():
    d = S.bound_distortion("ar1", 1.0)
    assert d < 0.25 * (1 - 0.9**2) * 1.5
    assert S.bound_rate("ar1", d) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("source,method,lattice", [
    ("gaussian", "ltc", "e8"), ("gaussian", "ntc", "-"), ("gaussian", "vq", "-"), ("ar1", "learned", "-"),
    ("sawbridge", "klt", "-"), ("laplace", "ltc", "leech"),
])
def test_every_method_runs_and_reports_real_bytes(source, method, lattice):
    rows = B.run(source, method, lattice if lattice != "-" else "e8", quick=True, steps=30, held_out=3000,
                 rates=[2.0], density="nonparametric" if source == "laplace" else "gaussian")
    assert len(rows) == 1
    r = rows[0]
    for key in ("rate_bits", "mse", "bound_mse", "gap_db", "coded_bytes", "samples"):
        assert key in r
    assert r["coded_bytes"] > 0 and r["samples"] >= 3000
    per = r["samples"]
    assert r["rate_bits"] == pytest.approx(8 * r["coded_bytes"] / per)
    assert r["gap_db"] > 0  # nothing beats the rate–distortion function


def test_rate_points_in_parallel_processes_give_the_same_rows():
    kw = dict(quick=True, steps=10, held_out=2000, rates=[1.0, 2.0])
    one = B.run("gaussian", "ltc", "d4", jobs=1, **kw)
    two = B.run("gaussian", "ltc", "d4", jobs=2, **kw)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(one) == strip(two)


def test_block_context_one_coordinate_at_a_time_matches_the_whole_block():
    import torch

    ctx = B.BlockContext(8)
    torch.nn.init.normal_(ctx.w2, std=0.1)
    x, base = torch.randn(50, 8), torch.randn(8)
    mean, log_scale = ctx(x, base)
    for i in range(8):
        m, s = ctx.coordinate(x, base, i)
        assert torch.allclose(m, mean[:, i], atol=1e-6) and torch.allclose(s, log_scale[:, i], atol=1e-6)
