"""The image codec end to end: round trips, modes, metadata, rate control, determinism, errors."""

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ltcodec
from ltcodec.errors import LtcFormatError, LtcInputError, LtcModelError
from ltcodec.image import decode_image, encode_image, image_info
from ltcodec.image_codec import MIN_SPLIT_LATENTS, TILE_LATENTS, tile_layout

from conftest import psnr, smooth_image


def test_round_trip_quality_window_and_rate_grows_with_quality(picture):
    sizes, quality = [], []
    for q in (1, 4, 8):
        data = encode_image(picture, quality=q)
        out = np.asarray(decode_image(data))
        assert out.shape == picture.shape and out.dtype == np.uint8
        sizes.append(len(data))
        quality.append(psnr(out, picture))
    assert sizes[0] < sizes[1] < sizes[2]
    assert quality[0] < quality[2]
    assert quality[2] > 22  # a smooth picture at the best quality is clearly recognisable


@pytest.mark.parametrize("size", [(1, 1), (1, 70), (65, 3), (130, 67)])
def test_any_size_round_trips(size):
    w, h = size
    img = smooth_image(w, h, seed=w + h)
    out = decode_image(encode_image(img, quality=5))
    assert out.size == (w, h) and out.mode == "RGB"


def test_grayscale_stays_grayscale():
    gray = smooth_image(40, 30)[..., 1]
    out = decode_image(encode_image(gray, quality=6))
    assert out.mode == "L" and out.size == (40, 30)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_lossless(mode):
    rgb = Image.fromarray(smooth_image(50, 40))
    im = rgb.convert(mode)
    alpha = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50), dtype=np.uint8), "L")
    im.putalpha(alpha)
    out = decode_image(encode_image(im, quality=3))
    assert out.mode == mode
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha))


def test_palette_with_transparency_becomes_rgba():
    im = Image.fromarray(smooth_image(20, 20)).convert("P", palette=Image.ADAPTIVE)
    im.info["transparency"] = 0
    assert decode_image(encode_image(im)).mode == "RGBA"


def test_exif_orientation_is_applied_and_metadata_kept():
    im = Image.fromarray(smooth_image(60, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    exif[0x010F] = "ltcodec-test-camera"
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), icc_profile=b"fake-icc-profile", quality=95)
    src = Image.open(io.BytesIO(buf.getvalue()))
    data = encode_image(src, quality=5)
    info = image_info(data)
    assert (info.width, info.height) == (20, 60)  # orientation applied
    assert info.has_icc and info.has_exif
    out = decode_image(data)
    assert out.info["icc_profile"] == b"fake-icc-profile"
    kept = Image.Exif()
    kept.load(out.info["exif"])
    assert kept[0x010F] == "ltcodec-test-camera" and kept[0x0112] == 1


def test_16_bit_grayscale_is_reduced_by_the_documented_rule():
    a = (np.arange(64 * 8, dtype=np.uint16).reshape(8, 64) * 128).astype(np.uint16)
    im = Image.fromarray(a)
    assert im.mode == "I;16"
    from ltcodec.image import prepare_image

    prepared, _ = prepare_image(im)
    assert prepared.mode == "L"
    assert np.array_equal(np.asarray(prepared), ((a.astype(np.uint32) + 128) // 257).astype(np.uint8))


def test_unsupported_inputs_are_refused_clearly():
    with pytest.raises(LtcInputError, match="mode F"):
        encode_image(Image.new("F", (4, 4)))
    with pytest.raises(LtcInputError, match="uint8"):
        encode_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(LtcInputError, match="quality"):
        encode_image(smooth_image(8, 8), quality=9)
    with pytest.raises(LtcInputError, match="either"):
        encode_image(smooth_image(8, 8), quality=3, bpp=1.0)


def test_bpp_target_is_met_and_close():
    img = smooth_image(256, 192, seed=3)
    for target in (0.3, 1.0):
        data = encode_image(img, bpp=target)
        bpp = 8 * len(data) / (256 * 192)
        assert bpp <= target
        assert bpp > 0.8 * target or image_info(data).quality in (1.0, 8.0)
    tiny = encode_image(smooth_image(8, 8), bpp=0.1)  # unreachable: the lowest quality is used
    assert image_info(tiny).quality == 1.0


def test_tiles_cover_the_latent_once_and_depend_on_its_size_alone():
    for lh, lw in [(1, 1), (5, 6), (16, 15), (32, 48), (64, 64), (65, 64), (250, 375)]:
        tiles = tile_layout(lh, lw)
        cover = np.zeros((lh, lw), int)
        for i0, i1, j0, j1 in tiles:
            assert 0 < i1 - i0 <= TILE_LATENTS and 0 < j1 - j0 <= TILE_LATENTS
            cover[i0:i1, j0:j1] += 1
        assert (cover == 1).all()
        assert len(tiles) >= (2 if max(lh, lw) >= 2 * MIN_SPLIT_LATENTS else 1)
        assert tile_layout(lh, lw) == tiles


def _decoded_with_threads(data: bytes, threads: int) -> np.ndarray:
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = np.asarray(decode_image(data))
        assert torch.get_num_threads() == threads  # the decoder restores the caller's count
        return out
    finally:
        torch.set_num_threads(old)


def test_a_tiled_decode_is_identical_with_one_and_two_threads():
    data = encode_image(smooth_image(256, 200, seed=4), quality=5)  # two tiles
    assert np.array_equal(_decoded_with_threads(data, 1), _decoded_with_threads(data, 2))


def test_decoded_pixels_are_identical_with_one_and_two_threads_and_in_a_fresh_process(picture, tmp_path):
    data = encode_image(picture, quality=6)
    a = _decoded_with_threads(data, 1)
    assert np.array_equal(a, _decoded_with_threads(data, 2))
    path = tmp_path / "x.ltc"
    path.write_bytes(data)
    code = ("import sys, numpy as np, ltcodec; "
            "sys.stdout.buffer.write(np.asarray(ltcodec.decode_image(open(sys.argv[1], 'rb').read())).tobytes())")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, check=True).stdout
    assert out == a.tobytes()


def test_encoding_is_deterministic(picture):
    assert encode_image(picture, quality=3) == encode_image(picture, quality=3)


def test_corrupt_payload_and_wrong_model_are_typed_errors(picture):
    data = bytearray(encode_image(picture, quality=4))
    # A file whose model digest is unknown
    from ltcodec.container import read_container, write_container, ModelId

    c = read_container(bytes(data), frozenset({b"ZSTR", b"YSTR", b"YST2"}))
    other = write_container(c.head, ModelId(c.model.name, b"\0" * 32), c.chunks)
    with pytest.raises(LtcModelError, match="sha256"):
        decode_image(other)
    missing = write_container(c.head, ModelId("no-such-model", c.model.sha256), c.chunks)
    with pytest.raises(LtcModelError, match="not installed"):
        decode_image(missing)
    # Streams swapped (valid CRCs, wrong content) either fail cleanly or decode to some image
    swapped = write_container(c.head, c.model, [(b"ZSTR", c.chunks[1][1]), (b"YSTR", c.chunks[0][1]),
                                                *c.chunks[2:]])
    try:
        decode_image(swapped)
    except LtcFormatError:
        pass
    with pytest.raises(LtcFormatError):
        decode_image(bytes(data[:-20]))


def test_library_exports_and_pillow_plugin(picture, tmp_path):
    assert ltcodec.encode_image is encode_image
    path = tmp_path / "p.ltc"
    Image.fromarray(picture).save(path, quality=7)
    im = Image.open(path)
    assert im.format == "LTC" and im.size == (96, 80) and im.mode == "RGB"
    assert np.array_equal(np.asarray(im), np.asarray(decode_image(path.read_bytes())))
    assert im.info["ltc_quality"] == 7.0
    Image.fromarray(picture).save(tmp_path / "r.ltc", quality=2, refine=2)
    assert (tmp_path / "r.ltc").read_bytes() == encode_image(picture, quality=2, refine=2)


def test_corrupted_streams_with_valid_crcs_raise_only_typed_errors():
    from ltcodec.container import read_container, write_container

    data = encode_image(smooth_image(40, 24, 4), quality=5)
    c = read_container(data, frozenset({b"ZSTR", b"YSTR", b"YST2"}))  # YST2: a model with a context
    rng = np.random.default_rng(0)
    for trial in range(30):
        chunks = [(t, bytearray(p)) for t, p in c.chunks]
        t, payload = chunks[trial % len(chunks)]
        for _ in range(1 + trial % 3):
            payload[rng.integers(len(payload))] ^= 1 << int(rng.integers(8))
        bad = write_container(c.head, c.model, [(t, bytes(p)) for t, p in chunks])
        try:
            out = decode_image(bad)
        except LtcFormatError:
            continue
        assert out.size == (40, 24)


def test_progress_counts_the_transform_tiles():
    img = smooth_image(1200, 200)  # wider than one 1024-pixel tile and its halo: two tiles
    seen = []
    data = encode_image(img, quality=2, progress=lambda *a: seen.append(a))
    assert seen == [("analysing", 1, 2), ("analysing", 2, 2)]
    seen.clear()
    out = decode_image(data, progress=lambda *a: seen.append(a))
    assert seen == [("decoding", 1, 2), ("decoding", 2, 2)] and out.size == (1200, 200)
    assert data == encode_image(img, quality=2)
