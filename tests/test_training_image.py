"""The image training recipe's helpers: widening the latent for a wider lattice."""

import torch

from ltcodec.image_model import ImageModelConfig, LatticeHyperprior
from ltcodec.training.image import widen_latent


def test_widened_latent_starts_as_the_same_codec():
    torch.manual_seed(0)
    narrow = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    wide = LatticeHyperprior(ImageModelConfig(N=16, M=24, lattice="e8"))
    wide.load_state_dict(widen_latent(narrow.state_dict(), 24))
    x = torch.rand(1, 3, 64, 64)
    q = torch.tensor([3.0])
    a, b = narrow.estimate(x, q), wide.estimate(x, q)
    # The old channels keep their blocks, means and scales; the new ones do not reach g_s.
    assert torch.equal(a["x_hat"], b["x_hat"])
    assert torch.equal(a["bits_z"], b["bits_z"])
    assert b["bits_y"] >= a["bits_y"]
    assert wide.g_a[6].weight[16:].abs().sum() > 0  # the new channels can learn


def test_widen_refuses_to_narrow():
    net = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    try:
        widen_latent(net.state_dict(), 8)
    except ValueError as e:
        assert "narrow" in str(e)
    else:
        raise AssertionError("narrowing was accepted")
