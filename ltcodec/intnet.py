"""Exact integer networks for everything that feeds the entropy decoder (DESIGN-NOTES §3).

Ballé, Johnston & Minnen, "Integer networks for data compression with latent-variable models"
(ICLR 2019): integer weights and biases, per-channel requantization ``(acc·m + 2^(s−1)) >> s``, an
integer leaky ReLU (``x if x ≥ 0 else floor(x/8)``) and clamps, all in int64.  Convolutions run as
float64 convolutions on integer-valued tensors: while every partial sum stays below 2^53 any summation
order gives the same exact result, so every BLAS, thread count, ISA and device agrees.  The network is
quantized once, at export (:func:`quantize_network`), and the integers ship with the weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["IntLayer", "IntegerNetwork", "quantize_network", "WEIGHT_BITS", "ACTIVATION_BITS"]

WEIGHT_BITS = 12
ACTIVATION_BITS = 12
_EXACT = 2 ** 53


@dataclass
class IntLayer:
    kind: str  # "conv" or "deconv"
    weight: np.ndarray  # int64, torch layout of the float layer
    bias: np.ndarray  # int64 (out,), in accumulator units
    mult: np.ndarray  # int64 (out,)
    shift: np.ndarray  # int64 (out,)
    post: np.ndarray  # int64 (out,), added after requantization
    lo: np.ndarray  # int64 (out,) clamp after the nonlinearity
    hi: np.ndarray
    stride: int | tuple[int, int]  # (1, k)-kernel layers of the audio model have (1, s) strides
    padding: int | tuple[int, int]
    output_padding: int | tuple[int, int]
    leaky: bool
    groups: int = 1  # convolutions only: input and output channels in this many independent groups

    def spec(self) -> dict:
        def js(v):
            return list(v) if isinstance(v, tuple) else v
        spec = {"kind": self.kind, "stride": js(self.stride), "padding": js(self.padding),
                "output_padding": js(self.output_padding), "leaky": self.leaky}
        if self.groups != 1:
            spec["groups"] = self.groups
        return spec


class IntegerNetwork:
    """Runs a list of :class:`IntLayer` exactly; input and output are int64 tensors (B, C, H, W)."""

    def __init__(self, layers: list[IntLayer], input_clamp: int = (1 << (ACTIVATION_BITS - 1)) - 1):
        self.layers = layers
        self.input_clamp = input_clamp
        self._w = [torch.from_numpy(l.weight.astype(np.float64)) for l in layers]
        self._b = [torch.from_numpy(l.bias.astype(np.float64)) for l in layers]
        for l in layers:
            max_in = input_clamp if l is layers[0] else (1 << (ACTIVATION_BITS - 1))
            axis = (1, 2, 3) if l.kind == "conv" else (0, 2, 3)
            acc_bound = max_in * np.abs(l.weight).sum(axis=axis) + np.abs(l.bias)
            if acc_bound.max() >= _EXACT or (acc_bound * l.mult).max() >= 2 ** 62:
                raise ValueError("integer network could overflow its exact range")

    def __call__(self, x: Tensor, trace: list | None = None) -> Tensor:
        """Run the network; ``trace`` (a list) receives every layer's exact accumulator."""
        a = x.to(torch.int64).clamp(-self.input_clamp, self.input_clamp)
        for layer, w, b in zip(self.layers, self._w, self._b):
            af = a.to(torch.float64)
            if layer.kind == "conv":
                acc = F.conv2d(af, w, b, stride=layer.stride, padding=layer.padding, groups=layer.groups)
            else:
                acc = F.conv_transpose2d(af, w, b, stride=layer.stride, padding=layer.padding,
                                         output_padding=layer.output_padding)
            acc = acc.to(torch.int64)
            if trace is not None:
                trace.append(acc)
            m = torch.from_numpy(layer.mult)[None, :, None, None]
            s = torch.from_numpy(layer.shift)[None, :, None, None]
            a = ((acc * m + torch.bitwise_left_shift(torch.ones_like(s), s - 1)) >> s) + torch.from_numpy(layer.post)[None, :, None, None]
            if layer.leaky:
                a = torch.where(a >= 0, a, a >> 3)  # floor(a / 8)
            a = torch.maximum(torch.minimum(a, torch.from_numpy(layer.hi)[None, :, None, None]),
                              torch.from_numpy(layer.lo)[None, :, None, None])
        return a

    def fingerprint(self, channels: int, size: int = 4) -> str:
        """SHA-256 of every layer's accumulator on a fixed pseudo-random input.

        Stored with the weights and checked at load: a platform whose arithmetic is not exact (or a
        damaged weight) changes the accumulators even where the clamped outputs would not show it.
        """
        rng = np.random.default_rng(1234)
        x = torch.from_numpy(rng.integers(-8, 9, size=(1, channels, size, size)).astype(np.int64))
        trace: list = []
        out = self(x, trace)
        h = hashlib.sha256()
        for t in [*trace, out]:
            h.update(t.numpy().astype("<i8").tobytes())
        return h.hexdigest()

    # -- (de)serialization -------------------------------------------------------------------------------
    FIELDS = ("weight", "bias", "mult", "shift", "post", "lo", "hi")

    def to_arrays(self, prefix: str) -> tuple[dict[str, np.ndarray], list[dict]]:
        arrays = {}
        for i, l in enumerate(self.layers):
            for f in self.FIELDS:
                # Weights fit 12 bits: stored as int16; the rest as int64.
                dtype = np.int16 if f == "weight" else np.int64
                arrays[f"{prefix}{i}.{f}"] = np.ascontiguousarray(getattr(l, f), dtype=dtype)
        return arrays, [l.spec() for l in self.layers]

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, specs: list[dict],
                    input_clamp: int) -> "IntegerNetwork":
        layers = []
        for i, spec in enumerate(specs):
            kw = {f: np.asarray(arrays[f"{prefix}{i}.{f}"], dtype=np.int64) for f in cls.FIELDS}
            groups = int(spec.get("groups", 1))
            if groups < 1 or (spec["kind"] != "conv" and groups != 1):
                raise ValueError("groups are a positive count, of convolutions only")
            layers.append(IntLayer(kind=spec["kind"], stride=_pair(spec["stride"]), padding=_pair(spec["padding"]),
                                   output_padding=_pair(spec["output_padding"]), leaky=bool(spec["leaky"]),
                                   groups=groups, **kw))
        return cls(layers, input_clamp)


def _pair(v) -> int | tuple[int, int]:
    """A stored stride/padding: an int, or a pair for non-square layers (collapsed when equal)."""
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError("strides and paddings are ints or pairs")
        a, b = int(v[0]), int(v[1])
        return a if a == b else (a, b)
    return int(v)


def _mult_shift(ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """m, s with m/2^s ≈ ratio and 2^15 ≤ m < 2^16."""
    ratio = np.asarray(ratio, dtype=np.float64)
    e = np.floor(np.log2(ratio)).astype(np.int64)
    shift = 15 - e
    mult = np.round(ratio * np.exp2(shift.astype(np.float64))).astype(np.int64)
    over = mult >= 1 << 16
    mult[over] >>= 1
    shift[over] -= 1
    if (shift < 1).any():
        raise ValueError("requantization ratio too large")
    return mult, shift


@torch.no_grad()
def quantize_network(net: nn.Sequential, calibration: Tensor, output_scales: np.ndarray,
                     output_post: np.ndarray, output_lo: np.ndarray, output_hi: np.ndarray) -> IntegerNetwork:
    """Post-training quantization of a Sequential of (de)convolutions and LeakyReLU(1/8).

    ``calibration`` holds typical integer inputs; activation scales are set from their range.  The last
    layer's real output o_c is mapped to round(o_c · output_scales[c]) + output_post[c], clamped.
    """
    mods = list(net)
    convs = [i for i, m in enumerate(mods) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    x = calibration.double()
    s_in = 1.0
    wmax = (1 << (WEIGHT_BITS - 1)) - 1
    amax = (1 << (ACTIVATION_BITS - 1)) - 1
    layers = []
    for n, ci in enumerate(convs):
        conv = mods[ci]
        last = n == len(convs) - 1
        leaky = not last and isinstance(mods[ci + 1], nn.LeakyReLU)
        if leaky and abs(mods[ci + 1].negative_slope - 0.125) > 1e-12:
            raise ValueError("integer networks use leaky ReLU with slope 1/8")
        w = conv.weight.double()
        deconv = isinstance(conv, nn.ConvTranspose2d)
        if deconv and conv.groups != 1:
            raise ValueError("integer networks have grouped convolutions, not grouped transposed ones")
        axis = (0, 2, 3) if deconv else (1, 2, 3)
        s_w = w.abs().amax(dim=axis).clamp_min(1e-12) / wmax  # per output channel
        shape = (1, -1, 1, 1) if deconv else (-1, 1, 1, 1)
        w_int = torch.round(w / s_w.reshape(shape))
        b_int = torch.round(conv.bias.double() / (s_in * s_w))
        # Float reference of this layer's pre-activation, to set the output scale.
        if deconv:
            pre = F.conv_transpose2d(x, conv.weight.double(), conv.bias.double(), stride=conv.stride,
                                     padding=conv.padding, output_padding=conv.output_padding)
        else:
            pre = F.conv2d(x, conv.weight.double(), conv.bias.double(), stride=conv.stride, padding=conv.padding,
                           groups=conv.groups)
        c_out = pre.shape[1]
        if last:
            ratio = s_in * s_w.numpy() * output_scales
            post, lo, hi = output_post, output_lo, output_hi
            s_out = None
        else:
            s_out = max(float(pre.abs().max()) * 1.25, 1e-6) / amax  # headroom beyond calibration
            ratio = s_in * s_w.numpy() / s_out
            post = np.zeros(c_out, np.int64)
            lo = np.full(c_out, -amax - 1, np.int64)
            hi = np.full(c_out, amax, np.int64)
        mult, shift = _mult_shift(ratio)
        layers.append(IntLayer(
            kind="deconv" if deconv else "conv", weight=w_int.numpy().astype(np.int64),
            bias=b_int.numpy().astype(np.int64), mult=mult, shift=shift, post=np.asarray(post, np.int64),
            lo=np.asarray(lo, np.int64), hi=np.asarray(hi, np.int64), stride=_pair(conv.stride),
            padding=_pair(conv.padding), output_padding=_pair(getattr(conv, "output_padding", (0, 0))),
            leaky=leaky, groups=conv.groups))
        x = pre if not leaky else F.leaky_relu(pre, 0.125)
        if s_out is not None:
            s_in = s_out
    return IntegerNetwork(layers)
