"""The checkerboard context: anchors under the hyperprior alone, the other half refined from them."""

import pytest
import torch

from ltcodec.image_model import ImageModelConfig, LatticeHyperprior, anchor_mask


def _pair(seed=0):
    torch.manual_seed(seed)
    plain = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    ctx = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8", context="checkerboard"))
    missing, unexpected = ctx.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("ctx.") for k in missing)
    return plain, ctx


def test_a_context_starting_at_zero_computes_what_the_hyperprior_did():
    plain, ctx = _pair()
    x = torch.rand(2, 3, 64, 64)
    q = torch.tensor([1.0, 6.0])
    for a, b in zip(plain.estimate(x, q).values(), ctx.estimate(x, q).values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(1)
    want = plain(x, q, rate="hard")
    torch.manual_seed(1)
    got = ctx(x, q, rate="hard")
    torch.testing.assert_close(want["bits_y"], got["bits_y"], rtol=0, atol=0)


def test_the_context_moves_only_the_other_half_and_learns():
    plain, ctx = _pair()
    with torch.no_grad():
        for net in (plain, ctx):
            net.enc_gain.add_(4.0)  # latents many lattice cells wide: anchors far from zero
        ctx.ctx[2].weight.normal_(0, 0.01)
        ctx.ctx[2].bias.normal_(0, 0.5)
    x = torch.rand(1, 3, 64, 64)
    q = torch.tensor([3.0])
    a, b = plain.hard_latent(x, q), ctx.hard_latent(x, q)
    anchors = anchor_mask(4, 4).bool()[0, 0]  # (h, w)
    assert torch.equal(a["hard"][0][anchors], b["hard"][0][anchors])
    assert torch.equal(a["mean"][0][:, anchors], b["mean"][0][:, anchors])
    assert not torch.equal(a["mean"][0][:, ~anchors], b["mean"][0][:, ~anchors])
    assert not torch.equal(a["scale"][0][~anchors], b["scale"][0][~anchors])
    ctx.zero_grad()
    ctx(x, q, rate="hard")["bits_y"].sum().backward()
    assert ctx.ctx[0].weight.grad.abs().sum() > 0 and ctx.ctx[2].weight.grad.abs().sum() > 0


def test_an_unknown_context_is_refused():
    with pytest.raises(ValueError, match="unknown context"):
        LatticeHyperprior(ImageModelConfig(N=16, M=16, context="raster"))


def test_anchors_are_the_even_positions():
    assert anchor_mask(2, 3)[0, 0].tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]


def _context_model(tmp_path, scale=0.05):
    from conftest import smooth_image
    from ltcodec.image_codec import ImageCodecModel, export_image_model

    plain, ctx = _pair(5)
    with torch.no_grad():
        for net in (plain, ctx):
            net.enc_gain.add_(3.0)
        ctx.ctx[2].weight.normal_(0, scale)
        ctx.ctx[2].bias.normal_(0, 0.5)
    path = tmp_path / "ctx.safetensors"
    export_image_model(ctx, [smooth_image(64, 64, s) for s in range(3)], path, "ctx")
    return ImageCodecModel.from_file(path), ctx, path


def test_a_context_model_codes_two_streams_exactly_and_refuses_a_file_without_the_second(tmp_path):
    import numpy as np

    from conftest import smooth_image
    from ltcodec.container import read_container, write_container
    from ltcodec.errors import LtcFormatError
    from ltcodec.image import decode_image, decoded_integers, encode_image
    from ltcodec.image_codec import _calibration_context

    model, net, _ = _context_model(tmp_path)
    assert model.ctx_int is not None and model.ctx_int.layers[0].groups == 8
    img = smooth_image(90, 70, 4)
    data = encode_image(img, quality=6, model=model)
    assert decode_image(data, model=model).size == (90, 70)
    # The integers decoded are the ones coded: anchors first, the rest under the context's parameters.
    z, u, _, _ = model._symbols(model.analysis(np.asarray(img)), 6.0)
    assert decoded_integers(data, model=model) == z.astype("<i8").tobytes() + u.astype("<i8").tobytes()
    # The integer context network tracks the float one it was frozen from, on inputs like its calibration.
    v = _calibration_context(net, [smooth_image(64, 64, 7)])
    with torch.no_grad():
        want = net.ctx.double()(v.double())
    got = model.ctx_int(v.long()).double()
    torch.testing.assert_close(got[:, :16] / 16, want[:, :16], atol=0.03 * want.abs().max() + 0.1, rtol=0)
    c = read_container(data, {b"ZSTR", b"YSTR", b"YST2", b"ALPH", b"iCCP", b"eXIf"})
    assert [t for t, _ in c.chunks] == [b"ZSTR", b"YSTR", b"YST2"]
    one = write_container(c.head, c.model, [(t, p) for t, p in c.chunks if t != b"YST2"])
    with pytest.raises(LtcFormatError, match="two expected"):
        decode_image(one, model=model)


def test_a_context_needs_a_lattice_with_exact_points(tmp_path):
    from conftest import smooth_image
    from ltcodec.errors import LtcModelError
    from ltcodec.image_codec import export_image_model

    torch.manual_seed(0)
    net = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="d4", context="checkerboard"))
    with pytest.raises(LtcModelError, match="exact points"):
        export_image_model(net, [smooth_image(64, 64, 0)], tmp_path / "d4.safetensors", "d4")


def test_refinement_descends_through_the_context_and_its_files_decode(tmp_path):
    from conftest import smooth_image
    from ltcodec.image import decode_image, encode_image

    model, net, _ = _context_model(tmp_path)
    img = smooth_image(64, 64, 2)
    data = encode_image(img, quality=4, model=model, refine=2)
    assert decode_image(data, model=model).size == (64, 64)
    # The float context was loaded for the search (stored in half precision, as the transforms are).
    torch.testing.assert_close(model._net.ctx[2].weight, net.ctx[2].weight.half().float(), rtol=0, atol=0)


def test_the_context_network_in_bands_is_exactly_the_whole_one(tmp_path):
    import numpy as np

    model, _, _ = _context_model(tmp_path)
    v = np.random.default_rng(0).integers(-300, 300, (16, 23, 9))
    whole = model.ctx_int(torch.from_numpy(v)[None])[0].numpy()
    model.context_band = 4  # 6 bands, each with its 2 rows of reach on either side
    assert np.array_equal(model._context_network(v), whole)


def test_coding_in_chunks_and_bands_writes_the_same_bytes(tmp_path):
    from conftest import smooth_image
    from ltcodec.image import decode_image, encode_image

    model, _, path = _context_model(tmp_path)
    img = smooth_image(200, 136, 3)
    whole = encode_image(img, quality=6, model=model)
    model.closest_chunk, model.context_band = 7, 2  # the closest points 7 blocks at a time
    assert encode_image(img, quality=6, model=model) == whole
    assert decode_image(whole, model=model).tobytes() == decode_image(whole, model=path).tobytes()
