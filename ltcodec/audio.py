"""Audio in and out of .ltc: channels, resampling, segments, rate control and concealment.

Rules (also in formats/ltc-v1.md §7):

* Input through soundfile (WAV, FLAC, Ogg/Vorbis, AIFF, …), any sample rate from 8 to 192 kHz, any
  sample format; 1 to 8 channels.  Mono is coded as is, stereo as mid = (L+R)/2 and side = (L−R)/2,
  3–8 channels each on its own.  The model codes at its own rate (24 kHz for the shipped model): the
  input is resampled to it with soxr and the output back to the input's rate, trimmed to the exact
  number of input frames.
* The signal is cut into segments of ``SEGMENT_FRAMES`` latent frames (4 s at 24 kHz).  Each segment is
  one ``SEGM`` chunk, entropy-coded on its own, so a damaged chunk loses only its own 4 s: with
  ``conceal=True`` the decoder puts silence there and decodes the rest.  The transforms see
  ``HALO_FRAMES`` of context on each side of a segment, so segments join without seams.
* Above ``DETAIL_FROM_KBPS`` per coded channel a ``kbps`` target is met with a detail layer
  (:mod:`ltcodec.detail`, §9.7): the base is coded at a quarter of the target and the residual of each
  segment — input minus decoded base, at the model's rate — in one ``DETL`` chunk after its ``SEGM``.
  The encoder decodes its own base to know the residual, so it holds each segment's input spectrum
  (float16), turned into the residual's in place, until the file is written.
* Encoding and decoding stream through the file: memory is bounded by the latents (≈ 30 kB per
  second per channel) and a few segments of samples, whatever the file's length.
* Output is WAV: 16-bit PCM by default (clipped to full scale, never wrapped), or 32-bit float; RF64
  past 4 GiB.  Its header is written first (the frame count is known), so it streams to pipes
  (:mod:`ltcodec.wav`).
"""

from __future__ import annotations

import itertools
import math
import os
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
import soxr
import torch

from .audio_codec import AudioCodecModel
from .boxcode import CodingError
from .container import (AUDIO_DETAIL_VERSION, AUDIO_VERSION, DETAIL_MAX, DETAIL_MIN, MAX_AUDIO_CHANNELS, MAX_CHUNKS,
                        MEDIA_AUDIO, MEDIA_IMAGE, STEREO_INDEPENDENT, STEREO_MID_SIDE, AudioHeader, ModelId,
                        media_kind, read_container, write_container)
from .detail import SLOPE_MAX, SLOPE_MIN, DetailCoder, coded_bins, slope_for
from .errors import LtcError, LtcFormatError, LtcInputError
from .latent_coding import Streams
from .ratecontrol import search_quality
from .workers import in_order, single_threaded_workers
from .wav import WavWriter, as_wav_samples, wav_size
from .zoo import load_audio_model, model_for_file

__all__ = ["encode_audio", "decode_audio", "audio_info", "encode_audio_file", "decode_audio_file",
           "decoded_integers", "AudioInfo", "Progress", "MIN_INPUT_RATE", "MAX_INPUT_RATE"]

SEGMENT_FRAMES = 300
HALO_FRAMES = 8
MIN_INPUT_RATE = 8000
MAX_INPUT_RATE = 192_000
READ_BLOCK = 1 << 16
RATE_SEARCH_SEGMENTS = 32
_KNOWN = frozenset({b"SEGM", b"DETL"})
#: Above this many kbit/s per coded channel, ``kbps`` targets are met with a detail layer (§9.7) on a
#: base coded at ``DETAIL_BASE_SHARE`` of the target: the learned transforms saturate near 35 kbit/s.
DETAIL_FROM_KBPS = 26.0
DETAIL_BASE_SHARE = 0.25
_SEG_HEAD = struct.Struct("<I")
_DETAIL_HEAD = struct.Struct("<Ihb")  # segment index, the segment's detail step and tilt slope
_CHAN_HEAD = struct.Struct("<II")

# ----------------------------------------------------------------------------------------------------
# Channels and resampling
# ----------------------------------------------------------------------------------------------------

def _to_coded(block: np.ndarray, mid_side: bool) -> np.ndarray:
    if mid_side:
        left, right = block[:, 0], block[:, 1]
        return np.stack([(left + right) * 0.5, (left - right) * 0.5], axis=1)
    return block


def _from_coded(block: np.ndarray, mid_side: bool) -> np.ndarray:
    if mid_side:
        mid, side = block[:, 0], block[:, 1]
        return np.stack([mid + side, mid - side], axis=1)
    return block


class _Resampler:
    """Streaming soxr resampler of (n, C) float32 blocks, or a pass-through at equal rates."""

    def __init__(self, rate_in: int, rate_out: int, channels: int):
        self.stream = None if rate_in == rate_out else soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32")

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return block
        return self.stream.resample_chunk(np.ascontiguousarray(block, np.float32), last=last)


# ----------------------------------------------------------------------------------------------------
# Threads: each transform runs on one thread; segments and channels side by side
# ----------------------------------------------------------------------------------------------------

def _run(job: Callable[[], object]):
    return job()


def _in_groups(pool: ThreadPoolExecutor | None, workers: int, jobs: Iterator[Callable[[], object]],
               size: int) -> Iterator[list]:
    """Results of ``jobs`` (one per coded channel of a segment, ``size`` per segment), in order, in lists
    of one segment's results.  Each transform runs on one thread and the machine's threads work on
    several channels and segments at once (:mod:`ltcodec.workers`), so the output does not depend on
    the thread count; at most ``2 × workers`` segments are in flight, which bounds memory on files of
    any length."""
    results = in_order(pool, _run, jobs, 2 * workers * size)
    while group := list(itertools.islice(results, size)):
        yield group


#: ``progress(stage, done, total)``: seconds of audio done of ``total`` (None when not known) in a stage
#: ("analysing" and "coding" when encoding, "decoding"), for a progress bar on long files.
Progress = Callable[[str, float, "float | None"], None]


def _no_progress(stage: str, done: float, total: float | None) -> None:
    pass


# ----------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------

def _check_signal_shape(channels: int, rate: int) -> None:
    if not 1 <= channels <= MAX_AUDIO_CHANNELS:
        raise LtcInputError(f"audio with {channels} channels is not supported (1 to {MAX_AUDIO_CHANNELS})")
    if not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:
        raise LtcInputError(f"sample rate {rate} Hz is outside {MIN_INPUT_RATE}…{MAX_INPUT_RATE}")


def _analyse(m: AudioCodecModel, blocks: Iterator[np.ndarray], rate: int, channels: int,
             workers: tuple[ThreadPoolExecutor | None, int], progress: Progress = _no_progress,
             seconds: float | None = None, keep: Callable[[np.ndarray], np.ndarray] | None = None
             ) -> tuple[list[list], int, list[list]]:
    """Latents y (before gains) of every segment and coded channel, from blocks of input samples, with
    the transforms on ``workers`` (:func:`ltcodec.workers.single_threaded_workers`); with ``keep``,
    also ``keep`` of each segment's model-rate samples (a detail layer keeps their spectrum).

    Segment k covers model-rate samples [k·S, k·S + S) (the last one is shorter) and is analysed on
    the window that adds ``HALO_FRAMES`` hops on each side, clipped at the signal's ends (zeros past
    its end); the window depends only on the signal, never on how it arrived in blocks.
    """
    hop = m.hop
    seg, halo = SEGMENT_FRAMES * hop, HALO_FRAMES * hop
    mid_side = channels == 2
    coded = channels
    resample = _Resampler(rate, m.config.sample_rate, coded)
    n_in = 0

    def jobs() -> Iterator[Callable[[], torch.Tensor]]:
        """One analysis per coded channel of each segment, as soon as its window has arrived."""
        nonlocal n_in
        buf = np.zeros((0, coded), np.float32)
        start = 0  # model-rate index of buf[0]
        k = 0

        def segment(end: int, total: int) -> Iterator[Callable[[], torch.Tensor]]:
            a, b = k * seg, min(k * seg + seg, end)
            w0, w1 = max(a - halo, 0), min(b + halo, total)
            win = buf[w0 - start: w1 - start]
            if len(win) < w1 - w0:
                win = np.concatenate([win, np.zeros((w1 - w0 - len(win), coded), np.float32)])
            lo, hi = (a - w0) // hop, (b - w0) // hop
            for c in range(coded):
                yield lambda x=win[:, c]: (m.analysis(x)[..., lo:hi].contiguous(),
                                           keep(x[lo * hop: hi * hop]) if keep else None)

        for block in blocks:
            n_in += len(block)
            buf = np.concatenate([buf, resample(_to_coded(block, mid_side))])
            while start + len(buf) >= (k + 1) * seg + halo:
                yield from segment((k + 1) * seg, start + len(buf))
                k += 1
                drop = k * seg - halo - start
                if drop > 0:
                    buf, start = buf[drop:], start + drop
        if n_in == 0:
            raise LtcInputError("the audio has no samples")
        buf = np.concatenate([buf, resample(np.zeros((0, coded), np.float32), last=True)])
        frames = max(4, -(-math.ceil((start + len(buf)) / hop) // 4) * 4)
        total = frames * hop
        while k * seg < total:
            yield from segment(total, total)
            k += 1

    latents: list[list] = []
    kept: list[list] = []
    for ys in _in_groups(*workers, jobs(), coded):
        latents.append([y for y, _ in ys])
        if keep:
            kept.append([x for _, x in ys])
        progress("analysing", min(len(latents) * seg / m.config.sample_rate, seconds or math.inf), seconds)
    if seconds:
        progress("analysing", seconds, seconds)
    return latents, n_in, kept


def _synthesize(m: AudioCodecModel, prev: list | None, cur: list, nxt: list | None, c: int) -> np.ndarray:
    """Model-rate samples of one segment's channel ``c`` from its decoded latent, with ``HALO_FRAMES``
    of its neighbours' on each side (None at the ends or for a lost neighbour)."""
    parts = ([prev[c][..., -HALO_FRAMES:]] if prev is not None else []) + [cur[c]] + \
            ([nxt[c][..., :HALO_FRAMES]] if nxt is not None else [])
    left = parts[0].shape[-1] if prev is not None else 0
    frames = cur[c].shape[-1]
    return m.synthesis(torch.cat(parts, dim=-1))[left * m.hop: (left + frames) * m.hop]


# -- the detail layer (§9.7) ---------------------------------------------------------------------------

def _uses_detail(m: AudioCodecModel, kbps: float | None, channels: int) -> bool:
    return kbps is not None and kbps > DETAIL_FROM_KBPS * channels and m.lattice.dim == 8


def _input_spectrum(coder: DetailCoder, x: np.ndarray) -> np.ndarray:
    """What an encoder with a detail layer keeps of a segment: its MDCT (float16: rounding at −78 dB of
    the signal, some 70 dB below the residual that is coded), about the size of its samples."""
    return coder.spectrum(x).astype(np.float16)


def _residual_spectra(m: AudioCodecModel, latents: list[list], spectra: list[list], quality: float,
                      coder: DetailCoder, workers, progress: Progress, seconds: float) -> list[list]:
    """Turns each segment's input spectrum into that of input − decoded base at ``quality`` (the MDCT
    is linear), in place: what the decoder adds the detail layer to.  Holding one array per segment and
    channel, from analysis to writing, keeps an hour of stereo within a few hundred MiB.  Reported as
    the stage "decoding base" (a synthesis per segment: as long as decoding the file)."""
    coded = len(latents[0])

    def decoded(k: int):
        if k < 0 or k >= len(latents):
            return None
        return [m.quantized_latent(y, quality) for y in latents[k]]

    def jobs():
        prev, cur, nxt = None, decoded(0), decoded(1)
        for k in range(len(latents)):
            for c in range(coded):
                def one(k=k, c=c, prev=prev, cur=cur, nxt=nxt):
                    x = spectra[k][c]
                    x[:] = x.astype(np.float64) - coder.spectrum(_synthesize(m, prev, cur, nxt, c))
                yield one
            prev, cur, nxt = cur, nxt, decoded(k + 2)

    done = 0.0
    for k, _ in enumerate(_in_groups(*workers, jobs(), coded)):
        done = min(done + _segment_seconds(m, latents[k]), seconds)
        progress("decoding base", done, seconds)
    return spectra


def _detail_payload(coder: DetailCoder, k: int, spectra: list, g: int, slope: int) -> bytes:
    return _DETAIL_HEAD.pack(k, g, slope) + b"".join(coder.encode(s.astype(np.float64), g, slope) for s in spectra)


def _detail_bits(coder: DetailCoder, analysed: list, g: int, slope: int) -> float:
    """Expected bits of a segment's detail chunk at step ``g`` (ideal code lengths, as :func:`_segment_bits`),
    from each coded channel's (coefficients, energy indices): these do not depend on the step."""
    bits = 8.0 * (_DETAIL_HEAD.size + _CHUNK_OVERHEAD)
    for coefs, e in analysed:
        bits += 8.0 * _CHAN_HEAD.size + coder.bits(coefs, e, g, slope) + 2 * _STREAM_ROUNDING_BITS
    return bits


def _choose_detail_steps(m: AudioCodecModel, latents: list[list], spectra: list[list], quality: float,
                         kbps: float, coder: DetailCoder, slope: int) -> list[int]:
    """Each segment's detail step G, for a total bitrate (base at ``quality`` plus detail) of ``kbps``.

    The rate grows with G, by bisection over the segments :func:`_rate_sample` picks, but in steps that
    can be large (+10% and more where many bands share one energy and start being coded together), so
    the two steps around the target are spread over the segments in the proportion that meets it."""
    sample = _rate_sample(len(latents))
    seconds = sum(_segment_seconds(m, latents[i]) for i in sample)
    base = sum(_segment_bits(m, latents[i], quality) for i in sample)
    cache: dict[int, float] = {}
    analysed = {i: [(c, coder.energies(c)) for c in (s.astype(np.float64) for s in spectra[i])] for i in sample}

    def rate(g: int) -> float:
        if g not in cache:
            cache[g] = (base + sum(_detail_bits(coder, analysed[i], g, slope) for i in sample)) / seconds / 1000.0
        return cache[g]

    lo, hi = -16, 48  # where speech and music land; widened if the target lies outside
    while lo > DETAIL_MIN and rate(lo) > kbps:
        lo = max(DETAIL_MIN, lo - 48)
    while hi < DETAIL_MAX and rate(hi) < kbps:
        hi = min(DETAIL_MAX, hi + 48)
    if rate(lo) >= kbps or rate(hi) <= kbps:
        return [lo if rate(lo) >= kbps else hi] * len(latents)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if rate(mid) < kbps:
            lo = mid
        else:
            hi = mid
    share = (kbps - rate(lo)) / (rate(hi) - rate(lo))  # of segments at the finer step, spread evenly
    return [hi if math.floor((k + 1) * share) > math.floor(k * share) else lo for k in range(len(latents))]


def _segment_payload(m: AudioCodecModel, k: int, ys: list, quality: float) -> bytes:
    parts = [_SEG_HEAD.pack(k)]
    for y in ys:
        s = m.compress_latent(y, quality)
        parts.append(_CHAN_HEAD.pack(s.z_words.size, s.y_words.size))
        parts.append(s.z_words.astype("<u4").tobytes() + s.y_words.astype("<u4").tobytes())
    return b"".join(parts)


def _segment_seconds(m: AudioCodecModel, ys: list) -> float:
    return ys[0].shape[-1] * m.hop / m.config.sample_rate


#: Bytes a segment's chunk adds to its payload in the container (tag, length, CRC-32).
_CHUNK_OVERHEAD = 12
#: Mean bits a stream's final 32-bit word adds to its information content.
_STREAM_ROUNDING_BITS = 16


def _segment_bits(m: AudioCodecModel, ys: list, quality: float) -> float:
    """Expected bits of a segment's chunk at ``quality``, from the ideal code lengths of its streams
    (measured within 0.1% of the real chunk on music at 3–80 kbit per segment and channel)."""
    bits = 8.0 * (_SEG_HEAD.size + _CHUNK_OVERHEAD)
    for y in ys:
        bits += 8.0 * _CHAN_HEAD.size + m.latent_bits(y, quality) + 2 * _STREAM_ROUNDING_BITS
    return bits


def _rate_sample(n: int) -> list[int]:
    """The segments the rate search measures first: all of a file up to ``RATE_SEARCH_SEGMENTS``
    segments, else that many spread evenly from the first to the last."""
    if n <= RATE_SEARCH_SEGMENTS:
        return list(range(n))
    return sorted({round(i * (n - 1) / (RATE_SEARCH_SEGMENTS - 1)) for i in range(RATE_SEARCH_SEGMENTS)})


def _search_quality(m: AudioCodecModel, latents: list[list], kbps: float, segments: list[int], q0: float,
                    tolerance: float, trials: int) -> float:
    """The quality whose bitrate over ``segments`` is nearest ``kbps``, by :func:`search_quality`."""
    seconds = sum(_segment_seconds(m, latents[i]) for i in segments)

    def log_error(q: float) -> float:
        bits = sum(_segment_bits(m, latents[i], q) for i in segments)
        return math.log(bits / seconds / 1000.0) - math.log(kbps)

    # The first step's slope: that of the trained rate targets around q0 (steeper at the lowest qualities).
    steps = np.diff(np.log(np.asarray(m.config.target_kbps, np.float64)))
    slope = float(steps[min(max(int(q0) - 1, 0), len(steps) - 1)]) or 0.3
    tried = search_quality(log_error, q0, float(m.qualities), slope, lambda e: abs(e) < tolerance, trials)
    return min(tried, key=lambda q: abs(tried[q]))


def _choose_quality(m: AudioCodecModel, latents: list[list], kbps: float) -> float:
    """The quality whose bitrate over the file is closest to ``kbps``.

    Log-rate is close to linear in quality, so a secant search started from the bitrates the model's
    qualities were trained for lands within 2% in 2–5 trials (up to 8 between the lowest qualities, where
    log-rate bends).  Trials use the ideal code lengths of the streams (:meth:`latent_bits`), not the
    range coder.  They run on all of a file up to ``RATE_SEARCH_SEGMENTS`` segments; a longer file is
    searched on a spread of that many segments first, then checked whole, and the search goes on over the
    whole file when that is more than 3% off (a file whose sampled segments are not typical of it).
    """
    n = len(latents)
    sample = _rate_sample(n)
    start = float(np.interp(math.log(kbps), np.log(np.asarray(m.config.target_kbps, np.float64) * len(latents[0])),
                            np.arange(1, m.qualities + 1)))
    q = _search_quality(m, latents, kbps, sample, start, math.log(1.02), 8)
    if len(sample) < n:
        q = _search_quality(m, latents, kbps, list(range(n)), q, math.log(1.03), 3)
    return q


def _encode_blocks(blocks: Iterator[np.ndarray], rate: int, channels: int, frames_hint: int | None,
                   quality: float | None, kbps: float | None, model, progress: Progress | None = None) -> bytes:
    if quality is not None and kbps is not None:
        raise LtcInputError("give either quality or kbps, not both")
    _check_signal_shape(channels, rate)
    m = model if isinstance(model, AudioCodecModel) else load_audio_model(model)
    if kbps is not None:
        if not kbps > 0:
            raise LtcInputError(f"target bitrate must be positive, got {kbps}")
    elif quality is not None and not 1.0 <= quality <= m.qualities:
        raise LtcInputError(f"quality must be between 1 and {m.qualities}, got {quality}")
    with torch.no_grad(), single_threaded_workers() as workers:
        progress = progress or _no_progress
        seconds = frames_hint / rate if frames_hint else None
        coder = DetailCoder(m.lattice, m.y_coder, coded_bins(m.config.sample_rate, rate)) \
            if _uses_detail(m, kbps, channels) else None
        keep = (lambda x: _input_spectrum(coder, x)) if coder else None
        latents, frames, spectra = _analyse(m, blocks, rate, channels, workers, progress, seconds, keep=keep)
        seconds = frames / rate
        steps = None
        if coder:
            # Quality and step are searched in turn: the base's rate first, then the detail's on top.
            q = round(_choose_quality(m, latents, kbps * DETAIL_BASE_SHARE) * 256) / 256
            spectra = _residual_spectra(m, latents, spectra, q, coder, workers, progress, seconds)
            slope = slope_for(rate)
            steps = _choose_detail_steps(m, latents, spectra, q, kbps, coder, slope)
        elif kbps is not None:
            q = _choose_quality(m, latents, kbps)
        else:
            q = round((4.0 if quality is None else float(quality)) * 256) / 256
        chunks = []
        for k, ys in enumerate(latents):
            chunks.append((b"SEGM", _segment_payload(m, k, ys, q)))
            if steps is not None:
                chunks.append((b"DETL", _detail_payload(coder, k, spectra[k], steps[k], slope)))
                spectra[k] = None
            progress("coding", min((k + 1) * SEGMENT_FRAMES * m.hop / m.config.sample_rate, seconds), seconds)
    head = AudioHeader(rate, frames, channels, q, m.config.sample_rate, SEGMENT_FRAMES,
                       STEREO_MID_SIDE if channels == 2 else STEREO_INDEPENDENT, m.config.lattice,
                       detail=None if steps is None else min(steps))
    return write_container(head.pack(), ModelId(m.name, bytes.fromhex(m.sha256)), chunks,
                           AUDIO_VERSION if steps is None else AUDIO_DETAIL_VERSION)


def _as_float(data: np.ndarray) -> np.ndarray:
    """soundfile's conventions: float in [-1, 1], or int16/int32 full scale."""
    a = np.asarray(data)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0:
        raise LtcInputError(f"audio arrays are (frames,) or (frames, channels) with frames ≥ 1, got shape {a.shape}")
    if a.dtype == np.int16:
        return a.astype(np.float32) / 32768.0
    if a.dtype == np.int32:
        return (a.astype(np.float64) / 2147483648.0).astype(np.float32)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise LtcInputError("audio contains NaN or infinite samples")
        return a.astype(np.float32)
    raise LtcInputError(f"unsupported sample type {a.dtype} (use float, int16 or int32)")


def encode_audio(data: np.ndarray, samplerate: int, quality: float | None = None, kbps: float | None = None,
                 model: str | AudioCodecModel | None = None) -> bytes:
    """Encode a signal in soundfile's layout ((frames,) or (frames, channels); float, int16 or int32).

    ``quality`` is 1 … 8 (fractions allowed, default 4); ``kbps`` instead finds the quality whose
    bitrate (all channels together) is closest to it.
    """
    a = _as_float(data)
    rate = int(samplerate)
    blocks = (a[i:i + READ_BLOCK] for i in range(0, len(a), READ_BLOCK))
    return _encode_blocks(blocks, rate, a.shape[1], len(a), quality, kbps, model)


def _open_sound(source) -> sf.SoundFile:
    try:
        return sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        name = getattr(source, "name", source)
        raise LtcInputError(f"{name} is not a readable audio file: {e}") from None


def encode_audio_file(source, quality: float | None = None, kbps: float | None = None,
                      model: str | AudioCodecModel | None = None, progress: Progress | None = None) -> bytes:
    """Encode an audio file (path or binary file object) read in blocks, so its length does not matter.

    ``progress(stage, done, total)`` is told the seconds analysed, then coded (see :data:`Progress`).
    """
    with _open_sound(source) as f:
        rate, channels = f.samplerate, f.channels
        _check_signal_shape(channels, rate)

        def blocks():
            try:
                for block in f.blocks(READ_BLOCK, dtype="float32", always_2d=True):
                    if not np.isfinite(block).all():
                        raise LtcInputError("audio contains NaN or infinite samples")
                    yield block
            except (sf.LibsndfileError, RuntimeError) as e:
                raise LtcInputError(f"cannot read the audio: {e}") from None

        frames = f.frames if f.seekable() and 0 < f.frames < 2 ** 62 else None
        return _encode_blocks(blocks(), rate, channels, frames, quality, kbps, model, progress)


# ----------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------

@dataclass
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    duration: float
    quality: float
    lattice: str
    model: str
    model_sha256: str
    model_rate: int
    segments: int
    bytes: int
    kbps: float
    channel_coding: str
    version: str
    damaged: int
    detail_step: int | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__, kind="audio")


def _parse(data: bytes, conceal: bool):
    if media_kind(data) == MEDIA_IMAGE:
        raise LtcFormatError("this .ltc file holds an image, not audio")
    c = read_container(data, _KNOWN, recover=_KNOWN if conceal else frozenset())
    if c.media != MEDIA_AUDIO:
        raise LtcFormatError("this .ltc file holds an image, not audio")
    return c, AudioHeader.unpack(c.head)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _layout(hd: AudioHeader, hop: int, c, conceal: bool) -> list[int]:
    """Latent frames of each segment, from the header alone, once the header's segment count is checked
    against the file ``c``: a header is not trusted with the size of a list, nor with segments the file
    does not hold — unless concealing, and only where the file shows damage (a skipped chunk or a lost
    tail): an intact file that lacks segments is inconsistent, not damaged, and a concealing decoder
    would otherwise synthesize all the silence its header claims."""
    length = _ceil_div(hd.frames * hd.model_rate, hd.sample_rate)  # exact integers, as §9.3 says
    frames = max(4, 4 * _ceil_div(_ceil_div(length, hop), 4))
    n = _ceil_div(frames, hd.segment_frames)
    if n > MAX_CHUNKS:
        raise LtcFormatError(f"the header declares {n} segments, more than a file can hold ({MAX_CHUNKS})")
    present = len(c.get(b"SEGM"))
    if n > present and not (conceal and c.damaged):
        raise LtcFormatError(f"{n - present} of {n} segments are missing"
                             + (" from an undamaged file" if conceal else ""))
    return [min(hd.segment_frames, frames - k * hd.segment_frames) for k in range(n)]


def _segments(c, hd: AudioHeader, n: int, tag: bytes = b"SEGM") -> dict[int, bytes]:
    """The segment (or detail) chunks by index; :func:`_layout` has checked that no segment chunk is
    missing unless concealing, :func:`_details` that no detail chunk is."""
    found: dict[int, bytes] = {}
    for payload in c.get(tag):
        if len(payload) < _SEG_HEAD.size:
            raise LtcFormatError("segment chunk is too short")
        (k,) = _SEG_HEAD.unpack_from(payload)
        if k >= n:
            raise LtcFormatError(f"segment {k} is beyond the {n} segments of this file")
        if k in found:
            raise LtcFormatError(f"segment {k} appears twice")
        found[k] = payload
    return found


def _details(c, hd: AudioHeader, n: int, conceal: bool) -> dict[int, bytes]:
    """The detail chunks by segment: one for every segment in a file with a detail layer (a segment
    without one is only allowed where a concealing decoder found damage), none in a file without."""
    found = _segments(c, hd, n, b"DETL")
    if hd.detail is None:
        if found:
            raise LtcFormatError("detail chunks in a file whose header declares no detail layer")
        return found
    missing = n - len(found)
    if missing and not (conceal and c.damaged):
        raise LtcFormatError(f"{missing} of {n} detail chunks are missing")
    return found


def _detail_coder(m: AudioCodecModel, hd: AudioHeader) -> DetailCoder:
    if m.lattice.dim != 8:
        raise LtcFormatError("this file has a detail layer, which needs a model with an 8-dimensional lattice")
    return DetailCoder(m.lattice, m.y_coder, coded_bins(hd.model_rate, hd.sample_rate))


def _decode_detail(coder: DetailCoder, hd: AudioHeader, payload: bytes, length: int) -> tuple[int, int, list]:
    """The step G, the tilt slope and the (e, u) of every coded channel of a detail chunk."""
    if len(payload) < _DETAIL_HEAD.size:
        raise LtcFormatError("detail chunk is too short")
    _, g, slope = _DETAIL_HEAD.unpack_from(payload)
    if not DETAIL_MIN <= g <= DETAIL_MAX:
        raise LtcFormatError(f"detail step {g} is outside {DETAIL_MIN}…{DETAIL_MAX}")
    if not SLOPE_MIN <= slope <= SLOPE_MAX:
        raise LtcFormatError(f"detail tilt slope {slope} is outside {SLOPE_MIN}…{SLOPE_MAX}")
    pos, out = _DETAIL_HEAD.size, []
    for _ in range(hd.channels):
        e, u, pos = coder.decode_integers(payload, pos, length, g, slope)
        out.append((e, u))
    if pos != len(payload):
        raise LtcFormatError("detail chunk has trailing bytes")
    return g, slope, out


def _decode_segment(m: AudioCodecModel, hd: AudioHeader, payload: bytes, frames: int) -> list:
    coded = hd.channels
    pos = _SEG_HEAD.size
    out = []
    max_words = 64 + 4 * frames * (m.config.M + m.config.N)  # > 128 bits per symbol is corrupt
    for _ in range(coded):
        if len(payload) - pos < _CHAN_HEAD.size:
            raise LtcFormatError("segment chunk is truncated")
        nz, ny = _CHAN_HEAD.unpack_from(payload, pos)
        pos += _CHAN_HEAD.size
        if nz + ny > max_words or 4 * (nz + ny) > len(payload) - pos:
            raise LtcFormatError("segment chunk is truncated or its stream sizes are invalid")
        words = np.frombuffer(payload, "<u4", nz + ny, pos).astype(np.uint32)
        pos += 4 * (nz + ny)
        try:
            out.append(m.decompress_latent(Streams(words[:nz], words[nz:], (1, frames)), hd.quality))
        except CodingError as e:
            raise LtcFormatError(f"segment data is damaged: {e}") from None
    if pos != len(payload):
        raise LtcFormatError("segment chunk has trailing bytes")
    return out


def _model_rate_segments(m: AudioCodecModel, c, hd: AudioHeader, conceal: bool,
                         workers: tuple[ThreadPoolExecutor | None, int]) -> Iterator[np.ndarray]:
    """Decoded (n, channels) model-rate samples, segment by segment, with halos from the neighbours,
    the transforms on ``workers`` (:func:`ltcodec.workers.single_threaded_workers`)."""
    if hd.model_rate != m.config.sample_rate:
        raise LtcFormatError(f"header model rate {hd.model_rate} does not match the model's {m.config.sample_rate}")
    if hd.lattice != m.config.lattice:
        raise LtcFormatError(f"header lattice {hd.lattice} does not match the model's {m.config.lattice}")
    layout = _layout(hd, m.hop, c, conceal)
    payloads = _segments(c, hd, len(layout))
    details = _details(c, hd, len(layout), conceal)
    coder = _detail_coder(m, hd) if hd.detail is not None else None
    hop = m.hop

    def latents(k: int):
        if k < 0 or k >= len(layout) or k not in payloads:
            return None
        try:
            return _decode_segment(m, hd, payloads[k], layout[k])
        except LtcFormatError:
            if conceal:
                return None
            raise

    def detail(k: int):
        """Segment k's detail step, tilt slope and (e, u) per channel, or None (no detail layer, or a lost chunk)."""
        if coder is None or k not in details:
            return None
        try:
            return _decode_detail(coder, hd, details[k], layout[k] * hop)
        except LtcFormatError:
            if conceal:
                return None
            raise

    def jobs() -> Iterator[Callable[[], np.ndarray]]:
        """One synthesis per channel of each segment (silence for a lost one), decoding the latents of
        the segment after next meanwhile."""
        prev, cur, nxt = None, latents(0), latents(1)
        for k, frames in enumerate(layout):
            extra = detail(k) if cur is not None else None
            for c_i in range(hd.channels):
                if cur is None:
                    yield lambda n=frames * hop: np.zeros(n, np.float32)
                    continue

                def one(c_i=c_i, prev=prev, cur=cur, nxt=nxt, extra=extra, frames=frames) -> np.ndarray:
                    x = _synthesize(m, prev, cur, nxt, c_i)
                    if extra is not None:
                        g, slope, parts = extra
                        e, u = parts[c_i]
                        x = (x + coder.reconstruct(e, u, g, slope, frames * hop)).astype(np.float32)
                    return x

                yield one
            prev, cur, nxt = cur, nxt, latents(k + 2)

    for channels in _in_groups(*workers, jobs(), hd.channels):
        yield np.stack(channels, axis=1)


def _output_blocks(m: AudioCodecModel, c, hd: AudioHeader, conceal: bool,
                   progress: Progress = _no_progress) -> Iterator[np.ndarray]:
    """Decoded (n, channels) float32 blocks at the input's rate, exactly ``hd.frames`` in all."""
    mid_side = hd.stereo == STEREO_MID_SIDE
    resample = _Resampler(m.config.sample_rate, hd.sample_rate, hd.channels)
    left = hd.frames
    with torch.no_grad(), single_threaded_workers() as workers:
        for block in _model_rate_segments(m, c, hd, conceal, workers):
            out = resample(_from_coded(block, mid_side))[:left]
            left -= len(out)
            progress("decoding", (hd.frames - left) / hd.sample_rate, hd.duration)
            if len(out):
                yield out
        tail = resample(np.zeros((0, hd.channels), np.float32), last=True)[:left]
        left -= len(tail)
        if len(tail):
            yield tail
    if left > 0:
        yield np.zeros((left, hd.channels), np.float32)


def decode_audio(data: bytes, dtype: str = "float32", model: str | AudioCodecModel | None = None,
                 conceal: bool = False) -> tuple[np.ndarray, int]:
    """Decode .ltc bytes to ``(data, samplerate)`` as soundfile.read returns them.

    ``dtype`` is "float32" (may exceed ±1 where the signal overshoots), "float64" or "int16" (clipped).
    ``conceal`` decodes a damaged file, with silence where segments are lost.
    """
    if dtype not in ("float32", "float64", "int16"):
        raise LtcInputError(f"unsupported dtype {dtype!r} (float32, float64 or int16)")
    c, hd = _parse(data, conceal)
    m = model_for_file(c.model, model, "audio")
    blocks = _output_blocks(m, c, hd, conceal)
    first = next(blocks)  # a file's own faults surface before the machine's limits
    a = _output_array(hd, np.dtype(dtype))
    pos = 0
    for block in _chain(first, blocks):
        a[pos:pos + len(block)] = as_wav_samples(block, float_output=False) if dtype == "int16" else block
        pos += len(block)
    return (a[:, 0] if hd.channels == 1 else a), hd.sample_rate


def _output_array(hd: AudioHeader, dtype: np.dtype) -> np.ndarray:
    """The decoded signal's array, allocated once before decoding: a header declaring more samples than
    the machine's memory holds is refused at once (a concealing decode would otherwise fill it with
    silence block by block until the system ran out of memory; :func:`decode_audio_file` streams)."""
    size = hd.frames * hd.channels * dtype.itemsize
    if size > _available_memory():
        raise LtcFormatError(f"the file declares {hd.frames} frames × {hd.channels} channels "
                             f"({size / 2 ** 30:.1f} GiB decoded), more than this machine's free memory; "
                             f"decode it to a file instead")
    try:
        return np.empty((hd.frames, hd.channels), dtype)
    except MemoryError:
        raise LtcFormatError(f"no memory for the {size / 2 ** 30:.1f} GiB the file decodes to; "
                             f"decode it to a file instead") from None


def _available_memory() -> int:
    """Bytes of RAM the system can give (Linux's MemAvailable; else all RAM; else a very large number)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return 1 << 62


def decode_audio_file(data: bytes, out, float_output: bool = False, model: str | AudioCodecModel | None = None,
                      conceal: bool = False, progress: Progress | None = None) -> None:
    """Decode to a WAV file (a path, or a binary file object that need not seek: a pipe will do),
    writing segment by segment; ``progress`` is told the seconds decoded (see :data:`Progress`).

    Outputs past 4 GiB are RF64.  Before anything is written the decoded size is checked against the
    free space of the file system it goes to: a header is not trusted to fill a disk.  A path that
    fails part way is removed.
    """
    c, hd = _parse(data, conceal)
    m = model_for_file(c.model, model, "audio")
    blocks = _output_blocks(m, c, hd, conceal, progress or _no_progress)
    first = next(blocks)  # a file's own faults surface before the output is created
    size = wav_size(hd.sample_rate, hd.channels, hd.frames, float_output)
    if isinstance(out, (str, os.PathLike)):
        replaced = os.path.getsize(out) if os.path.isfile(out) else 0  # freed when it is truncated
        _check_free_space(os.path.dirname(os.path.abspath(out)), size - replaced)
        try:
            with open(out, "wb") as f:
                _write_wav(f, hd, float_output, _chain(first, blocks))
        except BaseException:
            Path(out).unlink(missing_ok=True)
            raise
        return
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
        _check_free_space(fd, size)
    _write_wav(out, hd, float_output, _chain(first, blocks))


def _write_wav(f, hd: AudioHeader, float_output: bool, blocks) -> None:
    with WavWriter(f, hd.sample_rate, hd.channels, hd.frames, float_output) as w:
        for block in blocks:
            w.write(block)


def _check_free_space(where, size: int) -> None:
    """Refuse (one line) an output larger than the free space at ``where`` (a directory or a file
    descriptor), before writing any of it."""
    try:
        st = os.fstatvfs(where) if isinstance(where, int) else os.statvfs(where)
    except OSError:
        return  # a file system that does not say: writing will tell
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise LtcError(f"the file decodes to {size / 2 ** 30:.2f} GiB of WAV, more than the "
                       f"{free / 2 ** 30:.2f} GiB free where it goes")


def _chain(first, rest):
    yield first
    yield from rest


def decoded_integers(data: bytes, model: str | AudioCodecModel | None = None) -> bytes:
    """The normative integers of a file: per segment, for each coded channel ẑ then u, then, when the
    file has a detail layer, the segment's step G and tilt slope and for each coded channel e then u
    (little-endian int64)."""
    c, hd = _parse(data, conceal=False)
    m = model_for_file(c.model, model, "audio")
    layout = _layout(hd, m.hop, c, conceal=False)
    payloads = _segments(c, hd, len(layout))
    details = _details(c, hd, len(layout), conceal=False)
    coder = _detail_coder(m, hd) if hd.detail is not None else None
    out = []
    for k, frames in enumerate(layout):
        payload, pos = payloads[k], _SEG_HEAD.size
        for _ in range(hd.channels):
            nz, ny = _CHAN_HEAD.unpack_from(payload, pos)
            pos += _CHAN_HEAD.size
            words = np.frombuffer(payload, "<u4", nz + ny, pos).astype(np.uint32)
            pos += 4 * (nz + ny)
            try:
                z_hat, u, _ = m.decode_symbols(Streams(words[:nz], words[nz:], (1, frames)))
            except CodingError as e:
                raise LtcFormatError(str(e)) from None
            out += [z_hat.astype("<i8").tobytes(), u.astype("<i8").tobytes()]
        if hd.detail is not None:
            g, slope, parts = _decode_detail(coder, hd, details[k], frames * m.hop)
            out.append(np.array([g, slope], "<i8").tobytes())
            for e, u in parts:
                out += [e.astype("<i8").tobytes(), u.astype("<i8").tobytes()]
    return b"".join(out)


def audio_info(data: bytes) -> AudioInfo:
    c, hd = _parse(data, conceal=False)
    n = len(c.get(b"SEGM"))
    return AudioInfo(hd.sample_rate, hd.channels, hd.frames, hd.duration, hd.quality, hd.lattice, c.model.name,
                     c.model.hex, hd.model_rate, n, c.size, 8 * c.size / hd.duration / 1000.0,
                     "mid/side" if hd.stereo == STEREO_MID_SIDE else "independent",
                     f"{c.version[0]}.{c.version[1]}", c.damaged, hd.detail)


def is_audio_bytes(prefix: bytes) -> bool:
    """True for the signatures of the audio formats soundfile reads (WAV/RF64/W64, FLAC, Ogg, AIFF, CAF, AU)."""
    return prefix[:4] in (b"RIFF", b"RF64", b"fLaC", b"OggS", b"FORM", b"caff", b".snd", b"riff")


AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".w64", ".rf64", ".caf", ".au", ".opus"})


def looks_like_audio(name: str, prefix: bytes) -> bool:
    return is_audio_bytes(prefix) or (name != "-" and Path(name).suffix.lower() in AUDIO_SUFFIXES)
