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
