"""Exact entropy coding of lattice points: the box code (DESIGN-NOTES §2) on constriction's range coder.

A lattice point x = G u (G lower triangular) is coded coordinate by coordinate.  Given u_1 … u_{i−1},
x_i = g_ii·u_i + c_i with c_i = Σ_{j<i} g_ij u_j, so in units of g_ii the point sits at v + f, where v is
an integer symbol and f ∈ [−½, ½) a fractional offset fixed by the coordinates already coded.  Symbol v
is coded with the mass of [v + f − ½, v + f + ½) under the coordinate's zero-mean Gaussian of scale
s = σ_i / g_ii: these boxes tile space, so the code is exact for any lattice.

Determinism: c_i and f are computed in exact integer arithmetic from the lattice's integer generator;
s is an integer *level* on a log2 grid of step 1/8; coding tables are integer frequency tables indexed by
(level, f).  A decoder that is given the same levels therefore parses the stream identically on every
machine.  Tables are built here (``ScaleTables.build``) and, for shipped models, frozen into the weights
file so that no libm call is ever made at decode time.

Symbols outside a table's support are coded as an escape symbol followed by the value in an Elias-gamma
code with uniform bits, so every integer remains codable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import constriction
import numpy as np
import torch

from .lattice import Lattice

__all__ = ["LEVELS_PER_OCTAVE", "PRECISION", "LatticeCodingSpec", "ScaleTables", "BoxCoder",
           "ChannelTables", "density_tables", "escape_bits", "level_of_scale", "quantize_pmf", "CodingError"]

#: Scale levels per octave of σ/g: the log2 grid of step 1/8 of DESIGN-NOTES §3.
LEVELS_PER_OCTAVE = 8
#: Table frequencies sum to 2^PRECISION.
PRECISION = 16
#: Tables reach this many standard deviations on each side of the mean before the escape symbol.
TAIL_SIGMAS = 6.0


class CodingError(ValueError):
    """A bitstream does not decode under the given model (truncated, corrupt, or a wrong model)."""


def level_of_scale(scale: np.ndarray | torch.Tensor) -> np.ndarray:
    """Nearest level ℓ = round(8·log2 s) of a scale s (float input; for training-time models only)."""
    s = np.asarray(scale, dtype=np.float64)
    return np.round(LEVELS_PER_OCTAVE * np.log2(np.maximum(s, 1e-30))).astype(np.int64)


@dataclass(frozen=True)
class LatticeCodingSpec:
    """The integer description of a lattice that the box code needs.

    ``generator`` is an integer lower-triangular matrix whose columns, divided by ``denominator`` and
    by the lattice's unit-volume scale, are the basis; ``level_offset[i]`` = round(−8·log2 g_ii) at unit
    volume, so that the table level of coordinate i is (level of σ_i) + level_offset[i].
    """

    generator: np.ndarray  # (n, n) int64, lower triangular
    level_offset: np.ndarray  # (n,) int64
    exact: bool
    unit_generator: np.ndarray | None = None  # float64 basis at unit volume (conditional coding only)

    @property
    def dim(self) -> int:
        return self.generator.shape[0]

    @classmethod
    def from_lattice(cls, lattice: Lattice, grid: int = 4096) -> "LatticeCodingSpec":
        g_unit = lattice.generator.detach().to(torch.float64).cpu().numpy()
        if getattr(lattice, "raw_denominator", 0) > 0:
            gen = lattice.raw_generator_int.cpu().numpy().astype(np.int64)
            exact = True
        else:
            gen = np.round(g_unit * grid).astype(np.int64)
            exact = False
        off = -LEVELS_PER_OCTAVE * np.log2(np.diagonal(g_unit))
        level_offset = np.round(off).astype(np.int64)
        if exact and np.abs(off - level_offset).max() > 1e-9:
            exact = False
        return cls(gen, level_offset, exact, g_unit)

    #: Offsets of lattices without an exact small-integer generator are snapped to this grid.
    SNAP = 64

    def fraction(self, r: int, g: int) -> Fraction:
        """The table offset for c_i/g_ii = k + r/g: exact for exact lattices, else on a 1/64 grid."""
        if self.exact:
            return Fraction(r, g)
        return Fraction(int(round(r * self.SNAP / g)), self.SNAP)

    def fractions(self, conditional: bool = False) -> list[Fraction]:
        """Every table offset f that can occur, as reduced fractions in [−½, ½).

        ``conditional``: also the 1/64 grid used when coordinates have their own means.
        """
        out = set(Fraction(r, self.SNAP) for r in range(-self.SNAP // 2, self.SNAP // 2)) if conditional else set()
        for g in set(int(v) for v in np.diagonal(self.generator)):
            for r in range(-(g // 2), (g + 1) // 2):
                out.add(self.fraction(r, g))
        return sorted(out)

    def split(self, i: int, partial: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For coordinate i with c_i·den = ``partial`` (int64): the shift k and offset numerator r.

        c_i/g_ii = k + r/g_ii with r ∈ [−g_ii/2, g_ii/2); returns (k, r, g_ii) in integers.
        """
        g = int(self.generator[i, i])
        k = np.floor_divide(2 * partial + g, 2 * g)
        r = partial - k * g
        return k, r, g


class ScaleTables:
    """Integer frequency tables of a zero-mean density at each scale, indexed by (level, offset): the
    discretized Gaussian as :meth:`build` makes them, or as :meth:`refitted` to a coder's symbols.

    Tables for levels ``lmin … lmax`` (s = 2^(ℓ/8)) and every offset f of a lattice, each over the
    symbols −R_ℓ … R_ℓ plus a trailing escape symbol, frequencies summing to 2^16.  Stored as one flat
    uint16 array plus offsets, which is what ships inside a model file.
    """

    def __init__(self, lmin: int, lmax: int, fractions: list[Fraction], freqs: np.ndarray,
                 starts: np.ndarray, radii: np.ndarray):
        self.lmin, self.lmax = int(lmin), int(lmax)
        self.fractions = list(fractions)
        self._findex = {f: i for i, f in enumerate(self.fractions)}
        self.freqs = freqs  # flat uint16 (frequencies − 1 would overflow never: max 65536 − ...)
        self.starts = starts  # (n_f, n_levels + 1) int64 offsets into freqs
        self.radii = radii  # (n_levels,) int64
        self._models: dict[tuple[int, int], object] = {}

    @property
    def levels(self) -> int:
        return self.lmax - self.lmin + 1

    @staticmethod
    def radius(level: int) -> int:
        s = 2.0 ** (level / LEVELS_PER_OCTAVE)
        return max(1, int(math.ceil(TAIL_SIGMAS * s + 1)))

    @classmethod
    def build(cls, lmin: int, lmax: int, fractions: list[Fraction]) -> "ScaleTables":
        radii = np.array([cls.radius(l) for l in range(lmin, lmax + 1)], dtype=np.int64)
        chunks, starts = [], np.zeros((len(fractions), len(radii) + 1), dtype=np.int64)
        pos = 0
        for fi, f in enumerate(fractions):
            for li, level in enumerate(range(lmin, lmax + 1)):
                starts[fi, li] = pos
                t = _gaussian_frequencies(2.0 ** (level / LEVELS_PER_OCTAVE), float(f), int(radii[li]))
                chunks.append(t)
                pos += t.size
            starts[fi, -1] = pos
        return cls(lmin, lmax, fractions, np.concatenate(chunks).astype(np.uint16), starts, radii)

    def table(self, level: int, findex: int) -> np.ndarray:
        li = level - self.lmin
        return self.freqs[self.starts[findex, li]: self.starts[findex, li] + 2 * self.radii[li] + 2]

    @property
    def code_lengths(self) -> np.ndarray:
        """−log2 of every symbol's probability, flat like ``freqs``."""
        if getattr(self, "_lengths", None) is None:
            self._lengths = _code_lengths(self.freqs)
        return self._lengths

    def model(self, level: int, findex: int):
        key = (level, findex)
        m = self._models.get(key)
        if m is None:
            # Frequencies are exact small integers; constriction normalizes them deterministically.
            probs = self.table(level, findex).astype(np.float64) + 1.0
            m = constriction.stream.model.Categorical(probs, perfect=False)
            self._models[key] = m
        return m

    def refitted(self, counts: np.ndarray, prior: float) -> "ScaleTables":
        """Tables fitted to the symbols a coder wrote, on the same levels, offsets and radii.

        ``counts`` is flat like :attr:`freqs` (:meth:`BoxCoder.count_symbols`).  Each table's counts are
        averaged with their mirror image, the boxes at −(v + f) in the table of offset −f (a zero-mean
        density is symmetric, and this halves the noise), and ``prior`` pseudo-counts are spread as the
        table's own pmf, so that rare levels and far tails keep these tables' masses.  Why: the codec's
        residuals, divided by the predicted σ, are not exactly Gaussian (the prediction's own error makes
        them a scale mixture); their own frequencies code them in fewer bits, and the coder reads whatever
        frequencies the model file holds.
        """
        counts = np.asarray(counts, dtype=np.float64)
        if counts.shape != self.freqs.shape:
            raise ValueError("counts must be flat like the tables' frequencies")
        freqs = self.freqs.copy()
        for fi, f in enumerate(self.fractions):
            mirror = -f if -f < Fraction(1, 2) else -f - 1
            fj = self.findex(mirror)
            shift = int(-(f + mirror))  # v' = −v + shift puts box v of offset f onto box v' of the mirror
            for li in range(self.levels):
                r = int(self.radii[li])
                own = counts[self.starts[fi, li]: self.starts[fi, li] + 2 * r + 2]
                other = counts[self.starts[fj, li]: self.starts[fj, li] + 2 * r + 2]
                s_mirror = r - np.arange(-r, r + 1) + shift
                inside = (s_mirror >= 0) & (s_mirror <= 2 * r)
                mirrored = np.zeros(2 * r + 2)
                mirrored[:-1][inside] = other[s_mirror[inside]]
                mirrored[-1] = other.sum() - mirrored[:-1].sum()
                seen = 0.5 * (own + mirrored)
                start = self.starts[fi, li]
                # The stored frequencies less the 1 every symbol gets: requantized alone, they come back
                # unchanged (quantize_pmf adds that 1 again).
                pmf = self.freqs[start: start + 2 * r + 2].astype(np.float64)
                pmf /= pmf.sum()
                freqs[start: start + 2 * r + 2] = quantize_pmf(seen + prior * pmf)
        return ScaleTables(self.lmin, self.lmax, self.fractions, freqs, self.starts.copy(), self.radii.copy())

    def findex(self, f: Fraction) -> int:
        try:
            return self._findex[f]
        except KeyError:
            raise CodingError(f"no coding table for offset {f}") from None

    # -- (de)serialization as plain arrays (for safetensors) ------------------------------------------
    def to_arrays(self, prefix: str = "tables.") -> dict[str, np.ndarray]:
        return {
            prefix + "freqs": self.freqs,
            prefix + "starts": self.starts,
            prefix + "radii": self.radii,
            prefix + "levels": np.array([self.lmin, self.lmax], dtype=np.int64),
            prefix + "fractions": np.array([[f.numerator, f.denominator] for f in self.fractions], dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "tables.") -> "ScaleTables":
        lmin, lmax = (int(v) for v in arrays[prefix + "levels"])
        fr = [Fraction(int(a), int(b)) for a, b in arrays[prefix + "fractions"]]
        t = cls(lmin, lmax, fr, np.asarray(arrays[prefix + "freqs"], dtype=np.uint16),
                np.asarray(arrays[prefix + "starts"], dtype=np.int64), np.asarray(arrays[prefix + "radii"], dtype=np.int64))
        if t.radii.shape != (t.levels,) or t.starts.shape != (len(fr), t.levels + 1):
            raise CodingError("coding tables have inconsistent shapes")
        if int(t.starts.max()) > t.freqs.size:
            raise CodingError("coding tables are truncated")
        return t


def quantize_pmf(p: np.ndarray) -> np.ndarray:
    """Frequencies − 1 (so that they fit uint16) of a pmf, every symbol ≥ 1, summing to 2^16.

    Deterministic: floor of the scaled pmf, remainder to the largest fractional parts, ties by index.
    """
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    total = 1 << PRECISION
    if n >= total:
        raise ValueError("table too large for its precision")
    free = total - n
    scaled = p / p.sum() * free
    extra = np.floor(scaled).astype(np.int64)
    rem = free - int(extra.sum())
    order = np.lexsort((np.arange(n), -(scaled - extra)))
    extra[order[:rem]] += 1
    return extra


def _gaussian_frequencies(s: float, f: float, radius: int) -> np.ndarray:
    """Frequencies − 1 (uint16-safe) of v = −R … R and an escape, summing (with the +1s) to 2^16."""
    v = np.arange(-radius, radius + 1, dtype=np.float64)
    hi = (v + f + 0.5) / s
    lo = (v + f - 0.5) / s
    erfc = np.vectorize(math.erfc)
    # Left-tail differences keep precision far from the mean.
    mass = np.where(v + f >= 0, 0.5 * erfc(lo / math.sqrt(2)) - 0.5 * erfc(hi / math.sqrt(2)),
                    0.5 * erfc(-hi / math.sqrt(2)) - 0.5 * erfc(-lo / math.sqrt(2)))
    mass = np.clip(mass, 0.0, None)
    escape = max(0.0, 1.0 - mass.sum())
    return quantize_pmf(np.append(mass, escape))


def density_tables(cdf, spec: LatticeCodingSpec, radius: int) -> ScaleTables:
    """Box-code tables for a non-parametric density per block coordinate.

    ``cdf(i, points)`` is the CDF of coordinate i's density (unit-volume lattice units) at an array of
    points.  Table "level" i holds coordinate i's masses of the boxes [g_ii(v + f − ½), g_ii(v + f + ½)),
    v = −radius … radius, for every offset f, plus an escape; use with ``BoxCoder(per_dimension=True)``.
    """
    n = spec.dim
    fractions = spec.fractions()
    g = np.exp2(-spec.level_offset / LEVELS_PER_OCTAVE) if spec.unit_generator is None \
        else np.diagonal(spec.unit_generator)
    v = np.arange(-radius, radius + 1, dtype=np.float64)
    chunks, starts, pos = [], np.zeros((len(fractions), n + 1), dtype=np.int64), 0
    for fi, f in enumerate(fractions):
        for i in range(n):
            starts[fi, i] = pos
            hi = np.asarray(cdf(i, g[i] * (v + float(f) + 0.5)), dtype=np.float64)
            lo = np.asarray(cdf(i, g[i] * (v + float(f) - 0.5)), dtype=np.float64)
            mass = np.clip(hi - lo, 0.0, None)
            t = quantize_pmf(np.append(mass, max(0.0, 1.0 - mass.sum())))
            chunks.append(t)
            pos += t.size
        starts[fi, -1] = pos
    return ScaleTables(0, n - 1, fractions, np.concatenate(chunks).astype(np.uint16), starts,
                       np.full(n, radius, dtype=np.int64))


class BoxCoder:
    """Encode and decode integer lattice coordinates of many blocks with the box code.

    ``encode(coords, levels)`` takes u of shape (B, n) (int64) and the σ level of every coordinate
    (B, n), returns the range coder's uint32 words.  ``decode(words, levels)`` inverts it exactly.
    """

    def __init__(self, spec: LatticeCodingSpec, tables: ScaleTables, per_dimension: bool = False):
        """``per_dimension``: tables from :func:`density_tables` (one density per coordinate; no levels)."""
        self.spec = spec
        self.tables = tables
        self.per_dimension = per_dimension
        self._fidx: dict[int, np.ndarray] = {}
        for g in sorted(set(int(v) for v in np.diagonal(spec.generator))):
            lo = -(g // 2)
            self._fidx[g] = np.array([tables.findex(spec.fraction(r, g)) for r in range(lo, lo + g)],
                                     dtype=np.int64)

    def _select(self, coords: np.ndarray, i: int, levels, conditional):
        """Shift k, offset-table index and table level of coordinate i for every block.

        Exact integer path from ``levels``; or, with ``conditional``, from the (level, mean) it returns
        for coordinate i given the block's earlier coordinates.
        """
        if self.per_dimension:
            k, fidx = self._offsets(coords, i)
            return k, fidx, np.full(coords.shape[0], i, dtype=np.int64)
        if conditional is None:
            k, fidx = self._offsets(coords, i)
            lv = levels[:, i]
        else:
            lv, mean = conditional(i, coords[:, :i])
            k, fidx = self._conditional_offsets(coords, i, mean)
        tl = np.clip(np.asarray(lv, np.int64) + self.spec.level_offset[i], self.tables.lmin, self.tables.lmax)
        return k, fidx, tl

    def _groups(self, level: np.ndarray, findex: np.ndarray):
        key = (level - self.tables.lmin) * len(self.tables.fractions) + findex
        order = np.argsort(key, kind="stable")
        uniq, starts = np.unique(key[order], return_index=True)
        ends = np.append(starts[1:], order.size)
        for kk, a, b in zip(uniq, starts, ends):
            lvl = int(kk) // len(self.tables.fractions) + self.tables.lmin
            yield lvl, int(kk) % len(self.tables.fractions), order[a:b]

    def _offsets(self, coords: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        partial = coords[:, :i] @ self.spec.generator[i, :i] if i else np.zeros(coords.shape[0], np.int64)
        k, r, g = self.spec.split(i, partial.astype(np.int64))
        return k, self._fidx[g][r + g // 2]

    def _conditional_offsets(self, coords: np.ndarray, i: int, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shift and table offset when coordinate i has density N(mean, ·) (float; same-process only)."""
        g = self._g_unit
        t = ((coords[:, :i] @ g[i, :i]) if i else 0.0) - np.asarray(mean, dtype=np.float64)
        t = t / g[i, i]
        k = np.floor(t + 0.5)
        snapped = np.round((t - k) * LatticeCodingSpec.SNAP).astype(np.int64)
        wrap = snapped >= LatticeCodingSpec.SNAP // 2
        k = k + wrap
        snapped = np.where(wrap, snapped - LatticeCodingSpec.SNAP, snapped)
        fidx = self._snap_index[snapped + LatticeCodingSpec.SNAP // 2]
        return k.astype(np.int64), fidx

    def _setup_conditional(self) -> None:
        if getattr(self, "_snap_index", None) is not None:
            return
        snap = LatticeCodingSpec.SNAP
        try:
            self._snap_index = np.array([self.tables.findex(Fraction(r, snap)) for r in range(-snap // 2, snap // 2)])
        except CodingError:
            raise ValueError("conditional coding needs tables built for the 1/64 offset grid") from None
        if self.spec.unit_generator is None:
            raise ValueError("conditional coding needs the lattice's unit-volume generator")
        self._g_unit = np.asarray(self.spec.unit_generator, dtype=np.float64)

    def encode(self, coords: np.ndarray, levels: np.ndarray | None, conditional=None) -> np.ndarray:
        """Encode u (blocks, n).  ``levels`` gives each coordinate's σ level; or ``conditional(i, u[:, :i])``
        returns (levels, means) of coordinate i given the block's earlier coordinates."""
        coords = np.ascontiguousarray(coords, dtype=np.int64)
        if coords.ndim != 2 or coords.shape[1] != self.spec.dim:
            raise ValueError("coords must have shape (blocks, n)")
        if self.per_dimension:
            pass
        elif conditional is None:
            levels = np.asarray(levels, dtype=np.int64)
            if levels.shape != coords.shape:
                raise ValueError("coords and levels must both have shape (blocks, n)")
        else:
            self._setup_conditional()
        enc = constriction.stream.queue.RangeEncoder()
        for i in range(self.spec.dim):
            k, fidx, tl = self._select(coords, i, levels, conditional)
            v = coords[:, i] + k
            escapes = []
            for lvl, fi, idx in self._groups(tl, fidx):
                r = int(self.tables.radii[lvl - self.tables.lmin])
                sym = v[idx] + r
                out = (sym < 0) | (sym > 2 * r)
                sym = np.where(out, 2 * r + 1, sym).astype(np.int32)
                enc.encode(sym, self.tables.model(lvl, fi))
                if out.any():
                    escapes.extend((int(j), r) for j in idx[out])
            for j, r in sorted(escapes):
                encode_escape(enc, int(v[j]), r)
        return enc.get_compressed()

    def _table_symbols(self, coords: np.ndarray, levels: np.ndarray):
        """For each coordinate i: where each block's symbol sits in the tables' flat frequencies, and the
        escaped values with their tables' radii (what :meth:`encode` codes, without the coder)."""
        if self.per_dimension:
            raise ValueError("symbol positions take σ levels (not per-dimension tables)")
        coords = np.ascontiguousarray(coords, dtype=np.int64)
        levels = np.asarray(levels, dtype=np.int64)
        if coords.ndim != 2 or coords.shape[1] != self.spec.dim or levels.shape != coords.shape:
            raise ValueError("coords and levels must both have shape (blocks, n)")
        t = self.tables
        for i in range(self.spec.dim):
            k, fidx, tl = self._select(coords, i, levels, None)
            v = coords[:, i] + k
            li = tl - t.lmin
            r = t.radii[li]
            sym = v + r
            out = (sym < 0) | (sym > 2 * r)
            yield t.starts[fidx, li] + np.where(out, 2 * r + 1, sym), v[out], r[out]

    def ideal_bits(self, coords: np.ndarray, levels: np.ndarray) -> float:
        """The information content of what :meth:`encode` would write for u and ``levels``, in bits: the
        stream's size up to the range coder's final word, without running the coder (a rate search's
        trial costs a table lookup per coordinate)."""
        bits = 0.0
        for positions, escaped, radii in self._table_symbols(coords, levels):
            bits += float(self.tables.code_lengths[positions].sum())
            if escaped.size:
                bits += escape_bits(escaped, radii)
        return bits

    def count_symbols(self, coords: np.ndarray, levels: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Add to ``counts`` (flat like the tables' frequencies) one for every symbol :meth:`encode` would
        code for u and ``levels``, escapes at their tables' escape symbol; returns ``counts``
        (:meth:`ScaleTables.refitted` fits tables to them)."""
        for positions, _, _ in self._table_symbols(coords, levels):
            counts += np.bincount(positions, minlength=counts.size)
        return counts

    def decode(self, words: np.ndarray, levels: np.ndarray | None, conditional=None,
               blocks: int | None = None) -> np.ndarray:
        if self.per_dimension:
            if blocks is None:
                raise ValueError("per-dimension decoding needs the number of blocks")
        elif conditional is None:
            levels = np.asarray(levels, dtype=np.int64)
            if levels.ndim != 2 or levels.shape[1] != self.spec.dim:
                raise ValueError("levels must have shape (blocks, n)")
            blocks = levels.shape[0]
        else:
            self._setup_conditional()
        dec = constriction.stream.queue.RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))
        coords = np.zeros((blocks, self.spec.dim), dtype=np.int64)
        try:
            for i in range(self.spec.dim):
                k, fidx, tl = self._select(coords, i, levels, conditional)
                v = np.empty(blocks, dtype=np.int64)
                escapes = []
                for lvl, fi, idx in self._groups(tl, fidx):
                    r = int(self.tables.radii[lvl - self.tables.lmin])
                    sym = np.asarray(dec.decode(self.tables.model(lvl, fi), idx.size), dtype=np.int64)
                    v[idx] = sym - r
                    esc = sym == 2 * r + 1
                    if esc.any():
                        escapes.extend((int(j), r) for j in idx[esc])
                for j, r in sorted(escapes):
                    v[j] = decode_escape(dec, r)
                coords[:, i] = v - k
        # constriction asserts on invalid data; absurd escaped values from damaged data make the exact
        # offsets of later coordinates wrap around and point outside the offset tables (IndexError).
        except (RuntimeError, ValueError, OverflowError, AssertionError, IndexError) as e:
            raise CodingError(f"entropy-coded data does not decode: {e}") from None
        return coords



_UNIFORM: dict[int, object] = {}


def _u(size: int):
    m = _UNIFORM.get(size)
    if m is None:
        m = _UNIFORM[size] = constriction.stream.model.Uniform(size)
    return m


ESCAPE_LENGTH_ALPHABET = 64


def encode_escape(enc, value: int, radius: int) -> None:
    """Escape payload: sign, then w = |v| − R − 1 ≥ 0 as Elias-gamma of w+1 with uniform symbols."""
    sign = 0 if value > radius else 1
    w = abs(value) - radius - 1 if sign == 0 else -value - radius - 1
    w1 = w + 1
    nbits = w1.bit_length()
    if nbits > 62:
        raise ValueError("value too large to code")
    enc.encode(np.array([sign], dtype=np.int32), _u(2))
    enc.encode(np.array([nbits], dtype=np.int32), _u(ESCAPE_LENGTH_ALPHABET))
    rest, nb = w1 - (1 << (nbits - 1)), nbits - 1
    while nb > 0:
        take = min(nb, 16)
        enc.encode(np.array([rest & ((1 << take) - 1)], dtype=np.int32), _u(1 << take))
        rest >>= take
        nb -= take


def decode_escape(dec, radius: int) -> int:
    sign = int(dec.decode(_u(2), 1)[0])
    nbits = int(dec.decode(_u(ESCAPE_LENGTH_ALPHABET), 1)[0])
    if not 1 <= nbits <= 62:
        raise CodingError("corrupt escape code")
    rest, nb, shift = 0, nbits - 1, 0
    while nb > 0:
        take = min(nb, 16)
        rest |= int(dec.decode(_u(1 << take), 1)[0]) << shift
        shift += take
        nb -= take
    w = rest + (1 << (nbits - 1)) - 1
    mag = w + radius + 1
    return mag if sign == 0 else -mag


def _code_lengths(freqs: np.ndarray) -> np.ndarray:
    """−log2 of each symbol's probability in flat integer tables (frequencies + 1 sum to 2^16 per table)."""
    return PRECISION - np.log2(freqs.astype(np.float64) + 1.0)


def escape_bits(values: np.ndarray, radius: np.ndarray | int) -> float:
    """Bits of the escape payloads of ``values`` beyond ``radius`` (what :func:`encode_escape` writes)."""
    values = np.asarray(values, dtype=np.int64)
    radius = np.asarray(radius, dtype=np.int64)
    w1 = np.where(values > radius, values - radius, -values - radius)  # w + 1 ≥ 1
    nbits = np.floor(np.log2(w1.astype(np.float64))).astype(np.int64) + 1
    return float((1 + math.log2(ESCAPE_LENGTH_ALPHABET) + nbits - 1).sum())


class ChannelTables:
    """One integer frequency table per channel, for scalar-quantized symbols such as the hyper-latent.

    Channel c covers symbols ``offset[c] … offset[c] + size[c] − 1`` plus a trailing escape symbol.
    """

    def __init__(self, freqs: np.ndarray, starts: np.ndarray, offsets: np.ndarray):
        self.freqs = np.asarray(freqs, dtype=np.uint16)
        self.starts = np.asarray(starts, dtype=np.int64)  # (C + 1,)
        self.offsets = np.asarray(offsets, dtype=np.int64)  # (C,)
        if self.starts.shape != (self.offsets.size + 1,) or int(self.starts[-1]) != self.freqs.size \
                or (np.diff(self.starts) < 2).any():
            raise CodingError("channel tables have inconsistent shapes")
        self._models: dict[int, object] = {}

    @classmethod
    def from_pmfs(cls, pmf: np.ndarray, lo: int, floor: float = 1e-9) -> "ChannelTables":
        """Trim each channel's pmf (over lo … lo + len − 1) to where it exceeds ``floor``; add an escape."""
        chunks, starts, offsets = [], [0], []
        for p in pmf:
            keep = np.nonzero(p > floor)[0]
            a, b = (int(keep[0]), int(keep[-1])) if keep.size else (int(np.argmax(p)),) * 2
            q = p[a:b + 1]
            chunks.append(quantize_pmf(np.append(q, max(1.0 - q.sum(), 0.0))))
            starts.append(starts[-1] + chunks[-1].size)
            offsets.append(lo + a)
        return cls(np.concatenate(chunks), np.array(starts), np.array(offsets))

    @property
    def channels(self) -> int:
        return self.offsets.size

    def _model(self, c: int):
        m = self._models.get(c)
        if m is None:
            probs = self.freqs[self.starts[c]: self.starts[c + 1]].astype(np.float64) + 1.0
            m = self._models[c] = constriction.stream.model.Categorical(probs, perfect=False)
        return m

    def encode(self, symbols: np.ndarray) -> np.ndarray:
        """Encode int symbols of shape (C, K): all of channel 0, then channel 1, …"""
        symbols = np.asarray(symbols, dtype=np.int64)
        if symbols.ndim != 2 or symbols.shape[0] != self.channels:
            raise ValueError(f"symbols must have shape ({self.channels}, K)")
        enc = constriction.stream.queue.RangeEncoder()
        for c in range(self.channels):
            size = int(self.starts[c + 1] - self.starts[c]) - 1
            s = symbols[c] - self.offsets[c]
            out = (s < 0) | (s >= size)
            enc.encode(np.where(out, size, s).astype(np.int32), self._model(c))
            for j in np.nonzero(out)[0]:
                encode_escape(enc, int(s[j]) - (size - 1) // 2, (size - 1) // 2)
        return enc.get_compressed()

    def ideal_bits(self, symbols: np.ndarray) -> float:
        """The information content of what :meth:`encode` would write for ``symbols`` (C, K), in bits:
        the size of the stream up to the range coder's final word, at a fraction of the cost."""
        symbols = np.asarray(symbols, dtype=np.int64)
        size = (np.diff(self.starts) - 1)[:, None]
        s = symbols - self.offsets[:, None]
        out = (s < 0) | (s >= size)
        if getattr(self, "_lengths", None) is None:
            self._lengths = _code_lengths(self.freqs)
        bits = float(self._lengths[self.starts[:-1, None] + np.where(out, size, s)].sum())
        if out.any():
            half = np.broadcast_to((size - 1) // 2, s.shape)
            bits += escape_bits(s[out] - half[out], half[out])
        return bits

    def decode(self, words: np.ndarray, count: int) -> np.ndarray:
        dec = constriction.stream.queue.RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))
        out = np.empty((self.channels, count), dtype=np.int64)
        try:
            for c in range(self.channels):
                size = int(self.starts[c + 1] - self.starts[c]) - 1
                s = np.asarray(dec.decode(self._model(c), count), dtype=np.int64)
                for j in np.nonzero(s == size)[0]:
                    s[j] = decode_escape(dec, (size - 1) // 2) + (size - 1) // 2
                out[c] = s + self.offsets[c]
        except (RuntimeError, ValueError, OverflowError, AssertionError) as e:  # constriction asserts on invalid data
            raise CodingError(f"entropy-coded data does not decode: {e}") from None
        return out

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {prefix + "freqs": self.freqs, prefix + "starts": self.starts, prefix + "offsets": self.offsets}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> "ChannelTables":
        return cls(arrays[prefix + "freqs"], arrays[prefix + "starts"], arrays[prefix + "offsets"])
