"""The audio detail layer (formats/ltc-v1.md §9.7): the MDCT, the integer streams, the rate it is
chosen for, and what a file with one does when damaged or crafted."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from ltcodec.audio import (DETAIL_FROM_KBPS, SEGMENT_FRAMES, audio_info, decode_audio, decode_audio_file,
                           decoded_integers, encode_audio, encode_audio_file)
from ltcodec.cli import main
from ltcodec.container import AudioHeader, read_container, write_container
from ltcodec.detail import (E_MAX, E_SILENT, EDGES, HOP, MUSIC_SLOPE, SLOPE_MAX, SLOPE_MIN, SPEECH_SLOPE, TILT_SHAPE,
                            DetailCoder, _delta_frequencies, band_edges, coded_bins, frames_of, imdct, mdct,
                            slope_for)
from ltcodec.errors import LtcFormatError


def signal(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Tones in noise shaped like speech's spectrum (most energy low, some up to the Nyquist frequency)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = []
    for c in range(channels):
        noise = np.convolve(rng.standard_normal(t.size), np.ones(4) / 4, mode="same")
        out.append(0.3 * np.sin(2 * np.pi * (220 + 55 * c) * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
                   + 0.1 * np.sin(2 * np.pi * 1870 * t) + 0.03 * noise)
    return np.stack(out, 1).astype(np.float32)


def snr(x: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((x.astype(np.float64) - y) ** 2)))


# -- the parts -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [1, HOP - 1, 7 * HOP, 96000, 1280 * 3 + 17])
def test_mdct_restores_any_segment_exactly(length):
    x = np.random.default_rng(length).standard_normal(length)
    c = mdct(x)
    assert c.shape == (frames_of(length), HOP)
    np.testing.assert_allclose(imdct(c, length), x, rtol=0, atol=1e-12)
    # Orthonormal: energy is kept (the segment's edges are covered by zero-padded windows).
    assert np.sum(c ** 2) == pytest.approx(np.sum(x ** 2), rel=1e-9)


def test_mdct_is_the_specified_sum():
    """The fast transform against the definition of formats/ltc-v1.md §9.7, term by term."""
    x = np.random.default_rng(5).standard_normal(2 * HOP + 37)
    t = np.arange(2 * HOP)
    w = np.sin(np.pi * (t + 0.5) / (2 * HOP))
    padded = np.concatenate([np.zeros(HOP), x, np.zeros(3 * HOP)])
    c = mdct(x)
    for j in (0, 1, frames_of(len(x)) - 1):
        for k in (0, 1, 200, HOP - 1):
            basis = np.cos(np.pi / HOP * (t + 0.5 + HOP / 2) * (k + 0.5))
            direct = np.sqrt(2 / HOP) * np.sum(w * padded[j * HOP + t] * basis)
            assert c[j, k] == pytest.approx(direct, abs=1e-10)


def test_bands_stop_at_the_inputs_nyquist_frequency():
    assert coded_bins(24000, 48000) == coded_bins(24000, 24000) == HOP
    assert coded_bins(24000, 16000) == 320 and band_edges(320)[-1] == 320
    assert coded_bins(24000, 22050) == 440 and band_edges(440)[-2:] == [384, 440]
    assert coded_bins(24000, 8000) == 160
    for bins in (160, 320, 440, 480):
        e = band_edges(bins)
        assert e[0] == 0 and all(b > a and (b - a) % 8 == 0 for a, b in zip(e, e[1:]))


def test_the_delta_table_is_the_specified_integers():
    f = _delta_frequencies()
    assert f.sum() == 1 << 16 and f[-1] == 1
    assert list(f[24 - 3: 24 + 4]) == [2048, 4096, 10240, 23127, 10240, 4096, 2048]


def test_streams_round_trip_and_the_step_sets_the_noise(tiny_audio_model):
    coder = DetailCoder(tiny_audio_model.lattice, tiny_audio_model.y_coder, 320)
    rng = np.random.default_rng(1)
    residual = np.convolve(rng.standard_normal(96000), [0.5, 0.3, 0.2], mode="same") * 0.02
    coefs = coder.spectrum(residual)
    band_limited = imdct(np.pad(coefs, ((0, 0), (0, HOP - 320))), len(residual))
    e = coder.energies(coefs)
    assert e.shape == (frames_of(96000), len(band_edges(320)) - 1) and (e >= E_SILENT).all() and (e <= E_MAX).all()
    snrs = []
    for g in (0, 8, 16, 24):
        for slope in (0, SPEECH_SLOPE, SLOPE_MAX):
            payload = coder.encode(coefs, g, slope)
            e2, u, pos = coder.decode_integers(payload, 0, len(residual), g, slope)
            assert pos == len(payload)
            np.testing.assert_array_equal(e2, e)
            np.testing.assert_array_equal(u, coder.quantize(coefs, e, g, slope))
            # The rate search's estimate is the streams' information content: within their final words.
            assert abs(coder.bits(coefs, e, g, slope) - 8 * (len(payload) - 8)) <= 64 + 0.001 * 8 * len(payload)
        payload = coder.encode(coefs, g, 0)
        u = coder.quantize(coefs, e, g, 0)
        snrs.append(snr(band_limited, coder.reconstruct(e, u, g, 0, len(residual))))
    # Each 8 steps of G halve Δ: ≈ 6 dB more SNR once most coefficients are coded.
    assert snrs[1] > snrs[0] + 3
    for a, b in zip(snrs[1:], snrs[2:]):
        assert 4.5 < b - a < 7.5, snrs
    # A damaged stream is a format error, never a crash.
    with pytest.raises(LtcFormatError):
        coder.decode_integers(payload[:len(payload) // 2], 0, len(residual), 24, 0)


def test_decoded_coefficients_sit_an_eighth_of_a_step_inside_their_lattice_points(tiny_audio_model):
    coder = DetailCoder(tiny_audio_model.lattice, tiny_audio_model.y_coder, 8)
    e = np.full((frames_of(HOP), 1), -4)
    g = 20
    coefs = np.zeros((frames_of(HOP), 8))
    step = coder.step(np.array([-4]), g)[0]
    coefs[1] = np.array([3, -2, 1, 0, 0, 0, 0, 0]) * step  # a point of E8 (even coordinate sum)
    u = coder.quantize(coefs, e, g, 0)
    expected = np.zeros((frames_of(HOP), HOP))
    expected[1, :8] = np.array([2.875, -1.875, 0.875, 0, 0, 0, 0, 0]) * step
    np.testing.assert_allclose(coder.reconstruct(e, u, g, 0, HOP), imdct(expected, HOP), rtol=0, atol=1e-12)


def test_the_tilt_is_the_specified_integers_and_tips_the_noise_across_frequency(tiny_audio_model):
    # W: each full band's centre against 2 kHz (80 bins of 25 Hz) in eighths of an octave.
    assert TILT_SHAPE == tuple(round(8 * np.log2((lo + hi) / 2 / 80)) for lo, hi in zip(EDGES, EDGES[1:]))
    coder = DetailCoder(tiny_audio_model.lattice, tiny_audio_model.y_coder, 320)
    assert coder.tilts(-3).tolist() == [13, 8, 6, 4, 3, 2, 1, 1, 0, -1, -2, -2, -3, -4, -5, -5, -6]  # ⌊−3·W/8⌋
    assert coder.tilts(0).tolist() == [0] * 17
    assert (slope_for(8000), slope_for(16000), slope_for(22050), slope_for(48000)) == \
        (SPEECH_SLOPE, SPEECH_SLOPE, MUSIC_SLOPE, MUSIC_SLOPE)
    # White noise: the step of band b is Δ = 2^((3e − G − t_b)/8), so a negative slope quantizes the
    # low bands finer and the high ones coarser than a flat one does at the same G.
    rng = np.random.default_rng(4)
    residual = 0.01 * rng.standard_normal(48000)
    coefs = coder.spectrum(residual)
    e = coder.energies(coefs)

    def band_noise(slope):
        u = coder.quantize(coefs, e, 8, slope)
        err = coefs - coder.spectrum(coder.reconstruct(e, u, 8, slope, len(residual)))
        return [float(np.mean(err[:, lo:hi] ** 2)) for lo, hi in ((0, 8), (256, 320))]

    (flat_low, flat_high), (tilt_low, tilt_high) = band_noise(0), band_noise(-3)
    assert tilt_low < flat_low / 4 and tilt_high > flat_high * 1.5


def test_a_silent_residual_codes_to_its_energy_indices_alone(tiny_audio_model):
    coder = DetailCoder(tiny_audio_model.lattice, tiny_audio_model.y_coder, HOP)
    payload = coder.encode(coder.spectrum(np.zeros(96000)), 16, SPEECH_SLOPE)
    e, u, _ = coder.decode_integers(payload, 0, 96000, 16, SPEECH_SLOPE)
    assert (e == E_SILENT).all() and u.shape == (0, 8)
    # No coefficient is coded; each unchanged index costs −log2(23127/65536) = 1.50 bits.
    assert 8 * len(payload) < 1.51 * e.size + 300


# -- in files ------------------------------------------------------------------------------------------

def test_high_targets_add_a_detail_layer_that_meets_them(tiny_audio_model):
    x = signal(12.0, 16000)
    top = encode_audio(x, 16000, quality=8, model=tiny_audio_model)
    below = encode_audio(x, 16000, kbps=DETAIL_FROM_KBPS - 2, model=tiny_audio_model)
    assert audio_info(below).detail_step is None and audio_info(below).version == "1.1"
    assert not read_container(below, frozenset({b"SEGM", b"DETL"})).get(b"DETL")
    base_snr = snr(x[:, 0], decode_audio(top, model=tiny_audio_model)[0])
    last = -np.inf
    for target in (32.0, 48.0, 64.0):
        data = encode_audio(x, 16000, kbps=target, model=tiny_audio_model)
        info = audio_info(data)
        assert info.detail_step is not None and info.version == "1.2"
        assert len(read_container(data, frozenset({b"SEGM", b"DETL"})).get(b"DETL")) == 3
        assert abs(info.kbps - target) / target <= 0.10, (target, info.kbps)
        quality = snr(x[:, 0], decode_audio(data, model=tiny_audio_model)[0])
        assert quality > max(base_snr, last) + 2, (base_snr, last, quality)
        last = quality


def test_a_detail_layer_codes_and_decodes_alike_on_any_thread_count(tiny_audio_model):
    x = signal(5.0, 48000, 2)
    target = 2 * DETAIL_FROM_KBPS + 12
    before = torch.get_num_threads()
    try:
        files, outs = [], []
        for n in (1, 2):
            torch.set_num_threads(n)
            files.append(encode_audio(x, 48000, kbps=target, model=tiny_audio_model))
            buf = io.BytesIO()
            decode_audio_file(files[0], buf, model=tiny_audio_model)
            outs.append(buf.getvalue())
    finally:
        torch.set_num_threads(before)
    assert audio_info(files[0]).detail_step is not None
    assert files[0] == files[1] and outs[0] == outs[1]


def _rebuilt(data: bytes, drop=frozenset(), **fields) -> bytes:
    """``data`` with header fields replaced and chunks of the tags in ``drop`` left out, CRCs valid."""
    c = read_container(data, frozenset({b"SEGM", b"DETL"}))
    head = AudioHeader(**{**AudioHeader.unpack(c.head).__dict__, **fields})
    return write_container(head.pack(), c.model, [ch for ch in c.chunks if ch[0] not in drop], (1, 2))


def test_a_damaged_detail_chunk_loses_only_its_segments_detail(tiny_audio_model):
    rate = 24000
    x = signal(13.0, rate)  # 4 segments of 4 s
    data = encode_audio(x, rate, kbps=48, model=tiny_audio_model)
    base_only = _rebuilt(data, drop={b"DETL"}, detail=None)
    clean, _ = decode_audio(data, model=tiny_audio_model)
    base, _ = decode_audio(base_only, model=tiny_audio_model)
    bad = bytearray(data)
    second = data.find(b"DETL", data.find(b"DETL") + 4)
    bad[second + 40] ^= 0x55
    with pytest.raises(LtcFormatError, match="damaged"):
        decode_audio(bytes(bad), model=tiny_audio_model)
    y, _ = decode_audio(bytes(bad), model=tiny_audio_model, conceal=True)
    seg = SEGMENT_FRAMES * tiny_audio_model.hop
    # Segment 1 is decoded as its base alone; the others keep their detail.
    np.testing.assert_allclose(y[seg:2 * seg], base[seg:2 * seg], rtol=0, atol=1e-6)
    lost = np.s_[seg:2 * seg]
    np.testing.assert_allclose(np.delete(y, lost), np.delete(clean, lost), rtol=0, atol=1e-6)
    assert snr(x[:, 0], clean) > snr(x[:, 0], y) > snr(x[:, 0], base)


def test_crafted_detail_headers_and_chunks_are_refused(tiny_audio_model):
    data = encode_audio(signal(5.0, 24000), 24000, kbps=48, model=tiny_audio_model)
    with pytest.raises(LtcFormatError, match="detail chunks are missing"):
        decode_audio(_rebuilt(data, drop={b"DETL"}), model=tiny_audio_model)
    with pytest.raises(LtcFormatError, match="declares no detail layer"):
        decode_audio(_rebuilt(data, detail=None), model=tiny_audio_model)
    head = read_container(data, frozenset({b"SEGM", b"DETL"})).head
    for stored in (1024 - 129, 1024 + 129, 1):
        crafted = head[:24] + stored.to_bytes(2, "little") + head[26:]
        with pytest.raises(LtcFormatError, match="detail step"):
            AudioHeader.unpack(crafted)
    # Each chunk carries its step: out of range is refused; another valid one decodes other integers.
    c = read_container(data, frozenset({b"SEGM", b"DETL"}))
    first = c.get(b"DETL")[0]
    step = int.from_bytes(first[4:6], "little", signed=True)
    assert first[6] == MUSIC_SLOPE  # a 24 kHz input is coded with music's tilt
    for other, slope, refused in ((129, MUSIC_SLOPE, "detail step"), (-129, MUSIC_SLOPE, "detail step"),
                                  (step, SLOPE_MAX + 1, "tilt slope"), (step, SLOPE_MIN - 1, "tilt slope"),
                                  (step + 9, MUSIC_SLOPE, None), (step, SPEECH_SLOPE, None)):
        head = other.to_bytes(2, "little", signed=True) + slope.to_bytes(1, "little", signed=True)
        chunks = [(t, p[:4] + head + p[7:] if p is first else p) for t, p in c.chunks]
        crafted = write_container(c.head, c.model, chunks, (1, 2))
        if refused:
            with pytest.raises(LtcFormatError, match=refused):
                decode_audio(crafted, model=tiny_audio_model)
            continue
        try:
            y, _ = decode_audio(crafted, model=tiny_audio_model)
        except LtcFormatError:
            pass
        else:
            assert not np.allclose(y, decode_audio(data, model=tiny_audio_model)[0])


def test_segments_mix_two_steps_to_meet_a_target_between_them(tiny_audio_model):
    """Bands of one energy start being coded at one step, so the rate can jump by far more than 10%
    between two steps: a share of the segments takes the finer one."""
    rng = np.random.default_rng(3)
    n = 24000 * 20
    t = np.arange(n) / 24000
    x = (0.2 * np.sin(2 * np.pi * 330 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)[:, None]
    for target in (40.0, 47.0, 55.0):
        data = encode_audio(x, 24000, kbps=target, model=tiny_audio_model)
        steps = [int.from_bytes(p[4:6], "little", signed=True)
                 for p in read_container(data, frozenset({b"SEGM", b"DETL"})).get(b"DETL")]
        assert max(steps) - min(steps) <= 1 and audio_info(data).detail_step == min(steps)
        assert abs(audio_info(data).kbps - target) / target <= 0.05, (target, audio_info(data).kbps, steps)


def test_the_normative_integers_include_the_detail_layer(tiny_audio_model):
    data = encode_audio(signal(5.0, 24000), 24000, kbps=48, model=tiny_audio_model)
    base_only = _rebuilt(data, drop={b"DETL"}, detail=None)
    full, base = decoded_integers(data, model=tiny_audio_model), decoded_integers(base_only, model=tiny_audio_model)
    assert len(full) > len(base)


def test_the_command_line_reports_the_detail_layer(tiny_audio_model_path, tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, signal(5.0, 16000), 16000)
    run = CliRunner().invoke
    r = run(main, ["encode", str(src), str(tmp_path / "a.ltc"), "--kbps", "48", "--model", str(tiny_audio_model_path)])
    assert r.exit_code == 0 and "note" not in r.output, r.output
    info = json.loads(run(main, ["info", str(tmp_path / "a.ltc"), "--json"]).output)
    assert info["detail_step"] is not None and info["version"] == "1.2" and abs(info["kbps"] - 48) <= 4.8
    assert f"with a detail layer (step {info['detail_step']})" in run(main, ["info", str(tmp_path / "a.ltc")]).output
    r = run(main, ["decode", str(tmp_path / "a.ltc"), str(tmp_path / "a.wav"), "--model", str(tiny_audio_model_path)])
    assert r.exit_code == 0 and sf.info(str(tmp_path / "a.wav")).frames == 80000


def test_progress_reports_the_base_decoding_stage(tiny_audio_model, tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, signal(9.5, 16000), 16000)
    seen = []
    encode_audio_file(src, kbps=48, model=tiny_audio_model, progress=lambda *a: seen.append(a))
    order = ["analysing", "decoding base", "coding"]
    stages = [s for s, _, _ in seen]
    assert set(stages) == set(order) and stages == sorted(stages, key=order.index)
    done = [d for s, d, _ in seen if s == "decoding base"]
    assert len(done) == 3 and done == sorted(done) and done[-1] == pytest.approx(9.5)
