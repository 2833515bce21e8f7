"""The WAV writer: libsndfile's layout without its time-stamped PEAK chunk, RF64 past 4 GiB, exact
frame counts, 16-bit clipping."""

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from ltcodec.wav import WavWriter, wav_size


def signal(frames: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(frames + channels)
    return (rng.standard_normal((frames, channels)) * 0.3).astype(np.float32)


def written(x: np.ndarray, rate: int, float_output: bool, rf64=None, blocks: int = 3) -> bytes:
    f = io.BytesIO()
    with WavWriter(f, rate, x.shape[1], len(x), float_output, rf64) as w:
        for part in np.array_split(x, blocks):
            w.write(part)
    return f.getvalue()


def libsndfile(x: np.ndarray, rate: int, subtype: str) -> bytes:
    f = io.BytesIO()
    sf.write(f, x, rate, subtype=subtype, format="WAV")
    return f.getvalue()


def without_chunk(data: bytes, name: bytes) -> bytes:
    """A RIFF file's bytes with one chunk taken out and the RIFF size mended."""
    i = data.index(name)
    size = struct.unpack_from("<I", data, i + 4)[0]
    out = data[:i] + data[i + 8 + size:]
    return out[:4] + struct.pack("<I", len(out) - 8) + out[8:]


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_16_bit_output_is_byte_for_byte_libsndfiles(channels):
    x = signal(1001, channels)
    pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)  # as the decoder wrote them before
    assert written(x, 44100, False) == libsndfile(pcm, 44100, "PCM_16")


@pytest.mark.parametrize("channels", [1, 2])
def test_float_output_is_libsndfiles_without_the_peak_chunk(channels):
    x = signal(777, channels)
    ours = written(x, 48000, True)
    assert b"PEAK" not in ours
    assert ours == without_chunk(libsndfile(x, 48000, "FLOAT"), b"PEAK")
    y, rate = sf.read(io.BytesIO(ours), dtype="float32", always_2d=True)
    assert rate == 48000 and np.array_equal(y, x)


def test_16_bit_samples_clip_instead_of_wrapping():
    x = np.array([[1.5], [-1.5], [0.99999], [-1.0], [0.5]], np.float32)
    y, _ = sf.read(io.BytesIO(written(x, 8000, False, blocks=1)), dtype="int16")
    assert y.tolist() == [32767, -32768, 32767, -32768, 16384]


@pytest.mark.parametrize("float_output", [False, True])
def test_rf64_reads_back_like_wav(float_output):
    x = signal(500, 2)
    data = written(x, 32000, float_output, rf64=True)
    assert data[:4] == b"RF64" and data[12:16] == b"ds64"
    i = sf.info(io.BytesIO(data))
    assert (i.format, i.frames, i.channels, i.samplerate) == ("RF64", 500, 2, 32000)
    y, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert np.array_equal(y, x) if float_output else np.abs(y - x).max() <= 0.5 / 32768 + 1e-7


def test_rf64_only_past_four_gibibytes():
    """The header alone is written for a declared length (close() is not called: the samples are not)."""
    frames = 2 ** 30 - 10  # 16-bit stereo: the most frames whose RIFF size, 36 + 4n, fits 32 bits
    for n, kind in ((frames, b"RIFF"), (frames + 1, b"RF64")):
        f = io.BytesIO()
        WavWriter(f, 48000, 2, n, False)
        assert f.getvalue()[:4] == kind
        assert wav_size(48000, 2, n, False) == len(f.getvalue()) + 4 * n
    assert wav_size(48000, 2, frames, False) == 2 ** 32 + 4


def test_frames_must_match_the_header():
    f = io.BytesIO()
    w = WavWriter(f, 8000, 1, 10)
    w.write(np.zeros((6, 1), np.float32))
    with pytest.raises(ValueError, match="more than the 10 frames"):
        w.write(np.zeros((5, 1), np.float32))
    with pytest.raises(ValueError, match="6 of the 10 frames"):
        w.close()
    with pytest.raises(ValueError, match="2 channels"):
        w.write(np.zeros((1, 2), np.float32))
