"""The box code: exact round trips for every lattice, real bits close to the box likelihood."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from ltcodec.boxcode import BoxCoder, ChannelTables, CodingError, LatticeCodingSpec, ScaleTables, level_of_scale
from ltcodec.entropy import box_likelihood
from ltcodec.lattice import LearnedLattice, get_lattice


def _coder(lat, lmin=-40, lmax=40):
    spec = LatticeCodingSpec.from_lattice(lat)
    return BoxCoder(spec, ScaleTables.build(lmin, lmax, spec.fractions())), spec


@pytest.mark.parametrize("name", ["z", "z8", "a2", "d4", "e8", "bw16", "leech"])
def test_round_trip_is_exact_and_rate_matches_box_likelihood(name):
    lat = get_lattice(name)
    coder, spec = _coder(lat)
    rng = np.random.default_rng(0)
    blocks = 12000 // lat.dim
    sig = 2 ** rng.uniform(-3, 3.5, size=(blocks, lat.dim))
    x = lat.closest(torch.from_numpy(rng.normal(size=sig.shape) * sig))
    u = lat.coordinates(x).numpy()
    levels = level_of_scale(sig)
    words = coder.encode(u, levels)
    assert np.array_equal(coder.decode(words, levels), u)
    ideal = -torch.log2(box_likelihood(x, lat.diagonal, torch.from_numpy(2.0 ** (levels / 8)))).sum().item()
    bits = 32 * len(words)
    assert ideal <= bits + 64  # real bits cannot beat the model by more than the final word
    assert bits < ideal * (1.003 if spec.exact else 1.01) + 64


@pytest.mark.parametrize("name", ["z", "e8", "leech"])
def test_ideal_bits_predict_the_stream_size_without_coding(name):
    lat = get_lattice(name)
    coder, _ = _coder(lat, -16, 16)  # narrow tables: the largest values escape
    rng = np.random.default_rng(2)
    sig = 2 ** rng.uniform(-3, 3.5, size=(4000 // lat.dim, lat.dim))
    u = lat.coordinates(lat.closest(torch.from_numpy(rng.normal(size=sig.shape) * sig * 3))).numpy()
    levels = np.clip(level_of_scale(sig), -16, 16)
    u[0, 0] = 10**6  # an escape of its own
    bits = 32 * len(coder.encode(u, levels))
    ideal = coder.ideal_bits(u, levels)
    assert ideal <= bits <= ideal * 1.001 + 64


def test_ideal_bits_of_channel_tables_include_escapes():
    rng = np.random.default_rng(3)
    pmf = np.exp(-0.5 * (np.arange(-20, 21)[None] / np.array([[1.0], [3.0], [0.5]])) ** 2)
    tables = ChannelTables.from_pmfs(pmf / pmf.sum(1, keepdims=True), -20)
    z = np.round(rng.normal(size=(3, 3000)) * np.array([[1.0], [3.0], [0.5]])).astype(np.int64)
    z[1, 5] = 5000
    z[2, 7] = -77
    bits = 32 * len(tables.encode(z))
    ideal = tables.ideal_bits(z)
    assert np.array_equal(tables.decode(tables.encode(z), 3000), z)
    assert ideal <= bits <= ideal * 1.001 + 64


def test_exact_specs_for_the_fixed_lattices():
    for name in ["z8", "d4", "e8", "bw16", "leech"]:
        assert LatticeCodingSpec.from_lattice(get_lattice(name)).exact
    assert LatticeCodingSpec.from_lattice(get_lattice("e8")).fractions() == [
        Fraction(-1, 2), Fraction(-1, 4), Fraction(0), Fraction(1, 4)]


def test_far_outliers_use_the_escape_code():
    lat = get_lattice("e8")
    coder, _ = _coder(lat, -16, 16)
    u = np.zeros((3, 8), dtype=np.int64)
    u[0, 3] = 10**6
    u[1, 0] = -(10**9)
    u[2, 7] = 12345
    levels = np.full(u.shape, -8)
    assert np.array_equal(coder.decode(coder.encode(u, levels), levels), u)


def test_learned_lattice_codes_exactly():
    lat = LearnedLattice(8, init="e8")
    with torch.no_grad():
        lat.lower.add_(0.01 * torch.tril(torch.ones(8, 8), -1))
    coder, spec = _coder(lat)
    assert not spec.exact
    rng = np.random.default_rng(1)
    x = lat.closest(torch.from_numpy(rng.normal(size=(500, 8)) * 3).float())
    g = torch.from_numpy(spec.generator / 4096.0)
    u = torch.round(torch.linalg.solve_triangular(lat.generator.double(), x.double().T, upper=False).T).long().numpy()
    levels = np.full(u.shape, 12)
    assert np.array_equal(coder.decode(coder.encode(u, levels), levels), u)
    assert g.shape == (8, 8)


def test_tables_survive_serialization_and_reject_inconsistency():
    spec = LatticeCodingSpec.from_lattice(get_lattice("e8"))
    t = ScaleTables.build(-10, 10, spec.fractions())
    arrays = t.to_arrays()
    t2 = ScaleTables.from_arrays(arrays)
    assert np.array_equal(t2.freqs, t.freqs) and t2.fractions == t.fractions
    for f in t.fractions:
        for level in (-10, 0, 10):
            table = t.table(level, t.findex(f)).astype(np.int64) + 1
            assert table.sum() == 1 << 16
    arrays["tables.freqs"] = arrays["tables.freqs"][:100]
    with pytest.raises(CodingError):
        ScaleTables.from_arrays(arrays)


def test_decoding_garbage_does_not_hang_or_return_silently_wrong_shapes():
    lat = get_lattice("e8")
    coder, _ = _coder(lat)
    levels = np.zeros((50, 8), dtype=np.int64)
    try:
        out = coder.decode(np.zeros(0, dtype=np.uint32), levels)
    except CodingError:
        return
    assert out.shape == (50, 8)


@pytest.mark.parametrize("name", ["e8", "leech"])
def test_box_code_under_a_learned_nonparametric_density(name):
    """Lattice points coded with per-coordinate non-parametric densities: exact, at the modelled rate."""
    from ltcodec.boxcode import density_tables
    from ltcodec.entropy import FactorizedDensity

    torch.manual_seed(0)
    lat = get_lattice(name)
    dens = FactorizedDensity(lat.dim, init_scale=3.0)
    with torch.no_grad():  # give each coordinate its own shape
        for b in dens.biases:
            b.add_(torch.randn_like(b) * 0.3)
    spec = LatticeCodingSpec.from_lattice(lat)
    with torch.no_grad():
        def cdf(i, pts):
            v = torch.from_numpy(pts).float()[None].expand(lat.dim, -1)
            return torch.sigmoid(dens.cdf_logits(v)[i]).double().numpy()

        tables = density_tables(cdf, spec, radius=24)
    coder = BoxCoder(spec, tables, per_dimension=True)
    rng = np.random.default_rng(3)
    x = lat.closest(torch.from_numpy(rng.logistic(size=(4000 // lat.dim, lat.dim)) * 1.5))
    u = lat.coordinates(x).numpy()
    words = coder.encode(u, None)
    assert np.array_equal(coder.decode(words, None, blocks=u.shape[0]), u)
    with torch.no_grad():
        ideal = -torch.log2(dens.box_likelihood(x.float(), lat.diagonal)).sum().item()
    assert ideal <= 32 * len(words) + 64 and 32 * len(words) < ideal * 1.01 + 64


def test_refitted_tables_without_counts_keep_the_gaussian_masses():
    coder, spec = _coder(get_lattice("e8"), -16, 16)
    t = coder.tables
    again = t.refitted(np.zeros(t.freqs.size), prior=50.0)
    assert np.array_equal(again.starts, t.starts) and np.array_equal(again.radii, t.radii)
    assert np.array_equal(again.freqs, t.freqs)


@pytest.mark.parametrize("name", ["z", "e8"])
def test_tables_refitted_to_heavy_tails_code_them_in_fewer_bits_and_decode_exactly(name):
    lat = get_lattice(name)
    coder, spec = _coder(lat, -24, 24)
    rng = np.random.default_rng(1)

    def sample(blocks):
        # Laplacian residuals at a few scales: not the Gaussian the tables were built for.
        sig = 2.0 ** rng.integers(-1, 3, size=(blocks, lat.dim))
        x = lat.closest(torch.from_numpy(rng.laplace(size=sig.shape) * sig / np.sqrt(2)))
        return lat.coordinates(x).numpy(), level_of_scale(sig)

    u, levels = sample(20000 // lat.dim)
    counts = coder.count_symbols(u, levels, np.zeros(coder.tables.freqs.size))
    assert counts.sum() == u.size  # one symbol per coordinate
    fitted = BoxCoder(spec, coder.tables.refitted(counts, prior=50.0))
    test, test_levels = sample(8000 // lat.dim)  # other samples of the same source
    assert fitted.ideal_bits(test, test_levels) < 0.98 * coder.ideal_bits(test, test_levels)
    words = fitted.encode(test, test_levels)
    assert np.array_equal(fitted.decode(words, test_levels), test)
    assert 32 * len(words) <= fitted.ideal_bits(test, test_levels) + 64


def test_refitted_tables_are_mirror_symmetric():
    """Counts on one side only still give tables whose boxes at v + f and −(v + f) have equal mass."""
    coder, spec = _coder(get_lattice("e8"), -8, 8)
    t = coder.tables
    counts = np.zeros(t.freqs.size)
    for fi in range(len(t.fractions)):
        for li in range(t.levels):
            r = int(t.radii[li])
            counts[t.starts[fi, li] + r + 1: t.starts[fi, li] + 2 * r + 1] = 1000.0  # v > 0 only
    fitted = t.refitted(counts, prior=50.0)
    for fi, f in enumerate(t.fractions):
        mirror = -f if -f < Fraction(1, 2) else -f - 1
        fj, shift = t.findex(mirror), int(-(f + mirror))
        for level in (t.lmin, 0, t.lmax):
            r = int(t.radii[level - t.lmin])
            a, b = fitted.table(level, fi).astype(int), fitted.table(level, fj).astype(int)
            for v in range(-r + 1, r):
                if -r <= -v + shift <= r:
                    assert abs(a[v + r] - b[-v + shift + r]) <= 1
