"""Lattice quantizers: published second moments, exact closest points, training paths."""

import itertools

import pytest
import torch

from ltcodec.lattice import (LATTICES, LearnedLattice, _closest_dn, golay_basis, golay_code, get_lattice,
                             lower_triangular_basis, reed_muller_1_4)

FIXED = ["z8", "a2", "d4", "e8", "bw16", "leech"]
SAMPLES = {"z8": 40000, "a2": 80000, "d4": 60000, "e8": 40000, "bw16": 20000, "leech": 6000}


@pytest.mark.parametrize("name", FIXED)
def test_normalized_second_moment_matches_published_value(name):
    lat = get_lattice(name)
    nsm, stderr = lat.nsm_monte_carlo(SAMPLES[name], seed=1)
    assert abs(nsm / lat.published_nsm - 1) < 0.01
    assert stderr / nsm < 0.003  # the estimate is precise enough for the 1% check to mean something


@pytest.mark.parametrize("name", FIXED)
def test_generator_is_lower_triangular_with_unit_volume(name):
    g = get_lattice(name).generator
    assert torch.equal(g, torch.tril(g))
    assert (torch.diagonal(g) > 0).all()
    assert torch.prod(torch.diagonal(g)).item() == pytest.approx(1.0, abs=1e-12)


def _brute_force(lat, x, radius):
    """Closest point by enumerating integer coordinates around the Babai point."""
    g = lat.generator
    u0 = torch.round(torch.linalg.solve_triangular(g, x.T.double(), upper=False).T)
    offs = torch.tensor(list(itertools.product(range(-radius, radius + 1), repeat=lat.dim)), dtype=torch.float64)
    cand = (u0[:, None, :] + offs[None]) @ g.T
    d = ((cand - x[:, None, :].double()) ** 2).sum(-1)
    return cand[torch.arange(x.shape[0]), d.argmin(1)], d.min(1).values


@pytest.mark.parametrize("name,radius", [("z8", 1), ("a2", 3), ("d4", 2)])
def test_closest_point_agrees_with_brute_force(name, radius):
    lat = get_lattice(name)
    x = torch.randn(300, lat.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    q = lat.closest(x)
    _, dbest = _brute_force(lat, x, radius)
    assert torch.allclose(((q - x) ** 2).sum(-1), dbest, atol=1e-9)


def _e8_minimal_vectors():
    vecs = []
    for i, j in itertools.combinations(range(8), 2):
        for si, sj in itertools.product((1, -1), repeat=2):
            v = [0.0] * 8
            v[i], v[j] = si, sj
            vecs.append(v)
    for signs in itertools.product((0.5, -0.5), repeat=8):
        if sum(s < 0 for s in signs) % 2 == 0:
            vecs.append(list(signs))
    return torch.tensor(vecs, dtype=torch.float64)


def test_e8_closest_point_is_certified_by_its_240_voronoi_relevant_vectors():
    lat = get_lattice("e8")
    mins = _e8_minimal_vectors()
    assert mins.shape == (240, 8)
    x = torch.randn(2000, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    q = lat.closest(x * lat.raw_scale) / lat.raw_scale
    d = ((x - q) ** 2).sum(-1)
    d_nb = ((x[:, None, :] - q[:, None, :] - mins[None]) ** 2).sum(-1).min(1).values
    assert (d <= d_nb + 1e-12).all()
    # and q is in E8: all-integer or all-half-integer coordinates with an even sum
    frac = torch.remainder(q * 2, 2)
    assert ((frac == 0).all(1) | (frac == 1).all(1)).all()
    assert (torch.remainder(q.sum(1), 2) == 0).all()


def _naive_coset_decoder(x, code, a):
    """Closest point of ∪_c (a·c + 2a·D_n) by decoding every coset separately."""
    c = code.double()
    shifted = (x[:, None, :] - a * c[None]) / (2 * a)
    pts = _closest_dn(shifted) * 2 * a + a * c[None]
    d = ((pts - x[:, None, :]) ** 2).sum(-1)
    best = d.argmin(1)
    return pts[torch.arange(x.shape[0]), best], d.min(1).values


def test_barnes_wall_decoder_matches_naive_coset_search():
    lat = get_lattice("bw16")
    x = torch.randn(400, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 2
    raw = lat._closest_raw(x)
    _, d = _naive_coset_decoder(x, reed_muller_1_4(), 1.0)
    assert torch.allclose(((raw - x) ** 2).sum(-1), d, atol=1e-9)


def test_leech_decoder_matches_naive_search_over_both_cosets():
    lat = get_lattice("leech")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(120, 24, dtype=torch.float64, generator=g) * 4
    # and points halfway between two lattice points: ties, where either is a right answer
    u = torch.randint(-3, 4, (2, 60, 24), generator=g)
    x = torch.cat([x, (lat.raw_generator_int.double() @ u.double().unsqueeze(-1)).squeeze(-1).mean(0)])
    raw = lat._closest_raw(x)
    v = torch.ones(24, dtype=torch.float64)
    v[0] = -3
    _, d0 = _naive_coset_decoder(x, golay_code(), 2.0)
    _, d1 = _naive_coset_decoder(x - v, golay_code(), 2.0)
    assert torch.allclose(((raw - x) ** 2).sum(-1), torch.minimum(d0, d1), atol=1e-9)
    # decoded points are lattice points: integer coordinates in the lattice basis
    u = torch.linalg.solve_triangular(lat.raw_generator_int.double(), raw.T, upper=False)
    assert torch.allclose(u, torch.round(u), atol=1e-9)


def test_golay_and_reed_muller_weight_enumerators():
    w = golay_code().sum(1).bincount(minlength=25)
    assert {k: int(w[k]) for k in range(25) if w[k]} == {0: 1, 8: 759, 12: 2576, 16: 759, 24: 1}
    w = reed_muller_1_4().sum(1).bincount(minlength=17)
    assert {k: int(w[k]) for k in range(17) if w[k]} == {0: 1, 8: 30, 16: 1}


def test_golay_basis_generates_the_whole_code_in_its_mog_order():
    basis = golay_basis().long()
    msgs = (torch.arange(4096)[:, None] >> torch.arange(12)) & 1
    spanned = {tuple(w) for w in ((msgs @ basis) % 2).tolist()}
    assert spanned == {tuple(w) for w in golay_code().long().tolist()}
    # MOG rule: every column has the parity of the top row
    words = golay_code().long().reshape(4096, 6, 4)
    col_par = words.sum(-1) % 2
    top_par = words[:, :, 0].sum(-1) % 2
    assert bool((col_par == top_par[:, None]).all())


def test_hermite_basis_spans_the_same_lattice():
    gens = [[2, 0], [0, 2], [1, 1]]  # D2 scaled: checkerboard
    b = lower_triangular_basis(gens, 2)
    assert b[0][1] == 0 and b[0][0] > 0 and b[1][1] > 0
    assert b[0][0] * b[1][1] == 2


@pytest.mark.parametrize("name", FIXED)
def test_coordinates_round_trip_and_points_near_lattice_points_decode_to_them(name):
    lat = get_lattice(name)
    u = torch.randint(-5, 6, (200, lat.dim), generator=torch.Generator().manual_seed(6))
    x = lat.points(u, torch.float64)
    assert torch.equal(lat.coordinates(x), u)
    noise = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7)) * 0.02
    assert torch.allclose(lat.closest(x + noise), x, atol=1e-9)


@pytest.mark.parametrize("name", ["e8", "leech"])
def test_training_paths(name):
    lat = get_lattice(name)
    x = (torch.randn(64, lat.dim) * 3).requires_grad_()
    y = lat.quantize(x, "ste")
    assert torch.allclose(y.detach(), lat.closest(x), atol=1e-5)  # x + (q − x) in float32
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    noise = lat.voronoi_noise((4000, lat.dim), generator=torch.Generator().manual_seed(8))
    # Voronoi-uniform: every sample's closest lattice point is the origin, mean is zero
    assert torch.equal(lat.closest(noise), torch.zeros_like(noise))
    assert noise.mean(0).abs().max() < 0.05


def test_learned_lattice_babai_is_exact_for_orthogonal_basis_and_trains():
    lat = LearnedLattice(4)
    x = torch.randn(100, 4) * 3
    assert torch.equal(lat.closest(x), torch.round(x))
    assert lat.orthogonality_penalty().item() == pytest.approx(0.0, abs=1e-12)
    xg = x.clone().requires_grad_()
    y = lat.quantize(xg, "ste")
    ((y - 0.3) ** 2).sum().backward()
    assert lat.lower.grad is not None and lat.log_diag.grad is not None
    assert torch.allclose(xg.grad, 2 * (y.detach() - 0.3))  # straight-through: identity for the input
    with torch.no_grad():
        lat.lower[2, 0] = 0.7
    assert lat.orthogonality_penalty().item() > 0.1


def test_unknown_lattice_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown lattice"):
        get_lattice("e9")
    assert set(LATTICES) >= {"z", "a2", "d4", "e8", "bw16", "leech"}
