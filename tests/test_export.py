"""Export: a trained network becomes a self-checking model file that codes exactly."""

import numpy as np
import pytest
import torch

from ltcodec.errors import LtcModelError
from ltcodec.image import decode_image, decoded_integers, encode_image
from ltcodec.image_codec import ImageCodecModel, export_image_model
from ltcodec.image_model import ImageModelConfig, LatticeHyperprior

from conftest import smooth_image


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    net = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    sha = export_image_model(net, [smooth_image(64, 64, s) for s in range(3)], path, "tiny")
    return path, sha


def test_exported_model_round_trips_exactly(tiny_model):
    path, sha = tiny_model
    model = ImageCodecModel.from_file(path)
    assert model.sha256 == sha and model.name == "tiny"
    img = smooth_image(70, 40, 9)
    data = encode_image(img, quality=5, model=model)
    out = decode_image(data, model=model)
    assert out.size == (70, 40)
    again = ImageCodecModel.from_file(path)  # a second load decodes the same integers
    assert decoded_integers(data, model=again) == decoded_integers(data, model=model)


def test_integer_network_matches_its_float_original_closely(tiny_model):
    path, _ = tiny_model
    model = ImageCodecModel.from_file(path)
    torch.manual_seed(0)
    net = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8")).eval()
    with torch.no_grad():  # a hyper-latent as the codec sees it (inside the calibrated range)
        y = model.analysis(smooth_image(64, 64, 1)) * model._gains(5.0)[0]
        z = torch.round(model.h_a(y)).long()
        mean, log2_scale = net.hyper_parameters(z.float())
    mean_int, level = model.hyper(z[0].numpy(), (4, 4))
    assert np.abs(mean_int / 16 - mean[0].numpy()).max() < 0.1
    assert np.abs(level / 8 - log2_scale[0].numpy()).max() < 0.2


def test_tampered_model_file_is_refused(tiny_model, tmp_path):
    path, _ = tiny_model
    blob = bytearray(path.read_bytes())
    # Change one integer weight: the file digest changes (the container would refuse it) and the
    # load-time self-test, which hashes every layer's accumulators, fails.
    from safetensors.numpy import load

    arrays = load(bytes(blob))
    w = arrays["h_s.0.weight"].copy()
    w.flat[0] += 1
    arrays["h_s.0.weight"] = w
    from safetensors.numpy import save

    import json
    n = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(save(arrays, metadata=meta))
    with pytest.raises(LtcModelError, match="self-test"):
        ImageCodecModel.from_file(bad)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(LtcModelError, match="damaged"):
        ImageCodecModel.from_file(garbage)


def test_a_scale_floor_changes_the_rate_only_and_round_trips(tmp_path):
    from ltcodec.training.export_image import fit_scale_floor

    torch.manual_seed(0)
    net = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    images = [smooth_image(64, 64, s) for s in range(3)]
    level = fit_scale_floor(net, images, candidates=range(-32, -7, 4))
    assert level in range(-32, -7, 4)
    models = {}
    for floor in (-32, -12):
        net.config.scale_floor_level = floor
        export_image_model(net, images, tmp_path / f"f{floor}.safetensors", "tiny")
        models[floor] = ImageCodecModel.from_file(tmp_path / f"f{floor}.safetensors")
        assert models[floor].config.scale_floor_level == floor
    img = smooth_image(70, 40, 9)
    data = {f: encode_image(img, quality=2, model=m) for f, m in models.items()}
    assert data[-32] != data[-12]  # the coded sizes differ ...
    pixels = {f: np.asarray(decode_image(data[f], model=models[f])) for f in models}
    np.testing.assert_array_equal(pixels[-32], pixels[-12])  # ... the decoded image does not
    z_hat = np.random.default_rng(0).integers(-3, 4, (16, 2, 2))
    _, free = models[-32].hyper(z_hat, (8, 8))
    _, floored = models[-12].hyper(z_hat, (8, 8))
    np.testing.assert_array_equal(floored, np.maximum(free, -12))


def test_transforms_wider_than_the_hyperprior_export_and_code(tmp_path):
    torch.manual_seed(0)
    net = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8", transform_N=24))
    path = tmp_path / "wide.safetensors"
    export_image_model(net, [smooth_image(64, 64, s) for s in range(2)], path, "wide")
    model = ImageCodecModel.from_file(path)
    assert model.config.transform_N == 24 and model.config.N == 16
    img = smooth_image(64, 64, 9)
    out = np.asarray(decode_image(encode_image(img, quality=5, model=model), model=model)) / 255.0
    with torch.no_grad():  # the file decodes as the network it was exported from
        x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None].float() / 255
        ref = net.estimate(x, torch.tensor([4.0]))["x_hat"][0].permute(1, 2, 0).clamp(0, 1).numpy()
    assert out.shape == (64, 64, 3) and np.abs(out - ref).mean() < 0.01


def test_a_deeper_analysis_transform_exports_and_codes(tmp_path):
    torch.manual_seed(0)
    net = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8", analysis_blocks=1))
    with torch.no_grad():
        for block in list(net.g_a)[7:]:
            block.conv2.weight.normal_(0, 0.05)
    path = tmp_path / "deep.safetensors"
    export_image_model(net, [smooth_image(64, 64, s) for s in range(2)], path, "deep")
    model = ImageCodecModel.from_file(path)
    assert model.config.analysis_blocks == 1
    img = smooth_image(64, 64, 9)
    with torch.no_grad():  # the blocks' weights travel in the file
        x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None].float() / 255
        assert torch.allclose(model.g_a(x), net.g_a(x), atol=1e-2)
        ref = net.estimate(x, torch.tensor([4.0]))["x_hat"][0].permute(1, 2, 0).clamp(0, 1).numpy()
    out = np.asarray(decode_image(encode_image(img, quality=5, model=model), model=model)) / 255.0
    assert out.shape == (64, 64, 3) and np.abs(out - ref).mean() < 0.01


def test_tables_refitted_at_export_code_the_same_pixels_in_fewer_bits(tmp_path):
    torch.manual_seed(0)
    net = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    images = [smooth_image(64, 64, s) for s in range(3)]
    plain, fitted = tmp_path / "plain.safetensors", tmp_path / "fitted.safetensors"
    export_image_model(net, images, plain, "plain")
    export_image_model(net, images, fitted, "fitted", table_images=[smooth_image(128, 128, s) for s in range(4)])
    assert sorted(f.name for f in tmp_path.iterdir()) == ["fitted.safetensors", "plain.safetensors"]  # no draft left
    a, b = ImageCodecModel.from_file(plain), ImageCodecModel.from_file(fitted)
    assert not np.array_equal(a.y_coder.tables.freqs, b.y_coder.tables.freqs)
    img = smooth_image(96, 80, 11)
    bits_a = bits_b = 0
    for q in (2, 5, 8):
        da, db = encode_image(img, quality=q, model=a), encode_image(img, quality=q, model=b)
        assert np.array_equal(np.asarray(decode_image(da, model=a)), np.asarray(decode_image(db, model=b)))
        bits_a, bits_b = bits_a + len(da), bits_b + len(db)
    assert bits_b < bits_a
