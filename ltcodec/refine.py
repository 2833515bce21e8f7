"""Encoder-side refinement of an image's latent: a slower encode that makes the same decoder's file smaller.

The analysis transform g_a is amortized inference: one pass that guesses a good latent for any image.
For one given image a better latent can be found by descending the rate–distortion objective the model
was trained on, through the synthesis transform that will decode it (Campos et al. 2019, "Content
adaptive optimization for neural image compression"; Yang et al. 2020, "Improving inference for neural
image compression").  The search starts from g_a's latent and keeps its best iterate under the hard
(actually coded) objective, so it never ends worse than where it started by that measure; the encoder
then keeps it only if its real file (integer hyperprior, whole words) scores better than the plain one.

Decoding is unchanged — the refined latent is coded like any other — so such files decode with every
decoder, exactly.  The search needs the float hyper-synthesis and hyper-latent density that a model file
keeps for training (``train.*``); the coder itself uses their frozen integer forms.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .entropy import box_likelihood
from .errors import LtcModelError

__all__ = ["refine_latent", "prepare_refinement", "quality_lambda", "REFINE_TILE"]

#: Latents refined at a time (a tile's backward pass holds g_s's activations: ~1.5 GiB at 64² latents),
#: with a frozen border of neighbours around it so that the tile sees its surroundings.
REFINE_TILE = 64
REFINE_HALO = 4  # a whole hyper-latent position (z is at 1/4 of the latent's resolution)
#: Adam's first step in lattice units (the quantizer's scale at every quality), decayed to zero over the
#: steps: large enough to cross quantization cells within tens of steps, small enough that the relaxed
#: objective still tracks the coded one.  (A step growing tenfold from quality 1 to 8 did better at the
#: ends and worse in the middle, and worse overall on the first 6 Kodak images.)
STEP_SIZE = 0.01


def quality_lambda(lambdas: tuple[float, ...], quality: float) -> float:
    """The rate–distortion trade-off λ of a (fractional) quality: the trained ladder, log-interpolated
    as the gains are."""
    logs = np.log(np.asarray(lambdas, np.float64))
    q = min(max(quality - 1.0, 0.0), len(logs) - 1.0)
    i = min(int(q), len(logs) - 2)
    t = q - i
    return float(np.exp((1 - t) * logs[i] + t * logs[i + 1]))


def prepare_refinement(m) -> None:
    """Load the float h_s, z density and context kept for training into the model's network (once); a model
    file without them (written with ``training_state=False``) cannot refine: :class:`LtcModelError`."""
    net = m._net
    if getattr(net, "_float_hyper_loaded", False):
        return
    state = getattr(m, "training_state", None)
    if not state:
        raise LtcModelError(f"model {m.name} keeps no float hyperprior, which refinement needs")
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(k.startswith(("h_s.", "z_density.", "ctx.")) for k in missing):
        raise LtcModelError(f"model {m.name}: its float hyperprior does not match its architecture")
    net._float_hyper_loaded = True


def _objective(net, x: Tensor, y: Tensor, dec_g: Tensor, lam: float, px_mask: Tensor, lat_mask: Tensor,
               relaxed: bool) -> tuple[Tensor, float]:
    """(relaxed objective to descend, hard objective of the coded latent), per pixel of the interior."""
    z = net.h_a(y)
    z_hat = z + (torch.round(z) - z).detach()
    hard, mean, log2_scale = net.quantized_latent(y, z_hat, "ste")
    residual = net.to_blocks(y - mean)
    scale = net.to_blocks(torch.exp2(log2_scale))
    blocks = net.to_blocks(lat_mask.expand_as(y))[..., 0]  # 1 where a block is the tile's own
    floor = net.config.likelihood_floor
    pixels = px_mask.sum()
    x_hat = net.g_s((net.from_blocks(hard) + mean) * dec_g)
    distortion = lam * 255.0 ** 2 * (((x_hat - x) ** 2) * px_mask).sum() / (3 * pixels)
    bits_z = -torch.log2(net.z_density.likelihood(z_hat)).sum() * float(lat_mask.mean())
    with torch.no_grad():
        hard_bits = -(torch.log2(box_likelihood(hard, net.lattice.diagonal, scale, floor)).sum(-1) * blocks).sum()
        hard_value = float(distortion + (hard_bits + bits_z) / pixels)
    # The rate sees dithered points, as in training: its gradient moves the latent smoothly.
    points = net.lattice.quantize(residual, "noise") if relaxed else hard
    bits_y = -(torch.log2(box_likelihood(points, net.lattice.diagonal, scale, floor)).sum(-1) * blocks).sum()
    return distortion + (bits_y + bits_z) / pixels, hard_value


def _refine_tile(net, x: Tensor, y: Tensor, dec_g: Tensor, lam: float, px_mask: Tensor, lat_mask: Tensor,
                 steps: int, lr: float, tick: Callable[[], None]) -> Tensor:
    param = y.clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)
    best_value, best = math.inf, y
    for k in range(steps + 1):
        loss, value = _objective(net, x, param, dec_g, lam, px_mask, lat_mask, relaxed=True)
        if value < best_value:
            best_value, best = value, param.detach().clone()
        if k == steps:
            break
        for g in opt.param_groups:  # cosine decay: large moves first, then settle
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * k / steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        param.grad.mul_(lat_mask)  # the border is context only
        opt.step()
        tick()
    return best


def refine_latent(m, rgb: np.ndarray, y: Tensor, quality: float, steps: int,
                  progress: Callable[[int, int], None] | None = None) -> Tensor:
    """A latent (before the quality's gain, like ``m.analysis``'s) that codes ``rgb`` better than ``y``.

    ``steps`` gradient steps per tile of :data:`REFINE_TILE`² latents; ``progress(done, total)`` is told
    the steps done.  Single-threaded results may differ from multi-threaded ones in the last bits of the
    latent (float reductions), which can change the file; any such file decodes the same everywhere.
    """
    prepare_refinement(m)
    net = m._net
    h, w, _ = rgb.shape
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].float().div_(255.0)
    x = torch.nn.functional.pad(x, (0, (-w) % 64, 0, (-h) % 64), mode="replicate")
    lh, lw = y.shape[2], y.shape[3]
    valid = torch.zeros(1, 1, x.shape[2], x.shape[3])
    valid[..., :h, :w] = 1.0
    tiles = [(i0, j0) for i0 in range(0, lh, REFINE_TILE) for j0 in range(0, lw, REFINE_TILE)]
    total, done = len(tiles) * steps, [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    frozen = [p for p in net.parameters() if p.requires_grad]
    for p in frozen:  # gradients for the latent only
        p.requires_grad_(False)
    try:
        # The dither is seeded, and the caller's random state left alone: the same call, the same file.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return _refine(net, x, valid, y, quality, steps, tiles, tick)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _refine(net, x: Tensor, valid: Tensor, y: Tensor, quality: float, steps: int, tiles, tick) -> Tensor:
    lam = quality_lambda(net.config.lambdas, quality)
    lh, lw = y.shape[2], y.shape[3]
    with torch.enable_grad():
        enc_g, dec_g = net.gains(torch.tensor([quality - 1.0]))
        enc_g, dec_g = enc_g.detach(), dec_g.detach()
        ys = (y * enc_g).detach().clone()
        for i0, j0 in tiles:
            i1, j1 = min(i0 + REFINE_TILE, lh), min(j0 + REFINE_TILE, lw)
            a0, b0 = max(i0 - REFINE_HALO, 0), max(j0 - REFINE_HALO, 0)
            a1, b1 = min(i1 + REFINE_HALO, lh), min(j1 + REFINE_HALO, lw)
            lat_mask = torch.zeros(1, 1, a1 - a0, b1 - b0)
            lat_mask[..., i0 - a0: i1 - a0, j0 - b0: j1 - b0] = 1.0
            px_mask = torch.nn.functional.interpolate(lat_mask, scale_factor=16) * valid[..., a0 * 16: a1 * 16,
                                                                                           b0 * 16: b1 * 16]
            if px_mask.sum() == 0:
                continue
            crop = ys[:, :, a0:a1, b0:b1].contiguous(memory_format=torch.channels_last)
            xc = x[:, :, a0 * 16: a1 * 16, b0 * 16: b1 * 16].contiguous(memory_format=torch.channels_last)
            best = _refine_tile(net, xc, crop, dec_g, lam, px_mask, lat_mask, steps, STEP_SIZE, tick)
            ys[:, :, i0:i1, j0:j1] = best[:, :, i0 - a0: i1 - a0, j0 - b0: j1 - b0]
    return ys / enc_g
