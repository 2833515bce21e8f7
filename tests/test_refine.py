"""Encoder-side latent refinement: smaller files for the same decoder, tiles, rate targets, errors."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ltcodec import refine as refine_module
from ltcodec.errors import LtcInputError, LtcModelError
from ltcodec.image import decode_image, encode_image, image_info
from ltcodec.refine import quality_lambda
from ltcodec.latent_coding import model_metadata
from ltcodec.zoo import find_model, load_image_model

from conftest import psnr, smooth_image


def _coded_objective(m, rgb, data):
    """λ·MSE(255²) + bits per pixel of a real file: what refinement lowers."""
    out = np.asarray(decode_image(data, model=m))
    mse = ((out.astype(np.float64) - rgb) ** 2).mean()
    q = image_info(data).quality
    return quality_lambda(m.config.lambdas, q) * mse + 8 * len(data) / rgb[..., 0].size


def test_quality_lambda_follows_the_ladder_between_qualities():
    ladder = (0.001, 0.004, 0.016)
    assert quality_lambda(ladder, 1.0) == pytest.approx(0.001)
    assert quality_lambda(ladder, 3.0) == pytest.approx(0.016)
    assert quality_lambda(ladder, 1.5) == pytest.approx(0.002)  # log-linear, as the gains are
    assert quality_lambda(ladder, 9.0) == pytest.approx(0.016)


def test_refined_files_decode_and_are_never_worse_and_better_on_the_whole():
    # The search ranks its iterates by the float hyperprior's ideal bits; the file has the integer one's,
    # rounded to whole words, so a refined latent can code worse on a small picture: the encoder then
    # keeps the plain one. At 128 × 96 the gain shows at the higher qualities (−0.2 … −1.1% at 6).
    m = load_image_model(None)
    changes = []
    for seed in (5, 1, 2):
        rgb = smooth_image(128, 96, seed=seed)
        for quality in (3.0, 6.0):
            plain = encode_image(rgb, quality=quality, model=m)
            refined = encode_image(rgb, quality=quality, model=m, refine=8)
            assert image_info(refined).quality == quality
            # The same decoder reads it.
            assert psnr(rgb, np.asarray(decode_image(refined, model=m))) > 20
            before = _coded_objective(m, rgb, plain)
            changes.append((_coded_objective(m, rgb, refined) - before) / before)
    assert max(changes) <= 0.0, changes
    assert sum(c < 0 for c in changes) >= 2 and sum(changes) / len(changes) < -0.002, changes


def test_refinement_never_ends_worse_than_it_starts_under_the_hard_objective(monkeypatch):
    m = load_image_model(None)
    rgb = smooth_image(64, 64, seed=2)
    monkeypatch.setattr(refine_module, "STEP_SIZE", 5.0)  # absurd steps: only the start is any good
    y = m.analysis(rgb)
    out = refine_module.refine_latent(m, rgb, y, 2.0, 3)
    torch.testing.assert_close(out, y, rtol=1e-6, atol=1e-6)


def test_large_images_are_refined_tile_by_tile(monkeypatch):
    monkeypatch.setattr(refine_module, "REFINE_TILE", 4)  # 4² latents = 64² pixels per tile
    monkeypatch.setattr(refine_module, "REFINE_HALO", 4)
    m = load_image_model(None)
    rgb = smooth_image(150, 70, seed=1)  # 10 × 5 latents after padding: 3 × 2 tiles, the last ones partial
    seen = []
    data = encode_image(rgb, quality=2, model=m, refine=2, progress=lambda *a: seen.append(a))
    assert [s for s in seen if s[0] == "refining"][-1] == ("refining", 12, 12)
    assert decode_image(data, model=m).size == (150, 70)


def test_bpp_target_holds_with_refinement():
    m = load_image_model(None)
    rgb = smooth_image(128, 96, seed=4)
    data = encode_image(rgb, bpp=0.5, model=m, refine=4)
    assert 8 * len(data) / (128 * 96) <= 0.5
    assert 8 * len(data) / (128 * 96) >= 8 * len(encode_image(rgb, bpp=0.5, model=m)) / (128 * 96) * 0.8


def test_refine_errors_are_typed(tmp_path):
    m = load_image_model(None)
    rgb = smooth_image(16, 16)
    for bad in (-1, 1.5, True):
        with pytest.raises(LtcInputError):
            encode_image(rgb, quality=2, model=m, refine=bad)
    # The shipped file without its float hyperprior, as one written with training_state=False is.
    blob = find_model("ltc-image-e8").read_bytes()
    arrays = {k: v for k, v in st_load(blob).items() if not k.startswith("train.")}
    (tmp_path / "bare.safetensors").write_bytes(st_save(arrays, metadata=model_metadata(blob)))
    with pytest.raises(LtcModelError, match="float hyperprior"):
        encode_image(rgb, quality=2, model=str(tmp_path / "bare.safetensors"), refine=2)


def test_refinement_is_repeatable_and_leaves_the_random_state_alone():
    m = load_image_model(None)
    rgb = smooth_image(48, 32, seed=7)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = encode_image(rgb, quality=2, model=m, refine=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert encode_image(rgb, quality=2, model=m, refine=3) == a


def test_a_refined_encode_range_codes_each_file_once(monkeypatch):
    """The never-worse check builds the plain and the refined file; the file returned is one of them,
    not a third coding of the same latent (a third only when the plain one wins and is built again)."""
    m = load_image_model(None)
    img = smooth_image(128, 96, 3)
    plain = encode_image(img, quality=6, model=m)
    calls = []
    original = type(m).compress_latent
    monkeypatch.setattr(m, "compress_latent", lambda latent, q: calls.append(q) or original(m, latent, q))
    data = encode_image(img, quality=6, model=m, refine=2)
    assert set(calls) == {image_info(data).quality}
    assert len(calls) == (2 if data != plain else 3)
