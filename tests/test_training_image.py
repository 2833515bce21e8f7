"""The image training recipe's helpers: widening the latent, restarting from a model file, the ablation runs."""

from pathlib import Path

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


def test_a_shipped_file_restarts_training_with_its_hyperprior(tmp_path):
    import numpy as np

    from ltcodec.image_codec import ImageCodecModel, export_image_model
    from ltcodec.training.image import load_init

    torch.manual_seed(1)
    net = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    path = tmp_path / "m.safetensors"
    export_image_model(net, [rgb], path, "m")
    ImageCodecModel.from_file(path)  # the codec ignores the training-only arrays
    weights, _, _ = load_init(path)
    again = LatticeHyperprior(ImageModelConfig(N=16, M=16, lattice="e8"))
    missing, unexpected = again.load_state_dict(weights, strict=False)
    assert not missing and not unexpected
    for k, v in net.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=2e-3, atol=2e-3)  # fp16 conv kernels


def test_every_ablation_lattice_builds_the_image_model():
    from bench.ablation import LATENT_CHANNELS, train_command
    from ltcodec.lattice import get_lattice

    for lattice, m in LATENT_CHANNELS.items():
        assert m % get_lattice(lattice).dim == 0 and m >= 128
        LatticeHyperprior(ImageModelConfig(N=8, M=m, lattice=lattice))
        cmd = train_command(lattice, Path("init.ckpt"), 10, Path("out"), 0)
        assert cmd[cmd.index("--M") + 1] == str(m) and cmd[cmd.index("--lattice") + 1] == lattice
