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


def golay_code() -> Tensor:
    """All 4096 codewords of the extended binary Golay code [24, 12, 8], as a uint8 (4096, 24) tensor.

    Built from the cyclic [23, 12, 7] code with generator polynomial x^11+x^10+x^6+x^5+x^4+x^2+1,
    extended by an overall parity bit.
    """
    g = [1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1]  # coefficients of x^0 … x^11
    rows = []
    for shift in range(12):
        r = [0] * 23
        for k, b in enumerate(g):
            r[shift + k] = b
        r.append(sum(r) % 2)
        rows.append(r)
    gen = torch.tensor(rows, dtype=torch.int64)
    msgs = ((torch.arange(4096)[:, None] >> torch.arange(12)[None, :]) & 1).to(torch.int64)
    return ((msgs @ gen) % 2).to(torch.uint8)


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

    Each coset is decoded as soft-decision maximum likelihood over the 4,096 Golay codewords.
    """

    name = "leech"
    published_nsm = 0.065771

    def __init__(self, chunk: int = 256):
        code = golay_code()
        basis = code[[1 << k for k in range(12)]]  # codewords of the unit messages
        gens = [[2 * int(b) for b in w] for w in basis] + dn_generators(24, 4) + [[-3] + [1] * 23]
        super().__init__(24, torch.tensor(lower_triangular_basis(gens, 24)))
        self.register_buffer("code", code, persistent=False)
        shift = torch.ones(24, dtype=torch.float64)
        shift[0] = -3.0
        self.register_buffer("shift", shift, persistent=False)
        self.chunk = chunk

    def _closest_raw(self, x: Tensor) -> Tensor:
        v = self.shift.to(x.dtype)
        p0, d0 = _closest_code_plus_dn(x, self.code, 2.0, self.chunk)
        p1, d1 = _closest_code_plus_dn(x - v, self.code, 2.0, self.chunk)
        return torch.where((d1 < d0)[..., None], p1 + v, p0)


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
    """Build a fixed lattice by name (``z``, ``z8``, ``a2``, ``d4``, ``e8``, ``bw16``, ``leech``)."""
    key = name.lower()
    if key.startswith("z") and key[1:].isdigit():
        return ZnLattice(int(key[1:]))
    if key.startswith("d") and key[1:].isdigit():
        return DnLattice(int(key[1:]))
    try:
        return LATTICES[key]()
    except KeyError:
        raise ValueError(f"unknown lattice {name!r}; known: {', '.join(LATTICES)}") from None
