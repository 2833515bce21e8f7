"""Widening a trained network without changing what it computes (Net2WiderNet, Chen et al., 2016).

A run that has hit the capacity of its transforms can continue in a wider network from where it
stands instead of starting over: new channel j copies old channel j mod C, and each layer's weights on
widened *input* channels are divided by the number of copies of their channel, so every sum it forms
is the old one.  Small noise on the copies lets them diverge in training (identical copies would get
identical gradients forever).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import GDN

__all__ = ["COPY_NOISE", "widen_state"]

#: Noise on the copies of widened channels, relative to each tensor's spread: enough for the copies to
#: diverge in training, small enough to leave the loss where it was (on the audio model's eval clips,
#: 10⁻³ moves the spectral distance by 0.2%, 10⁻² by 6%).
COPY_NOISE = 0.001

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d)


def widen_state(old: dict[str, Tensor], wider: nn.Module, noise: float = 0.0,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A state dict for ``wider`` from the state ``old`` of the same architecture with fewer channels.

    Tensors whose shapes agree are copied.  Where an axis grew from C to C', entry j along it is old
    entry j mod C (any C' > C: the first C' mod C channels get one copy more); on a weight's
    input-channel axis (axis 1 of a convolution, axis 0 of a transposed one) each entry is divided by
    its channel's number of copies (a GDN's γ, stored as its square root, by the root of that number).
    ``noise`` adds Gaussian noise of that size relative to each
    widened tensor's standard deviation.
    """
    modules = dict(wider.named_modules())
    out = {}
    for name, target in wider.state_dict().items():
        src = old[name]
        if src.shape == target.shape:
            out[name] = src.clone()
            continue
        if src.dim() != target.dim():
            raise ValueError(f"{name}: {tuple(src.shape)} cannot widen to {tuple(target.shape)}")
        owner = modules.get(name.rsplit(".", 1)[0])
        in_axis = 0 if isinstance(owner, _TRANSPOSED) else 1
        weight = name.endswith("weight") and src.dim() >= 2
        # A GDN sums γ_ij |x_j| over its inputs j, γ stored as its square root.
        gdn_gamma = isinstance(owner, GDN) and name.endswith(".gamma")
        t = src
        for axis, (a, b) in enumerate(zip(src.shape, target.shape)):
            if a == b:
                continue
            if b < a:
                raise ValueError(f"{name}: axis {axis} would shrink from {a} to {b}")
            source = torch.arange(b) % a
            t = t.index_select(axis, source)
            if (weight or gdn_gamma) and axis == in_axis:
                copies = torch.bincount(source, minlength=a)[source].to(t.dtype)
                copies = copies.sqrt() if gdn_gamma else copies
                t = t / copies.reshape([-1 if d == axis else 1 for d in range(t.dim())])
        if noise:
            t = t + torch.randn(t.shape, generator=generator, dtype=t.dtype) * (noise * float(src.std()))
        out[name] = t
    return out
