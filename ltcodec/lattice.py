"""Lattices and their exact closest-point quantizers.

Every lattice here is stored the same way (DESIGN-NOTES §1): column vectors, x = G u with u ∈ Z^n and
G lower triangular with a positive diagonal, scaled to unit cell volume (det G = 1) so that a step size
means the same thing for every lattice.  The lower-triangular form is what makes the box code of
:mod:`ltcodec.boxcode` possible: coordinate i of a point depends only on u_1 … u_i.

Closest-point algorithms follow Conway & Sloane, "Fast quantizing and decoding algorithms for lattice
quantizers and codes" (IEEE Trans. IT 1982) and SPLAG ch. 20.  Barnes–Wall Λ16 and Leech Λ24 are decoded
as unions of cosets of a scaled D_n,  {a·c + 2a·D_n : c ∈ C}  for a binary code C; the distance to each
coset splits into per-coordinate terms, so all codewords are scored at once with one matrix product.

Training paths: straight-through (forward Q(x), backward identity) and dithered quantization (noise
uniform over the Voronoi cell), both vectorized over any leading shape ``(..., n)``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "Lattice",
    "ZnLattice",
    "A2Lattice",
    "DnLattice",
    "E8Lattice",
    "BarnesWall16",
    "Leech24",
    "LearnedLattice",
    "get_lattice",
    "LATTICES",
    "golay_code",
    "golay_basis",
    "reed_muller_1_4",
    "lower_triangular_basis",
]


# ----------------------------------------------------------------------------------------------------
# Exact integer helpers
# ----------------------------------------------------------------------------------------------------

def lower_triangular_basis(generators: Sequence[Sequence[int]], n: int) -> list[list[int]]:
    """Lower-triangular basis (column Hermite normal form) of the lattice spanned by integer columns.

    Exact integer arithmetic (Python ints).  Returns an n×n matrix as a list of rows whose columns
    generate the same lattice as ``generators`` (each a length-n column), with a positive diagonal.
    """
    cols = [list(map(int, g)) for g in generators]
    if any(len(c) != n for c in cols):
        raise ValueError("every generator must have length n")
    basis: list[list[int]] = []
    for i in range(n):
        # Euclid on row i across the remaining columns, until one column holds the gcd.
        while True:
            nonzero = [c for c in cols if c[i] != 0]
            if len(nonzero) <= 1:
                break
            nonzero.sort(key=lambda c: abs(c[i]))
            pivot = nonzero[0]
            for c in nonzero[1:]:
                q = c[i] // pivot[i]
                for k in range(n):
                    c[k] -= q * pivot[k]
        pivots = [c for c in cols if c[i] != 0]
        if not pivots:
            raise ValueError("generators do not span a full-rank lattice")
        pivot = pivots[0]
        if pivot[i] < 0:
            pivot[:] = [-v for v in pivot]
        basis.append(pivot)
        cols = [c for c in cols if c is not pivot and any(c)]
    # basis[j] is column j; return rows.
    return [[basis[j][i] for j in range(n)] for i in range(n)]


def dn_generators(n: int, scale: int = 1) -> list[list[int]]:
    """Integer generators of scale·D_n: scale·(e_k − e_{k+1}), scale·2e_n and scale·(e_1 + e_2)."""
    gens = []
    for k in range(n - 1):
        v = [0] * n
        v[k], v[k + 1] = scale, -scale
        gens.append(v)
    gens.append([0] * (n - 1) + [2 * scale])
    gens.append([scale, scale] + [0] * (n - 2))
    return gens


# GF(4) = {0, 1, ω, ω̄} as 0, 1, 2, 3: addition is XOR, multiplication this table.
_GF4_MUL = ((0, 0, 0, 0), (0, 1, 2, 3), (0, 2, 3, 1), (0, 3, 1, 2))


def _hexacode() -> list[tuple[int, ...]]:
    """The 64 words (a, b, c, φ(1), φ(ω), φ(ω̄)) of the hexacode, φ(x) = a·x² + b·x + c over GF(4)."""
    def phi(a, b, c, x):
        return _GF4_MUL[a][_GF4_MUL[x][x]] ^ _GF4_MUL[b][x] ^ c
    return [(a, b, c, phi(a, b, c, 1), phi(a, b, c, 2), phi(a, b, c, 3))
            for a in range(4) for b in range(4) for c in range(4)]


def _mog_column_tuples() -> list[list[list[int]]]:
    """tuples[s][p][k]: the one 4-bit column with score s, parity p and top bit k (a number 0–15).

    A column's score is the GF(4) sum of its rows' labels 0, 1, ω, ω̄ (Conway's MOG).  Each (score,
    parity) class holds two columns, complements of each other, so the top bit tells them apart.
    """
    out = [[[0, 0] for _ in range(2)] for _ in range(4)]
    for t in range(16):
        bits = [(t >> i) & 1 for i in range(4)]
        score = 0
        for row, b in enumerate(bits):
            if b:
                score ^= row  # row i is labelled i (0, 1, ω, ω̄)
        out[score][sum(bits) % 2][bits[0]] = t
    return out


def golay_code() -> Tensor:
    """All 4096 codewords of the extended binary Golay code [24, 12, 8], as a uint8 (4096, 24) tensor.

    Conway's MOG construction: coordinates form a 4 × 6 array (coordinate 4j + i is row i of column j);
    a word is a codeword iff every column has the parity p of the top row and the column scores form a
    hexacode word h.  Codeword 32·(2·h + p) + m takes top bits k_0 … k_4 from the bits of m and k_5
    from the top-row parity; this order is what :func:`_closest_golay_plus_dn` relies on.
    """
    hexa = _hexacode()
    tuples = _mog_column_tuples()
    words = []
    for h in hexa:
        for p in range(2):
            for m in range(32):
                ks = [(m >> j) & 1 for j in range(5)]
                ks.append(p ^ (sum(ks) % 2))
                word = []
                for j in range(6):
                    t = tuples[h[j]][p][ks[j]]
                    word += [(t >> i) & 1 for i in range(4)]
                words.append(word)
    return torch.tensor(words, dtype=torch.uint8)


def golay_basis() -> Tensor:
    """12 linearly independent codewords of :func:`golay_code` (a generator matrix), uint8 (12, 24)."""
    rows: list[int] = []  # reduced basis as bit masks, with their pivots
    pivots: list[int] = []
    basis = []
    for word in golay_code().tolist():
        v = sum(b << i for i, b in enumerate(word))
        for r, piv in zip(rows, pivots):
            if (v >> piv) & 1:
                v ^= r
        if v:
            rows.append(v)
            pivots.append(v.bit_length() - 1)
            basis.append(word)
        if len(basis) == 12:
            break
    return torch.tensor(basis, dtype=torch.uint8)


def reed_muller_1_4() -> Tensor:
    """The 32 codewords of the first-order Reed–Muller code RM(1, 4), as a uint8 (32, 16) tensor."""
    pts = (torch.arange(16)[:, None] >> torch.arange(4)[None, :]) & 1  # (16, 4)
    words = []
    for const in (0, 1):
        for mask in range(16):
            coeff = (torch.tensor([(mask >> k) & 1 for k in range(4)]))
            words.append(((pts * coeff).sum(1) + const) % 2)
    return torch.stack(words).to(torch.uint8)


# ----------------------------------------------------------------------------------------------------
# Closest-point kernels (raw, integer-friendly scaling)
# ----------------------------------------------------------------------------------------------------

def _round(x: Tensor) -> Tensor:
    # Round half away from zero would bias; torch.round is round-half-even, deterministic everywhere.
    return torch.round(x)


def _nearer(x: Tensor, p0: Tensor, p1: Tensor) -> Tensor:
    """Per row, whichever candidate point is closer to x (p0 on ties)."""
    d0 = ((x - p0) ** 2).sum(-1, keepdim=True)
    d1 = ((x - p1) ** 2).sum(-1, keepdim=True)
    return torch.where(d1 < d0, p1, p0)


def _closest_dn(x: Tensor) -> Tensor:
    """Closest point of D_n = {z ∈ Z^n : Σz even} (Conway & Sloane's f/g rule)."""
    f = _round(x)
    odd = (f.sum(-1) % 2) != 0
    if not bool(odd.any()):
        return f
    delta = x - f
    worst = delta.abs().argmax(-1, keepdim=True)
    d = delta.gather(-1, worst)
    step = torch.where(d >= 0, torch.ones_like(d), -torch.ones_like(d))
    g = f.scatter_add(-1, worst, step)
    return torch.where(odd[..., None], g, f)


def _closest_code_plus_dn(x: Tensor, code: Tensor, a: float, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Closest point of the union of cosets {a·c + 2a·D_n : c ∈ code}; returns (point, squared distance).

    For each coordinate j and bit b the nearest point of a·b + 2a·Z, its parity and the cost of moving
    to the second-nearest are computed once; the squared distance to every coset without the D_n parity
    rule ("base") is then one matrix product.  The parity rule only adds a non-negative flip cost, so
    base is a lower bound of the exact cost: the codeword of least base is scored exactly, and only the
    codewords whose base is below that exact cost can beat it — those (a few per vector) are scored
    exactly too, and the least exact cost wins.  The answer is exact, with no search over all codewords.
    """
    lead = x.shape[:-1]
    n = x.shape[-1]
    flat = x.reshape(-1, n)
    cw = code.to(flat.dtype)  # (K, n)
    cwb = code.bool()
    out = torch.empty_like(flat)
    dist_out = torch.empty(flat.shape[0], dtype=flat.dtype, device=flat.device)

    def exact(rows, idx, d, pen, par):
        # Codeword idx[i] for vector rows[i]: exact cost, flip position and odd parity, each (P,).
        c = cwb[idx]  # (P, n)
        dsel = torch.where(c, d[1][rows], d[0][rows]).sum(-1)
        psel = torch.remainder(torch.where(c, par[1][rows], par[0][rows]).sum(-1), 2)
        minpen, argpen = torch.where(c, pen[1][rows], pen[0][rows]).min(-1)
        return dsel + psel * minpen, argpen, psel != 0

    for start in range(0, flat.shape[0], chunk):
        xs = flat[start:start + chunk]  # (B, n)
        b = xs.shape[0]
        t = torch.stack([xs / (2 * a), (xs - a) / (2 * a)], 0)  # (2, B, n) in units of 2a
        r = _round(t)
        d = (t - r) ** 2
        alt = r + torch.where(t - r >= 0, 1.0, -1.0).to(t.dtype)
        pen = (t - alt) ** 2 - d  # ≥ 0
        par = torch.remainder(r, 2)
        base = d[0].sum(-1, keepdim=True) + (d[1] - d[0]) @ cw.T  # (B, K)
        rows_all = torch.arange(b, device=xs.device)
        first = base.argmin(-1)
        c0, _, _ = exact(rows_all, first, d, pen, par)
        # Rounding in the matrix product: keep candidates within a small tolerance of the bound.
        tol = 64 * torch.finfo(xs.dtype).eps * (1 + base.abs().amax(-1) + c0.abs())
        rows, idx = (base <= (c0 + tol)[:, None]).nonzero(as_tuple=True)
        cost, argpen, odd = exact(rows, idx, d, pen, par)
        best_cost = torch.full((b,), float("inf"), dtype=xs.dtype, device=xs.device)
        best_cost.scatter_reduce_(0, rows, cost, "amin")
        # The first candidate (in codeword order) reaching the minimum wins: deterministic ties.
        win = (cost == best_cost[rows]).nonzero().squeeze(1)
        take = torch.full((b,), -1, dtype=torch.int64, device=xs.device)
        take.scatter_reduce_(0, rows[win].flip(0), win.flip(0), "amin", include_self=False)
        best, flip, is_odd = idx[take], argpen[take], odd[take]
        c = cwb[best]  # (B, n)
        rb = torch.where(c, r[1], r[0])
        altb = torch.where(c, alt[1], alt[0])
        fixed = rb.clone()
        fixed[rows_all, flip] = altb[rows_all, flip]
        z = torch.where(is_odd[:, None], fixed, rb)
        out[start:start + chunk] = 2 * a * z + a * c.to(xs.dtype)
        dist_out[start:start + chunk] = best_cost * (2 * a) ** 2
    return out.reshape(*lead, n), dist_out.reshape(lead)


_GOLAY_TABLES: dict[str, Tensor] = {}


def _golay_tables() -> dict[str, Tensor]:
    """Index tables of the MOG trellis (built once): codewords, column tuples and hexacode scores."""
    if not _GOLAY_TABLES:
        order = torch.tensor(_mog_column_tuples()).flatten()  # tuple of (score s, parity p, top bit k)
        ks = (torch.arange(32)[:, None] >> torch.arange(5)) & 1  # top bits k_0 … k_4 of codeword m
        top = [torch.cat([ks, (p + ks.sum(1, keepdim=True)) % 2], 1) for p in (0, 1)]
        _GOLAY_TABLES.update(
            code=golay_code().bool(),
            bits=((order[:, None] >> torch.arange(4)) & 1).bool(),  # (16, 4) in (s, p, k) order
            hexa=torch.tensor(_hexacode()),  # (64, 6)
            top=torch.stack(top).bool(),  # (2 p, 32 m, 6 columns)
            right=torch.tensor([16 * h[3] + 4 * h[4] + h[5] for h in _hexacode()]),  # a word's last triple
        )
    return _GOLAY_TABLES


def _half_trellis(c: Tensor) -> list[list[Tensor]]:
    """Trellis states s[tp][ep] (2 p, 64, B) after three columns c (3, k, e, p, 4 scores, B).

    The middle axis indexes the columns' hexacode symbols as 16·h_0 + 4·h_1 + h_2.  It grows 4 → 16 → 64
    as columns 2, 1, 0 are added in that order, each new symbol an outer index; the vectors run along
    the contiguous last axis, so every addition is a long vectorized loop and the early steps are cheap.
    """
    s = [[c[2, k, e] for e in (0, 1)] for k in (0, 1)]
    for j in (1, 0):
        cj = c[j][..., None, :]  # (k, e, p, 4, 1, B)
        s = [[torch.minimum(
            torch.minimum(cj[0, 0] + s[tp][ep][:, None], cj[0, 1] + s[tp][ep ^ 1][:, None]),
            torch.minimum(cj[1, 0] + s[tp ^ 1][ep][:, None], cj[1, 1] + s[tp ^ 1][ep ^ 1][:, None])
        ).flatten(1, 2) for ep in (0, 1)] for tp in (0, 1)]
    return s


def _golay_class_costs(col: Tensor, right: Tensor) -> Tensor:
    """Least cost of each of the 128 codeword classes (B, 2·h + p), by a 4-state trellis met in the middle.

    ``col`` (6 columns, k, e, B, p, 4 scores): a column's cost when its top bit is k and it leaves
    D_24 parity e, for top-row parity class p and each of its 4 hexacode scores.  A hexacode word is
    fixed by its first three symbols and also by its last three, so each half runs its own trellis
    over 64 symbol triples (``right`` maps a word to its last triple); the halves then join per word
    with total top-row parity p and even D_24 parity.
    """
    b = col.shape[3]
    col = col.permute(0, 1, 2, 4, 5, 3).contiguous()  # (6, k, e, p, 4, B)
    left = _half_trellis(col[:3])
    r = [[t.index_select(1, right) for t in row] for row in _half_trellis(col[3:])]
    out = []
    for p in (0, 1):
        t = [left[tp][ep][p] + r[tp ^ p][ep][p] for tp in (0, 1) for ep in (0, 1)]
        out.append(torch.minimum(torch.minimum(t[0], t[1]), torch.minimum(t[2], t[3])))  # (64, B)
    return torch.stack(out, 1).reshape(128, b).T


def _closest_golay_plus_dn(x: Tensor, a: float, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Closest point of {a·c + 2a·D_24 : c ∈ Golay code}; returns (point, squared distance).

    The same coset costs as :func:`_closest_code_plus_dn`, minimized over the 4,096 codewords by
    dynamic programming on Conway's MOG instead of scoring each one: for each of the 64 hexacode words
    and 2 column parities, six columns each pick one of two complementary 4-bit tuples, under two
    parity constraints (top row, and the D_24 sum parity that a one-coordinate "flip" to the
    second-nearest point repairs).  A 4-state trellis over the columns gives the exact minimum of the
    128 classes; the 32 codewords of the best class are then scored exactly and the least wins.
    """
    tab = _golay_tables()
    code, bits, hexa, top, right = tab["code"], tab["bits"], tab["hexa"], tab["top"], tab["right"]
    lead = x.shape[:-1]
    flat = x.reshape(-1, 24)
    out = torch.empty_like(flat)
    dist_out = torch.empty(flat.shape[0], dtype=flat.dtype, device=flat.device)
    bits_f = bits.to(flat.dtype)
    code_f = code.to(flat.dtype)
    for start in range(0, flat.shape[0], chunk):
        xs = flat[start:start + chunk]
        b = xs.shape[0]
        t = torch.stack([xs / (2 * a), (xs - a) / (2 * a)], 0)  # (2, B, 24) in units of 2a
        r = _round(t)
        d = (t - r) ** 2
        alt = r + torch.where(t - r >= 0, 1.0, -1.0).to(t.dtype)
        pen = (t - alt) ** 2 - d  # ≥ 0: the cost of the second-nearest point instead
        par = torch.remainder(r, 2)
        # Per column and 4-bit tuple (in (score, parity, top bit) order): cost, D_24 parity, cheapest flip.
        dc, pc, pe = d.reshape(2, b, 6, 4), par.reshape(2, b, 6, 4), pen.reshape(2, b, 6, 4)
        cost = dc[0].sum(-1, keepdim=True) + (dc[1] - dc[0]) @ bits_f.T  # (B, 6, 16)
        parity = torch.remainder(pc[0].sum(-1, keepdim=True) + (pc[1] - pc[0]) @ bits_f.T, 2)
        flip = torch.where(bits[None, None], pe[1][:, :, None, :], pe[0][:, :, None, :]).amin(-1)
        # Column cost when the column leaves D_24 parity e, as (column, k, e, B, p, score).
        col = torch.stack([cost + parity * flip, cost + (1 - parity) * flip], -1)  # (B, 6, 16, e)
        col = col.reshape(b, 6, 4, 2, 2, 2).permute(1, 4, 5, 0, 3, 2)
        if xs.dtype == torch.float64:
            # The 128 class minima in float32 (3x faster); each is a sum of non-negative terms, so its
            # error is below 1e-6 of its value.  Where the runner-up is within a safe margin of the
            # best, the trellis runs again in float64 on those rows: the class chosen is exactly
            # float64's.
            final = _golay_class_costs(col.float(), right)
            two = final.topk(2, -1, largest=False)
            best_class = two.indices[:, 0]
            close = (two.values[:, 1] - two.values[:, 0]) <= 1e-5 * (1 + two.values[:, 1])
            if bool(close.any()):
                rows = close.nonzero().squeeze(1)
                best_class[rows] = _golay_class_costs(col[:, :, :, rows], right).argmin(-1)
        else:
            best_class = _golay_class_costs(col, right).argmin(-1)  # 2·h + p
        # Score the class's 32 codewords exactly (cost plus parity repair), from column sums.
        p = best_class % 2
        sel = (hexa[best_class // 2] * 4 + p[:, None] * 2)[..., None] + torch.arange(2)  # (B, 6, 2)
        c_cost, c_par, c_flip = (v.gather(2, sel) for v in (cost, parity, flip))
        k = torch.where(p[:, None, None] != 0, top[1], top[0])  # (B, 32, 6)
        pick_k = lambda v: torch.where(k, v[:, None, :, 1], v[:, None, :, 0])  # noqa: E731
        exact = pick_k(c_cost).sum(-1) + torch.remainder(pick_k(c_par).sum(-1), 2) * pick_k(c_flip).amin(-1)
        best_cost, m = exact.min(-1)
        cb = nn.functional.embedding(best_class * 32 + m, code_f) != 0  # (B, 24): row gather
        rb = torch.where(cb, r[1], r[0])
        altb = torch.where(cb, alt[1], alt[0])
        is_odd = torch.remainder(torch.where(cb, par[1], par[0]).sum(-1), 2) != 0
        flip_at = torch.where(cb, pen[1], pen[0]).argmin(-1)
        flip_mask = (nn.functional.one_hot(flip_at, 24) != 0) & is_odd[:, None]
        z = torch.where(flip_mask, altb, rb)
        out[start:start + chunk] = 2 * a * z + a * cb.to(xs.dtype)
        dist_out[start:start + chunk] = best_cost * (2 * a) ** 2
    return out.reshape(*lead, 24), dist_out.reshape(lead)


# ----------------------------------------------------------------------------------------------------
# Lattice classes
# ----------------------------------------------------------------------------------------------------

class Lattice(nn.Module):
    """A lattice of dimension n at unit cell volume, with an exact closest-point quantizer.

    Subclasses implement :meth:`_closest_raw` in their integer-friendly ("raw") scaling; this class maps
    unit-volume coordinates to raw ones by the factor ``raw_scale`` = det(G_raw)^(1/n).
    """

    name: str = "lattice"
    #: Published normalized second moment (Conway & Sloane, SPLAG Table 2.3), or None.
    published_nsm: float | None = None

    def __init__(self, dim: int, raw_generator: Tensor, raw_denominator: int = 1):
        super().__init__()
        self.dim = int(dim)
        g_raw = raw_generator.to(torch.float64) / raw_denominator
        det = float(torch.prod(torch.diagonal(g_raw)))
        if det <= 0 or not torch.allclose(g_raw, torch.tril(g_raw)):
            raise ValueError("generator must be lower triangular with a positive diagonal")
        self.raw_scale = det ** (1.0 / self.dim)
        self.raw_det = det
        #: Exact raw generator as integers over ``raw_denominator`` (for exact coding offsets).
        self.register_buffer("raw_generator_int", raw_generator.to(torch.int64), persistent=False)
        self.raw_denominator = int(raw_denominator)
        self.register_buffer("generator", g_raw / self.raw_scale, persistent=False)

    # -- geometry ------------------------------------------------------------------------------------
    @property
    def diagonal(self) -> Tensor:
        """Box widths g_ii of the box code, at unit volume."""
        return torch.diagonal(self.generator)

    def coordinates(self, points: Tensor) -> Tensor:
        """Integer coordinates u with x = G u, for lattice points x (unit volume), as int64."""
        g = self.generator.to(torch.float64)
        u = torch.linalg.solve_triangular(g, points.to(torch.float64).reshape(-1, self.dim).T, upper=False)
        return torch.round(u.T).to(torch.int64).reshape(points.shape)

    def points(self, coords: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Lattice points x = G u (unit volume) for integer coordinates u."""
        g = self.generator.to(torch.float64)
        return (coords.to(torch.float64) @ g.T).to(dtype)

    # -- quantization --------------------------------------------------------------------------------
    def _closest_raw(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def closest(self, x: Tensor) -> Tensor:
        """Exact closest lattice point to each row of ``x`` (shape ``(..., n)``), unit volume."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"{self.name} quantizes vectors of length {self.dim}, got {x.shape[-1]}")
        with torch.no_grad():
            s = self.raw_scale
            return self._closest_raw(x.detach() * s) / s

    def voronoi_noise(self, shape: Sequence[int], dtype=torch.float32, device=None,
                      generator: torch.Generator | None = None) -> Tensor:
        """Samples uniform over the Voronoi cell: z − Q(z) for z uniform over a fundamental box."""
        u = torch.rand(*shape, dtype=dtype, device=device, generator=generator)
        z = u @ self.generator.to(dtype=dtype, device=u.device).T
        return z - self.closest(z)

    def quantize(self, x: Tensor, mode: str = "ste") -> Tensor:
        """Quantize the last axis of ``x``.

        ``mode``: ``"hard"`` closest point; ``"ste"`` the same forward with an identity gradient;
        ``"noise"`` additive Voronoi-uniform noise (the dithered training relaxation).
        """
        if mode == "noise":
            return x + self.voronoi_noise(x.shape, dtype=x.dtype, device=x.device)
        q = self.closest(x)
        if mode == "hard":
            return q
        if mode == "ste":
            return x + (q - x).detach()
        raise ValueError(f"unknown quantization mode {mode!r}")

    def nsm_monte_carlo(self, samples: int, seed: int = 0) -> tuple[float, float]:
        """Monte Carlo normalized second moment G = E‖e‖² / n (unit volume), with its std error."""
        gen = torch.Generator().manual_seed(seed)
        e = self.voronoi_noise((samples, self.dim), dtype=torch.float64, generator=gen)
        per = (e ** 2).sum(-1) / self.dim
        return float(per.mean()), float(per.std() / math.sqrt(samples))

    def extra_repr(self) -> str:
        return f"name={self.name}, dim={self.dim}"


class ZnLattice(Lattice):
    """The integer lattice Z^n: scalar quantization, the baseline."""

    published_nsm = 1.0 / 12.0

    def __init__(self, dim: int = 1):
        super().__init__(dim, torch.eye(dim, dtype=torch.int64))
        self.name = "z" if dim == 1 else f"z{dim}"

    def _closest_raw(self, x: Tensor) -> Tensor:
        return _round(x)


class A2Lattice(Lattice):
    """The hexagonal lattice A2 = (Z × √3Z) ∪ (Z × √3Z + (½, √3/2))."""

    name = "a2"
    published_nsm = 5.0 / (36.0 * math.sqrt(3.0))

    def __init__(self):
        # Irrational generator: stored in float, raw_generator_int is not exact for A2.
        nn.Module.__init__(self)
        self.dim = 2
        g = torch.tensor([[0.5, 0.0], [math.sqrt(3) / 2, math.sqrt(3)]], dtype=torch.float64)
        det = 0.5 * math.sqrt(3)
        self.raw_scale = det ** 0.5
        self.raw_det = det
        self.raw_denominator = 0  # marks "not exactly rational"
        self.register_buffer("raw_generator_int", torch.zeros(2, 2, dtype=torch.int64), persistent=False)
        self.register_buffer("generator", g / self.raw_scale, persistent=False)

    def _closest_raw(self, x: Tensor) -> Tensor:
        r3 = math.sqrt(3.0)
        scale = torch.tensor([1.0, r3], dtype=x.dtype, device=x.device)
        shift = torch.tensor([0.5, r3 / 2], dtype=x.dtype, device=x.device)
        return _nearer(x, _round(x / scale) * scale, _round((x - shift) / scale) * scale + shift)


class DnLattice(Lattice):
    """The checkerboard lattice D_n = {z ∈ Z^n : Σ z even} (D4 is the best 4-dimensional lattice)."""

    def __init__(self, dim: int = 4):
        if dim < 2:
            raise ValueError("D_n needs n ≥ 2")
        super().__init__(dim, torch.tensor(lower_triangular_basis(dn_generators(dim), dim)))
        self.name = f"d{dim}"
        self.published_nsm = {4: 0.076603, 3: 0.078543}.get(dim)

    def _closest_raw(self, x: Tensor) -> Tensor:
        return _closest_dn(x)


class E8Lattice(Lattice):
    """The Gosset lattice E8 = D8 ∪ (D8 + ½·1), the default lattice of ltcodec."""

    name = "e8"
    published_nsm = 0.071682

    def __init__(self):
        gens = [[1] * 8] + dn_generators(8, 2)  # raw ×2: (½,…,½) → (1,…,1), D8 → 2·D8
        super().__init__(8, torch.tensor(lower_triangular_basis(gens, 8)), raw_denominator=2)

    def _closest_raw(self, x: Tensor) -> Tensor:
        return _nearer(x, _closest_dn(x), _closest_dn(x - 0.5) + 0.5)


class BarnesWall16(Lattice):
    """Barnes–Wall Λ16 = RM(1,4) + 2·D16 (Construction D), decoded over its 32 cosets."""

    name = "bw16"
    published_nsm = 0.068299

    def __init__(self):
        rm = reed_muller_1_4()
        gens = [list(map(int, w)) for w in rm[1:]] + dn_generators(16, 2)
        super().__init__(16, torch.tensor(lower_triangular_basis(gens, 16)))
        self.register_buffer("code", rm, persistent=False)

    def _closest_raw(self, x: Tensor) -> Tensor:
        return _closest_code_plus_dn(x, self.code, 1.0)[0]


class Leech24(Lattice):
    """The Leech lattice Λ24 (√8 scaling): H ∪ (H + v), H = 2·C24 + 4·D24, v = (−3, 1^23).

    Each coset is decoded as soft-decision maximum likelihood over the Golay code by a trellis on
    Conway's MOG (:func:`_closest_golay_plus_dn`).
    """

    name = "leech"
    published_nsm = 0.065771

    def __init__(self, chunk: int = 1024):
        gens = [[2 * int(b) for b in w] for w in golay_basis()] + dn_generators(24, 4) + [[-3] + [1] * 23]
        super().__init__(24, torch.tensor(lower_triangular_basis(gens, 24)))
        shift = torch.ones(24, dtype=torch.float64)
        shift[0] = -3.0
        self.register_buffer("shift", shift, persistent=False)
        self.chunk = chunk

    def _closest_raw(self, x: Tensor) -> Tensor:
        v = self.shift.to(x.dtype)
        flat = x.reshape(-1, 24)
        n = flat.shape[0]
        # Both cosets in one call: half the per-operation overhead at the small batches of training.
        p, d = _closest_golay_plus_dn(torch.cat([flat, flat - v]), 2.0, self.chunk)
        return torch.where((d[n:] < d[:n])[:, None], p[n:] + v, p[:n]).reshape(x.shape)


class LearnedLattice(Lattice):
    """A lattice with a learnable lower-triangular basis, quantized by Babai rounding.

    Zhang & Wu, "Learning optimal lattice vector quantizers for end-to-end neural image compression"
    (NeurIPS 2024).  Babai rounding u = round(G⁻¹x) is exact only for an orthogonal basis, so training
    adds :meth:`orthogonality_penalty`.  The basis is kept at unit volume.  For exact coding the basis
    is snapped to a dyadic grid (:meth:`snap`) before export.
    """

    name = "learned"
    published_nsm = None

    def __init__(self, dim: int = 8, init: str | Tensor = "identity", grid: int = 256):
        nn.Module.__init__(self)
        self.dim = dim
        self.grid = grid
        if isinstance(init, Tensor):
            g0 = init.to(torch.float64)
        elif init == "identity":
            g0 = torch.eye(dim, dtype=torch.float64)
        else:
            g0 = get_lattice(init).generator.clone()
        if g0.shape != (dim, dim):
            raise ValueError("initial basis has the wrong shape")
        self.log_diag = nn.Parameter(torch.log(torch.diagonal(g0)).float())
        self.lower = nn.Parameter(torch.tril(g0, -1).float())
        self.raw_scale = 1.0
        self.raw_det = 1.0
        self.raw_denominator = 0

    @property
    def generator(self) -> Tensor:  # type: ignore[override]
        ld = self.log_diag - self.log_diag.mean()  # unit volume
        return torch.tril(self.lower, -1) + torch.diag(torch.exp(ld))

    def _closest_raw(self, x: Tensor) -> Tensor:
        g = self.generator.detach().to(x.dtype)
        u = torch.linalg.solve_triangular(g, x.reshape(-1, self.dim).T, upper=False)
        return (g @ torch.round(u)).T.reshape(x.shape)

    def quantize(self, x: Tensor, mode: str = "ste") -> Tensor:
        if mode == "noise":
            # Uniform over the Babai cell G·[-½, ½)^n, differentiable in G.
            u = torch.rand_like(x) - 0.5
            return x + u @ self.generator.to(x.dtype).T
        q = self.closest(x)
        if mode == "hard":
            return q
        if mode == "ste":
            # Forward Q(x); backward identity for x, and for G the gradient of G·round(G⁻¹x) with the
            # integer coordinates held fixed.
            g = self.generator.to(x.dtype)
            u = torch.linalg.solve_triangular(g.detach(), x.detach().reshape(-1, self.dim).T, upper=False)
            q_g = (g @ torch.round(u)).T.reshape(x.shape)
            return x + (q - x).detach() + (q_g - q_g.detach())
        raise ValueError(f"unknown quantization mode {mode!r}")

    def orthogonality_penalty(self) -> Tensor:
        """Σ_{i≠j} cos²(g_i, g_j) over basis columns: zero exactly when Babai rounding is exact."""
        g = self.generator
        gn = g / g.norm(dim=0, keepdim=True)
        c = gn.T @ gn
        off = c - torch.diag(torch.diagonal(c))
        return (off ** 2).sum()

    @torch.no_grad()
    def snap(self) -> None:
        """Move the basis onto the dyadic grid 1/grid (diagonal snapped in the log domain)."""
        self.lower.copy_(torch.round(self.lower * self.grid) / self.grid)
        self.log_diag.copy_(torch.log(torch.round(torch.exp(self.log_diag - self.log_diag.mean())
                                                  * self.grid).clamp_min(1) / self.grid))


# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------

LATTICES: dict[str, Callable[[], Lattice]] = {
    "z": lambda: ZnLattice(1),
    "z8": lambda: ZnLattice(8),
    "a2": A2Lattice,
    "d4": lambda: DnLattice(4),
    "e8": E8Lattice,
    "bw16": BarnesWall16,
    "leech": Leech24,
}


def get_lattice(name: str) -> Lattice:
    """Build a lattice by name: a fixed one (``z``, ``z8``, ``a2``, ``d4``, ``e8``, ``bw16``, ``leech``)
    or ``learned<n>``, a learned n-dimensional basis starting at the identity."""
    key = name.lower()
    if key.startswith("learned") and key[7:].isdigit():
        return LearnedLattice(int(key[7:]))
    if key.startswith("z") and key[1:].isdigit():
        return ZnLattice(int(key[1:]))
    if key.startswith("d") and key[1:].isdigit():
        return DnLattice(int(key[1:]))
    try:
        return LATTICES[key]()
    except KeyError:
        raise ValueError(f"unknown lattice {name!r}; known: {', '.join(LATTICES)}") from None
