import numpy as np
import torch

from bench.latent_usage import channels_for_share, measure, report
from ltcodec.image_model import ImageModelConfig, LatticeHyperprior


def test_channels_for_share_counts_the_largest_first():
    bits = np.array([1.0, 4.0, 2.0, 3.0])  # sorted: 4 3 2 1 → cumulative 0.4 0.7 0.9 1.0
    assert [channels_for_share(bits, s) for s in (0.3, 0.5, 0.9, 0.99)] == [1, 2, 3, 4]


def test_measure_reports_every_quality_of_a_model():
    torch.manual_seed(0)
    net = LatticeHyperprior(ImageModelConfig(N=8, M=16))
    img = (np.random.default_rng(0).random((40, 70, 3)) * 255).astype(np.uint8)
    rows = measure(net, [img])
    assert [r["quality"] for r in rows] == list(range(1, 9))
    for r in rows:
        c = r["channels"]
        assert 1 <= c["0.5"] <= c["0.9"] <= c["0.99"] <= 16
        assert r["bpp_y"] > 0 and np.isfinite(r["psnr"]) and np.isfinite(r["psnr_unquantized"])
    text = report(rows, "tiny", 16, 1, "python -m bench.latent_usage", "now")
    assert text.count("\n| ") == 8 + 1 and "M = 16" in text


def test_a_model_file_also_reports_its_coders_bits(tmp_path):
    from bench.latent_usage import load_network
    from ltcodec.image_codec import ImageCodecModel, export_image_model

    torch.manual_seed(0)
    net = LatticeHyperprior(ImageModelConfig(N=8, M=16))
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    path = tmp_path / "m.safetensors"
    export_image_model(net, [img], path, "m")
    coder = ImageCodecModel.from_file(path)
    float_net, _ = load_network(path)
    rows = measure(float_net, [img], coder)
    y = coder.analysis(img)
    for r in rows:
        z_bits, y_bits = coder.stream_bits(y, float(r["quality"]))
        assert r["bpp_y_coder"] == y_bits / (64 * 64)
        assert z_bits + y_bits == coder.latent_bits(y, float(r["quality"]))
    text = report(rows, "m", 16, 1, "python -m bench.latent_usage", "now")
    assert "bpp (y), coder" in text and text.count("\n| ") == 8 + 1
    assert "bpp (y), coder" not in report(measure(float_net, [img]), "m", 16, 1, "cmd", "now")


def test_the_linear_bound_keeps_more_with_more_dimensions_and_everything_with_all():
    from bench.latent_usage import blocks_of, linear_bound

    rng = np.random.default_rng(1)
    # smooth images (a few low-frequency components) plus a little noise: a handful of dimensions keep most
    yy, xx = np.mgrid[0:64, 0:96] / 16.0
    images = []
    for _ in range(4):
        pattern = np.sin(xx * rng.uniform(0.5, 2)) * np.cos(yy * rng.uniform(0.5, 2))
        colour = pattern[..., None] * rng.uniform(0.5, 1, 3)
        images.append(np.clip(128 + 60 * colour + rng.normal(0, 2, (64, 96, 3)), 0, 255).astype(np.uint8))
    assert blocks_of(images[0]).shape == (4 * 6, 768)
    assert np.array_equal(blocks_of(images[0])[1].reshape(16, 16, 3), images[0][:16, 16:32])
    bound = linear_bound(images, (4, 32, 768))
    assert bound[4] < bound[32] < bound[768] and bound[768] >= 99  # all 768 dimensions: lossless (to rounding)
    assert bound[32] > 35  # the smooth part needs few
    text = report(measure(LatticeHyperprior(ImageModelConfig(N=8, M=16)), images[:1]), "m", 16, 1, "cmd", "now",
                  {16: bound[4], 32: bound[32]}, "`train`")
    assert "16 (the model’s M)" in text and "first 1 `train` images" in text
