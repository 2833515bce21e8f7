"""The detail layer: what the learned transforms miss, coded as MDCT coefficients on the model's lattice.

The learned transforms saturate: past ≈ 35 kbit/s on speech more bits buy almost nothing, because the
synthesis cannot reproduce the waveform closer than ≈ 11 dB SI-SDR whatever its latent.  At high
bitrates the encoder therefore sends a second layer: the residual (input − decoded base) of each
segment and coded channel at the model's rate, in a sine-windowed MDCT of ``HOP`` samples, in bands.
Each band of each MDCT frame carries an integer energy index e (half-octaves of its RMS; ``E_SILENT``
marks a band sent as zeros); its coefficients, divided by the step Δ = 2^((3e − G − t)/8), are
quantized to the closest points of the model's lattice in blocks of 8 and coded with the model's own
box code at σ level e + G + t (eighths of an octave), where G is the segment's detail step (finer as it
grows) and t the band's tilt.  The step grows as the band's amplitude to the power 3/4, so quantization
noise follows the residual's spectrum three quarters of the way: of the shapings tried (powers 1/4,
1/2, 3/4, 7/8, 1) it was chosen on speech ViSQOL at 32 and 48 kbit/s.  The tilt t = ⌊s·W/8⌋ then
tips the noise across frequency, W being the band centre's distance from 2 kHz in eighths of an octave
and s the segment's slope: speech (ViSQOL's speech mode) is served by finer low bands (s = −3), music
(its audio mode) by finer high ones (s = +2).

Determinism: the entropy decoder sees only integers — the e deltas under a fixed integer table, the
lattice coordinates under the box code's shipped tables at integer levels — so a stream parses
identically everywhere; only the MDCT synthesis is floating point.  formats/ltc-v1.md §9.7 is the
normative description.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from .boxcode import BoxCoder, ChannelTables, CodingError
from .errors import LtcFormatError

__all__ = ["HOP", "E_SILENT", "E_MAX", "SLOPE_MIN", "SLOPE_MAX", "band_edges", "slope_for", "mdct", "imdct",
           "DetailCoder"]

#: MDCT hop (frame advance) at the model's rate: 20 ms at 24 kHz.
HOP = 480
#: Band edges in MDCT bins, for the full band; a file keeps the bands below its input's Nyquist
#: frequency (rounded down to 8 bins), cutting the last one there.
EDGES = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 480)
#: Band energy indices: e = round(2·log2 RMS), E_SILENT for a band sent as zeros.
E_SILENT = -40
E_MAX = 8
#: The first frame's indices are coded as differences from this one.
E_REFERENCE = -20
#: The fixed table of energy-index differences d (|d| ≤ DELTA_RADIUS, then an escape symbol):
#: frequency ⌊20480 / (1 + d²)⌋ for d ≠ 0, 1 for the escape, and d = 0 the rest of 2^16.
DELTA_RADIUS = 24


def _delta_frequencies() -> np.ndarray:
    f = [20480 // (1 + d * d) for d in range(-DELTA_RADIUS, DELTA_RADIUS + 1)] + [1]
    f[DELTA_RADIUS] = 0
    f[DELTA_RADIUS] = (1 << 16) - sum(f)
    return np.array(f, dtype=np.int64)


_DELTA_TABLE = ChannelTables((_delta_frequencies() - 1).astype(np.uint16), np.array([0, 2 * DELTA_RADIUS + 2]),
                             np.array([-DELTA_RADIUS]))
#: Decoded coordinates move this much (in steps) toward zero: the coefficients' density falls off
#: across a quantization cell, so its centre of mass lies nearer zero than the lattice point (chosen
#: among 0, 1/16, 1/8, 3/16 and 1/5 on speech ViSQOL at 32–64 kbit/s).
RECONSTRUCTION_SHRINK = 0.125
#: Each full band's centre against 2 kHz (80 bins), in eighths of an octave: round(8·log2(centre/80)).
TILT_SHAPE = (-35, -22, -16, -12, -9, -7, -5, -3, -1, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 20)
#: Tilt slopes a chunk may carry: the band's tilt is ⌊slope·TILT_SHAPE/8⌋ eighths of an octave.
SLOPE_MIN, SLOPE_MAX = -16, 16
#: The slopes an encoder uses: inputs sampled at up to 16 kHz are coded as speech, others as music
#: (chosen among −6 … 4 on ViSQOL, speech mode at 33 kbit/s and audio mode at 64: see :func:`slope_for`).
SPEECH_SLOPE, MUSIC_SLOPE = -3, 2
#: Bands whose coefficients' σ is below 2^(−3/2) of a step (level −12) are not coded: they decode as
#: zeros (chosen among levels −4, −8, −12, −16 and −24 on speech ViSQOL at 33–66 kbit/s).
SKIP_LEVEL = -12
_CHAN_HEAD = struct.Struct("<II")
BLOCK = 8


def coded_bins(model_rate: int, input_rate: int) -> int:
    """MDCT bins a file codes: those below the input's Nyquist frequency, a multiple of 8 (≥ 8)."""
    nyquist = HOP * min(input_rate, model_rate) // model_rate
    return max(BLOCK, nyquist // BLOCK * BLOCK)


def slope_for(input_rate: int) -> int:
    """The tilt slope an encoder gives a file: speech's at narrow sample rates, music's otherwise.

    Speech scored by ViSQOL's speech mode gains from finer low bands, where music in its audio mode
    loses and gains from finer high bands instead (bench/results/README.md gives the measures)."""
    return SPEECH_SLOPE if input_rate <= 16000 else MUSIC_SLOPE


def band_edges(bins: int) -> list[int]:
    """The band edges of a file coding ``bins`` bins."""
    return [e for e in EDGES if e < bins] + [bins]


def frames_of(length: int) -> int:
    """MDCT frames of a segment of ``length`` samples: every sample is covered by two windows."""
    return -(-length // HOP) + 1


_WINDOW = np.sin(np.pi * (np.arange(2 * HOP) + 0.5) / (2 * HOP))
_BASIS = np.sqrt(2.0 / HOP) * np.cos(np.pi / HOP * (np.arange(2 * HOP)[None, :] + 0.5 + HOP / 2)
                                     * (np.arange(HOP)[:, None] + 0.5))


#: X[k] = Re(e^(−iπ(k + ½)(½ + H/2)/H) · FFT_2H(w·x · e^(−iπn/2H))[k]): the MDCT through one FFT per
#: frame, some 20 times faster than the product with the basis (the encoder takes two per segment).
_PRE_TWIDDLE = _WINDOW * np.exp(-1j * np.pi * np.arange(2 * HOP) / (2 * HOP))
_POST_TWIDDLE = np.sqrt(2.0 / HOP) * np.exp(-1j * np.pi * (np.arange(HOP) + 0.5) * (0.5 + HOP / 2) / HOP)


def mdct(x: np.ndarray) -> np.ndarray:
    """(frames, HOP) coefficients of a segment, zero outside it (orthonormal: TDAC restores it exactly)."""
    f = frames_of(len(x))
    padded = np.zeros((f + 1) * HOP)
    padded[HOP:HOP + len(x)] = x
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * HOP)[::HOP][:f]
    return (np.fft.fft(windows * _PRE_TWIDDLE, axis=1)[:, :HOP] * _POST_TWIDDLE).real


def imdct(coefs: np.ndarray, length: int) -> np.ndarray:
    """The segment of ``length`` samples whose MDCT is ``coefs`` (overlap-add of the windowed frames)."""
    f = coefs.shape[0]
    frames = (coefs @ _BASIS) * _WINDOW
    out = np.zeros((f + 1) * HOP)
    out[:f * HOP].reshape(f, HOP)[:] += frames[:, :HOP]
    out[HOP:(f + 1) * HOP].reshape(f, HOP)[:] += frames[:, HOP:]
    return out[HOP:HOP + length]


class DetailCoder:
    """Codes the residual of one segment and channel, given the model's lattice and box coder."""

    def __init__(self, lattice, coder: BoxCoder, bins: int):
        if lattice.dim != BLOCK:
            raise ValueError("the detail layer codes blocks of 8 coefficients: it needs an 8-dimensional lattice")
        self.lattice = lattice
        self.coder = coder
        self.edges = band_edges(bins)
        self.bins = bins
        self._shape = np.array(TILT_SHAPE[:len(self.edges) - 1], np.int64)

    # -- analysis (encoder side) ---------------------------------------------------------------------
    def energies(self, coefs: np.ndarray) -> np.ndarray:
        """Energy index e (frames, bands) of each band: round(2·log2 RMS), E_SILENT below the range."""
        e = np.empty((coefs.shape[0], len(self.edges) - 1), np.int64)
        for b, (lo, hi) in enumerate(zip(self.edges, self.edges[1:])):
            rms = np.sqrt(np.mean(coefs[:, lo:hi] ** 2, axis=1))
            e[:, b] = np.round(2 * np.log2(np.maximum(rms, 1e-30)))
        e = np.minimum(e, E_MAX)
        return np.where(e <= E_SILENT, E_SILENT, e)

    def tilts(self, slope: int) -> np.ndarray:
        """Each band's tilt t = ⌊slope·W/8⌋ (eighths of an octave; exact integers)."""
        return (slope * self._shape) // 8

    def _blocks(self, e: np.ndarray, g: int, slope: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The coded blocks: frame, first bin, energy index and tilted step G + t of each, frame by
        frame, bin by bin.

        A band is coded unless it is silent or its coefficients would sit far below a step
        (σ level e + G + t < ``SKIP_LEVEL``), where nearly all of them quantize to zero."""
        frames, bins, steps, gs = [], [], [], []
        for b, ((lo, hi), t) in enumerate(zip(zip(self.edges, self.edges[1:]), self.tilts(slope))):
            f = np.nonzero((e[:, b] != E_SILENT) & (self.level(e[:, b], g + t) >= SKIP_LEVEL))[0]
            for start in range(lo, hi, BLOCK):
                frames.append(f)
                bins.append(np.full(f.size, start))
                steps.append(e[f, b])
                gs.append(np.full(f.size, g + t))
        f, s, eb, gb = (np.concatenate(a) for a in (frames, bins, steps, gs))
        order = np.lexsort((s, f))  # frame by frame, bin by bin
        return f[order], s[order], eb[order], gb[order]

    @staticmethod
    def step(e: np.ndarray, g) -> np.ndarray:
        """Quantization step Δ = 2^((3e − g)/8) of blocks with energy index e and tilted step g = G + t."""
        return np.exp2((3.0 * np.asarray(e, np.float64) - g) / 8.0)

    @staticmethod
    def level(e: np.ndarray, g) -> np.ndarray:
        """σ level e + g of blocks with energy index e: log2(RMS/Δ) = e/2 − (3e − g)/8, in eighths."""
        return np.asarray(e, np.int64) + g

    def levels(self, e: np.ndarray, g) -> np.ndarray:
        return np.repeat(self.level(e, g)[:, None], BLOCK, axis=1)

    def quantize(self, coefs: np.ndarray, e: np.ndarray, g: int, slope: int) -> np.ndarray:
        """Lattice coordinates (blocks, 8) of the coded blocks at detail step ``g`` and tilt ``slope``."""
        return self._quantized(coefs, e, g, slope)[0]

    def _quantized(self, coefs: np.ndarray, e: np.ndarray, g: int, slope: int) -> tuple[np.ndarray, np.ndarray]:
        """The coded blocks' coordinates and σ levels (blocks, 8)."""
        f, s, eb, gb = self._blocks(e, g, slope)
        if f.size == 0:
            return np.zeros((0, BLOCK), np.int64), np.zeros((0, BLOCK), np.int64)
        idx = s[:, None] + np.arange(BLOCK)[None, :]
        v = coefs[f[:, None], idx] / self.step(eb, gb)[:, None]
        points = self.lattice.closest(torch.from_numpy(v))
        return self.lattice.coordinates(points).numpy().astype(np.int64), self.levels(eb, gb)

    def bits(self, coefs: np.ndarray, e: np.ndarray, g: int, slope: int) -> float:
        """Information content of :meth:`encode`'s two streams, in bits (without running the coder)."""
        u, levels = self._quantized(coefs, e, g, slope)
        coef_bits = self.coder.ideal_bits(u, levels) if len(u) else 0.0
        return _DELTA_TABLE.ideal_bits(self._deltas(e)) + coef_bits

    @staticmethod
    def _deltas(e: np.ndarray) -> np.ndarray:
        prev = np.vstack([np.full((1, e.shape[1]), E_REFERENCE), e[:-1]])
        return (e - prev).reshape(1, -1)

    # -- the streams ---------------------------------------------------------------------------------
    def spectrum(self, x: np.ndarray) -> np.ndarray:
        """The coded bins (frames, bins) of a segment's samples (float64 whatever their type)."""
        return mdct(x)[:, :self.bins]

    def encode(self, coefs: np.ndarray, g: int, slope: int) -> bytes:
        """The payload of one segment and channel: the energy indices and coefficients of its
        residual's coded bins ``coefs`` (:meth:`spectrum`)."""
        e = self.energies(coefs)
        u, levels = self._quantized(coefs, e, g, slope)
        side = _DELTA_TABLE.encode(self._deltas(e))
        words = self.coder.encode(u, levels) if len(u) else np.zeros(0, np.uint32)
        return _CHAN_HEAD.pack(side.size, words.size) + side.astype("<u4").tobytes() + words.astype("<u4").tobytes()

    def decode_integers(self, payload: bytes, pos: int, length: int, g: int,
                        slope: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Energy indices e (frames, bands) and coordinates u of one channel's payload at ``pos``;
        returns them and the position after it."""
        frames = frames_of(length)
        bands = len(self.edges) - 1
        if len(payload) - pos < _CHAN_HEAD.size:
            raise LtcFormatError("detail chunk is truncated")
        ns, nc = _CHAN_HEAD.unpack_from(payload, pos)
        pos += _CHAN_HEAD.size
        max_words = 64 + 4 * frames * (bands + self.bins)  # > 128 bits per symbol is corrupt
        if ns + nc > max_words or 4 * (ns + nc) > len(payload) - pos:
            raise LtcFormatError("detail chunk is truncated or its stream sizes are invalid")
        words = np.frombuffer(payload, "<u4", ns + nc, pos).astype(np.uint32)
        pos += 4 * (ns + nc)
        try:
            d = _DELTA_TABLE.decode(words[:ns], frames * bands).reshape(frames, bands)
            e = np.cumsum(d, axis=0) + E_REFERENCE
            if (e < E_SILENT).any() or (e > E_MAX).any():
                raise CodingError("energy index out of range")
            _, _, eb, gb = self._blocks(e, g, slope)
            u = self.coder.decode(words[ns:], self.levels(eb, gb)) if eb.size else np.zeros((0, BLOCK), np.int64)
        except CodingError as err:
            raise LtcFormatError(f"detail data is damaged: {err}") from None
        return e, u, pos

    def reconstruct(self, e: np.ndarray, u: np.ndarray, g: int, slope: int, length: int) -> np.ndarray:
        """The decoded residual (length,) of energy indices and coordinates."""
        coefs = np.zeros((frames_of(length), HOP))
        f, s, eb, gb = self._blocks(e, g, slope)
        if f.size:
            points = self.lattice.points(torch.from_numpy(u), torch.float64).numpy()
            points = np.sign(points) * np.maximum(np.abs(points) - RECONSTRUCTION_SHRINK, 0.0)
            idx = s[:, None] + np.arange(BLOCK)[None, :]
            coefs[f[:, None], idx] = points * self.step(eb, gb)[:, None]
        return imdct(coefs, length)
