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
           "level_of_scale", "CodingError"]

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
        return cls(gen, level_offset, exact)

    #: Offsets of lattices without an exact small-integer generator are snapped to this grid.
    SNAP = 64

    def fraction(self, r: int, g: int) -> Fraction:
        """The table offset for c_i/g_ii = k + r/g: exact for exact lattices, else on a 1/64 grid."""
        if self.exact:
            return Fraction(r, g)
        return Fraction(int(round(r * self.SNAP / g)), self.SNAP)

    def fractions(self) -> list[Fraction]:
        """Every table offset f that can occur, as reduced fractions in [−½, ½]."""
        out = set()
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
    """Integer frequency tables of the discretized Gaussian, indexed by (level, offset).

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

    def model(self, level: int, findex: int):
        key = (level, findex)
        m = self._models.get(key)
        if m is None:
            # Frequencies are exact small integers; constriction normalizes them deterministically.
            probs = self.table(level, findex).astype(np.float64) + 1.0
            m = constriction.stream.model.Categorical(probs, perfect=False)
            self._models[key] = m
        return m

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
    p = np.append(mass, escape)
    n = p.size
    total = 1 << PRECISION
    if n >= total:
        raise ValueError("table too large for its precision")
    free = total - n  # every symbol gets at least 1
    extra = np.floor(p / p.sum() * free).astype(np.int64)
    # Hand out the remainder to the largest fractional parts (ties by index): deterministic.
    rem = free - int(extra.sum())
    frac = p / p.sum() * free - extra
    order = np.lexsort((np.arange(n), -frac))
    extra[order[:rem]] += 1
    return extra  # frequency − 1, fits in uint16


class BoxCoder:
    """Encode and decode integer lattice coordinates of many blocks with the box code.

    ``encode(coords, levels)`` takes u of shape (B, n) (int64) and the σ level of every coordinate
    (B, n), returns the range coder's uint32 words.  ``decode(words, levels)`` inverts it exactly.
    """

    ESCAPE_LENGTH_ALPHABET = 64

    def __init__(self, spec: LatticeCodingSpec, tables: ScaleTables):
        self.spec = spec
        self.tables = tables
        self._fidx: dict[int, np.ndarray] = {}
        for g in sorted(set(int(v) for v in np.diagonal(spec.generator))):
            lo = -(g // 2)
            self._fidx[g] = np.array([tables.findex(spec.fraction(r, g)) for r in range(lo, lo + g)],
                                     dtype=np.int64)
        self._uniform = {}

    def _table_levels(self, levels: np.ndarray, i: int) -> np.ndarray:
        return np.clip(levels[:, i] + self.spec.level_offset[i], self.tables.lmin, self.tables.lmax)

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

    def encode(self, coords: np.ndarray, levels: np.ndarray) -> np.ndarray:
        coords = np.ascontiguousarray(coords, dtype=np.int64)
        levels = np.asarray(levels, dtype=np.int64)
        if coords.ndim != 2 or coords.shape[1] != self.spec.dim or levels.shape != coords.shape:
            raise ValueError("coords and levels must both have shape (blocks, n)")
        enc = constriction.stream.queue.RangeEncoder()
        for i in range(self.spec.dim):
            k, fidx = self._offsets(coords, i)
            v = coords[:, i] + k
            tl = self._table_levels(levels, i)
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
                self._encode_escape(enc, int(v[j]), r)
        return enc.get_compressed()

    def decode(self, words: np.ndarray, levels: np.ndarray) -> np.ndarray:
        levels = np.asarray(levels, dtype=np.int64)
        if levels.ndim != 2 or levels.shape[1] != self.spec.dim:
            raise ValueError("levels must have shape (blocks, n)")
        dec = constriction.stream.queue.RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))
        coords = np.zeros(levels.shape, dtype=np.int64)
        try:
            for i in range(self.spec.dim):
                k, fidx = self._offsets(coords, i)
                tl = self._table_levels(levels, i)
                v = np.empty(levels.shape[0], dtype=np.int64)
                escapes = []
                for lvl, fi, idx in self._groups(tl, fidx):
                    r = int(self.tables.radii[lvl - self.tables.lmin])
                    sym = np.asarray(dec.decode(self.tables.model(lvl, fi), idx.size), dtype=np.int64)
                    v[idx] = sym - r
                    esc = sym == 2 * r + 1
                    if esc.any():
                        escapes.extend((int(j), r) for j in idx[esc])
                for j, r in sorted(escapes):
                    v[j] = self._decode_escape(dec, r)
                coords[:, i] = v - k
        except (RuntimeError, ValueError, OverflowError) as e:
            raise CodingError(f"entropy-coded data does not decode: {e}") from None
        return coords

    # Escape: sign, then w = |v| − R − 1 ≥ 0 by Elias-gamma of w+1 with uniform symbols.
    def _u(self, size: int):
        m = self._uniform.get(size)
        if m is None:
            m = self._uniform[size] = constriction.stream.model.Uniform(size)
        return m

    def _encode_escape(self, enc, value: int, radius: int) -> None:
        sign = 0 if value > radius else 1
        w = abs(value) - radius - 1 if sign == 0 else -value - radius - 1
        w1 = w + 1
        nbits = w1.bit_length()
        if nbits > 62:
            raise ValueError("value too large to code")
        enc.encode(np.array([sign], dtype=np.int32), self._u(2))
        enc.encode(np.array([nbits], dtype=np.int32), self._u(self.ESCAPE_LENGTH_ALPHABET))
        rest, nb = w1 - (1 << (nbits - 1)), nbits - 1
        while nb > 0:
            take = min(nb, 16)
            enc.encode(np.array([rest & ((1 << take) - 1)], dtype=np.int32), self._u(1 << take))
            rest >>= take
            nb -= take

    def _decode_escape(self, dec, radius: int) -> int:
        sign = int(dec.decode(self._u(2), 1)[0])
        nbits = int(dec.decode(self._u(self.ESCAPE_LENGTH_ALPHABET), 1)[0])
        if not 1 <= nbits <= 62:
            raise CodingError("corrupt escape code")
        rest, nb, shift = 0, nbits - 1, 0
        while nb > 0:
            take = min(nb, 16)
            rest |= int(dec.decode(self._u(1 << take), 1)[0]) << shift
            shift += take
            nb -= take
        w = rest + (1 << (nbits - 1)) - 1
        mag = w + radius + 1
        return mag if sign == 0 else -mag
