"""The decoder's WAV output, written here rather than by libsndfile, for three reasons:

* **Same bytes every time.**  libsndfile adds a ``PEAK`` chunk to float WAVs that holds the time of
  writing, so two decodes of one file a second apart differed.  This writer's header is a function of
  the sample rate, channel count, frame count and sample format alone.
* **Streams to pipes.**  The decoder knows the exact frame count before the first sample, so the header
  is written first and never patched: standard output needs no seeking and no buffered copy.
* **No 4 GiB wall.**  A RIFF size is 32 bits; longer outputs are written as RF64 (EBU Tech 3306), which
  soundfile, ffmpeg and sox read.

The layout is libsndfile's for the same formats: a 16-byte ``fmt `` chunk (PCM for 16-bit, IEEE float
for 32-bit float, which adds a ``fact`` chunk), then ``data``.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np

__all__ = ["WavWriter", "wav_size", "as_wav_samples"]

_PCM = 1
_IEEE_FLOAT = 3
_U32_MAX = 0xFFFFFFFF
_DS64 = struct.Struct("<4sIQQQI")  # id, size 28, RIFF size, data size, sample count, table length 0


def _chunks_before_data(rate: int, channels: int, frames: int, float_output: bool) -> tuple[bytes, int]:
    """The ``fmt `` (and ``fact``) chunks, and the data chunk's size in bytes."""
    width = 4 if float_output else 2
    align = channels * width
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, _IEEE_FLOAT if float_output else _PCM, channels, rate,
                      rate * align, align, 8 * width)
    if float_output:
        fmt += struct.pack("<4sII", b"fact", 4, min(frames, _U32_MAX))  # frames, not samples
    return fmt, frames * align


def wav_size(rate: int, channels: int, frames: int, float_output: bool) -> int:
    """Bytes of the WAV (or RF64) file that :class:`WavWriter` writes for this signal."""
    return len(_header(rate, channels, frames, float_output)) + _chunks_before_data(
        rate, channels, frames, float_output)[1]


def _header(rate: int, channels: int, frames: int, float_output: bool, rf64: bool | None = None) -> bytes:
    fmt, data_size = _chunks_before_data(rate, channels, frames, float_output)
    riff_size = 4 + len(fmt) + 8 + data_size
    if rf64 is None:
        rf64 = riff_size > _U32_MAX
    if not rf64:
        return struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE") + fmt + struct.pack("<4sI", b"data", data_size)
    riff_size += _DS64.size
    ds64 = _DS64.pack(b"ds64", _DS64.size - 8, riff_size, data_size, frames, 0)
    return (struct.pack("<4sI4s", b"RF64", _U32_MAX, b"WAVE") + ds64 + fmt
            + struct.pack("<4sI", b"data", _U32_MAX))


class WavWriter:
    """Write a signal of a known number of frames to a binary file, block by block.

    Blocks are float arrays (frames × channels) in [−1, 1]; 16-bit output rounds and clips them to
    full scale (never wraps), float output keeps them as they are.  :meth:`close` checks that exactly the
    declared frames were written, so a header never describes samples that are not there.
    """

    def __init__(self, f: BinaryIO, rate: int, channels: int, frames: int, float_output: bool = False,
                 rf64: bool | None = None):
        self._f = f
        self._channels = channels
        self._frames = frames
        self._float = float_output
        self._written = 0
        f.write(_header(rate, channels, frames, float_output, rf64))

    def write(self, block: np.ndarray) -> None:
        block = np.asarray(block).reshape(len(block), -1)
        if block.shape[1] != self._channels:
            raise ValueError(f"a block of {block.shape[1]} channels for a {self._channels}-channel WAV")
        if self._written + len(block) > self._frames:
            raise ValueError(f"more than the {self._frames} frames declared")
        self._f.write(as_wav_samples(block, self._float).tobytes())
        self._written += len(block)

    def close(self) -> None:
        if self._written != self._frames:
            raise ValueError(f"{self._written} of the {self._frames} frames declared were written")

    def __enter__(self) -> "WavWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()


def as_wav_samples(block: np.ndarray, float_output: bool) -> np.ndarray:
    """``block`` as the WAV's little-endian samples: float32, or 16-bit rounded and clipped."""
    if float_output:
        return np.ascontiguousarray(block, dtype="<f4")
    return np.clip(np.round(block * 32768.0), -32768, 32767).astype("<i2")
