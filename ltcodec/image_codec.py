"""The shipped image codec: float transforms, an exact integer hyper-synthesis, and frozen tables.

A model file (safetensors, never pickle) holds g_a, h_a, g_s and the gains as float tensors, h_s as
integers (:mod:`ltcodec.intnet`), the hyper-latent's per-channel tables and the latent's box-code
tables (:mod:`ltcodec.boxcode`), plus JSON metadata.  Decoding the streams touches only integers:

    ẑ ◄─ z stream (channel tables)
    ẑ ──integer h_s──► mean μ' (1/16 grid), scale level ──► box code ◄─ y stream ──► u
    ŷ' = G·u + μ' ──× decoder gain──► g_s (float) ──► pixels

so a stream parses identically on every machine; only the float synthesis moves pixel values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .boxcode import ScaleTables
from .image_model import CONTEXT_CLAMP, CONTEXT_GRID, ImageModelConfig, LatticeHyperprior, anchor_mask
from .latent_coding import (MEAN_GRID, Z_CLAMP, HyperLatentCoding, Streams, freeze_context, freeze_entropy_model,
                            write_model_file)
from .workers import in_order, single_threaded_workers

__all__ = ["ImageCodecModel", "export_image_model", "Streams", "MEAN_GRID", "Z_CLAMP"]

#: Tiles for the float transforms, in latents, with a halo (DESIGN-NOTES §4): bounded memory.
TILE_LATENTS = 64
HALO_LATENTS = 2
#: Extra halo of g_a per residual block at each of its two stages: the block's two 3×3 convolutions
#: reach 8 pixels further at 1/4 resolution and 16 at 1/8, 24 in all, under two latents.
HALO_PER_ANALYSIS_BLOCK = 2
#: A latent with a side of twice this is cut in two even when it fits one tile (two workers).
MIN_SPLIT_LATENTS = 8


def _spans(n: int, parts: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into ``parts`` nearly equal spans."""
    cuts = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def tile_layout(lh: int, lw: int) -> list[tuple[int, int, int, int]]:
    """Tiles ``(i0, i1, j0, j1)`` of an lh × lw latent, a function of its size alone (so the pixels
    are too): at most :data:`TILE_LATENTS` a side, and at least two when the longer side has
    2 · :data:`MIN_SPLIT_LATENTS`, so that two workers share even a photo of one tile's size."""
    rows, cols = -(-lh // TILE_LATENTS), -(-lw // TILE_LATENTS)
    if rows * cols == 1 and max(lh, lw) >= 2 * MIN_SPLIT_LATENTS:
        rows, cols = (2, 1) if lh > lw else (1, 2)
    return [(i0, i1, j0, j1) for i0, i1 in _spans(lh, rows) for j0, j1 in _spans(lw, cols)]


def _tiled(fn, x: Tensor, factor: float, progress=None, halo: int = HALO_LATENTS) -> Tensor:
    """Apply a translation-equivariant ``fn`` tile by tile (:func:`tile_layout`) with a halo of
    ``halo`` latents; ``factor`` = output/input size.

    Tiles are cropped after the transform, so the halo absorbs the border effects of each cut.  Each
    tile is computed on one thread, several at once (:mod:`ltcodec.workers`): the output is the same
    with any number of threads.  ``progress(done, total)`` is told the tiles done.
    """
    _, _, h, w = x.shape
    unit = int(round(1 / factor)) if factor < 1 else 1  # input pixels per latent (for g_a)
    up = int(round(factor)) if factor >= 1 else 1  # output pixels per latent (for g_s)
    lh, lw = h // unit, w // unit
    tiles = tile_layout(lh, lw)

    def run(tile: tuple[int, int, int, int]) -> Tensor:
        i0, i1, j0, j1 = tile
        a0, b0 = max(i0 - halo, 0), max(j0 - halo, 0)
        a1, b1 = min(i1 + halo, lh), min(j1 + halo, lw)
        with torch.no_grad():
            out = fn(x[:, :, a0 * unit: a1 * unit, b0 * unit: b1 * unit].contiguous(memory_format=torch.channels_last))
        return out[:, :, (i0 - a0) * up: (i1 - a0) * up, (j0 - b0) * up: (j1 - b0) * up]

    with single_threaded_workers() as (pool, workers):
        outs = []
        for out in in_order(pool, run, tiles, 2 * workers):  # two tiles in flight per worker at most
            outs.append(out)
            if progress:
                progress(len(outs), len(tiles))
    cols = sum(1 for t in tiles if t[0] == 0)
    return torch.cat([torch.cat(outs[r:r + cols], dim=3) for r in range(0, len(outs), cols)], dim=2)


class ImageCodecModel(HyperLatentCoding, nn.Module):
    """A loaded image model, ready to compress and decompress RGB arrays."""

    kind = "image"
    config_class = ImageModelConfig

    def __init__(self, config: ImageModelConfig, name: str, sha256: str):
        super().__init__()
        self._adopt(LatticeHyperprior(config), config, name, sha256)

    @property
    def qualities(self) -> int:
        return len(self.config.lambdas)

    # -- the pipeline --------------------------------------------------------------------------------
    def z_shape(self, latent_shape: tuple[int, int]) -> tuple[int, int]:
        return latent_shape[0] // 4, latent_shape[1] // 4

    @torch.no_grad()
    def analysis(self, rgb: np.ndarray, progress=None) -> Tensor:
        """Latent y (before gains) of an (H, W, 3) uint8 image, padded internally to a multiple of 64;
        ``progress(done, total)`` is told the tiles done."""
        h, w, _ = rgb.shape
        x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].float().div_(255.0)
        x = nn.functional.pad(x, (0, (-w) % 64, 0, (-h) % 64), mode="replicate")
        x = x.contiguous(memory_format=torch.channels_last)
        return _tiled(self.g_a, x, 1 / 16, progress,
                      HALO_LATENTS + HALO_PER_ANALYSIS_BLOCK * self.config.analysis_blocks)

    @torch.no_grad()
    def synthesis(self, y_hat: Tensor, height: int, width: int, progress=None) -> np.ndarray:
        y_hat = y_hat.contiguous(memory_format=torch.channels_last)
        x = _tiled(self.g_s, y_hat, 16, progress)
        x = x[0, :, :height, :width].clamp_(0, 1).mul_(255).round_()
        return x.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


# ----------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------

def _calibration_latents(net: LatticeHyperprior, images: list[np.ndarray], crop: int = 256):
    """y' (after each quality's encoder gain) of a crop of each calibration image, at every quality."""
    for img in images:
        x = torch.from_numpy(np.array(img[:crop, :crop], dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
        x = nn.functional.pad(x, (0, (-x.shape[3]) % 64, 0, (-x.shape[2]) % 64), mode="replicate")
        y = net.g_a(x)
        for q in range(net.qualities):
            enc_g, _ = net.gains(torch.tensor([float(q)]))
            yield y * enc_g


@torch.no_grad()
def _calibration_z(net: LatticeHyperprior, images: list[np.ndarray]) -> Tensor:
    return torch.cat([torch.round(net.h_a(yq)).clamp(-Z_CLAMP, Z_CLAMP) for yq in _calibration_latents(net, images)])


@torch.no_grad()
def _calibration_context(net: LatticeHyperprior, images: list[np.ndarray]) -> Tensor:
    """The context network's integer inputs (anchors' ŷ' on its grid) on the calibration images at
    every quality."""
    vs = []
    for yq in _calibration_latents(net, images):
        hard, mean, _ = net.quantized_latent(yq, torch.round(net.h_a(yq)))  # anchors: as the context sees them
        anchors = anchor_mask(yq.shape[2], yq.shape[3])
        v = (net.from_blocks(hard) + mean) * anchors * CONTEXT_GRID
        vs.append(torch.round(v).clamp(-CONTEXT_CLAMP, CONTEXT_CLAMP))
    return torch.cat(vs)


@torch.no_grad()
def export_image_model(net: LatticeHyperprior, calibration_images: list[np.ndarray], path: str | Path,
                       name: str, half: bool = True, extra_meta: dict | None = None,
                       table_images: list[np.ndarray] | None = None) -> str:
    """Freeze a trained model into a shipped model file; returns the file's SHA-256.

    Snaps a learned lattice's basis to its grid (in place), quantizes h_s to an integer network on hyper-latents of the calibration images at every quality,
    freezes the hyper-latent density into per-channel tables and builds the box-code tables: Gaussian,
    or with ``table_images`` refitted to the symbols the model codes for them (:func:`fit_latent_tables`).
    """
    net = net.eval()
    if hasattr(net.lattice, "snap"):
        net.lattice.snap()  # a learned basis on its dyadic grid: what the file stores is what was measured
    z_cal = _calibration_z(net, calibration_images)
    h_s_int, entropy_arrays, specs = freeze_entropy_model(net.h_s, net.z_density, net.lattice, net.config.M, z_cal)
    if net.ctx is not None:
        ctx_arrays, ctx_meta = freeze_context(net.ctx, net.lattice, net.config.M,
                                              _calibration_context(net, calibration_images))
        entropy_arrays.update(ctx_arrays)
        extra_meta = {**(extra_meta or {}), **ctx_meta}

    if table_images:
        # The Gaussian tables' model codes the images whose symbols the refitted tables follow; it is
        # written beside the target and removed, so a failed fit leaves no other model at ``path``.
        draft = Path(path).with_name(Path(path).name + ".draft")
        try:
            write_model_file(draft, "image", name, net.config.to_dict(), net.state_dict(), h_s_int,
                             entropy_arrays, specs, half, extra_meta)
            tables = fit_latent_tables(ImageCodecModel.from_file(draft, name), table_images)
        finally:
            draft.unlink(missing_ok=True)
        entropy_arrays.update(tables.to_arrays("y_tables."))
        extra_meta = {**(extra_meta or {}), "y_tables_fit": {"images": len(table_images), "prior": TABLE_PRIOR}}
    return write_model_file(path, "image", name, net.config.to_dict(), net.state_dict(), h_s_int, entropy_arrays,
                            specs, half, extra_meta)


#: Pseudo-counts of the Gaussian table that each refitted box-code table keeps (:func:`fit_latent_tables`).
TABLE_PRIOR = 50.0


@torch.no_grad()
def fit_latent_tables(model: ImageCodecModel, images: list[np.ndarray], prior: float = TABLE_PRIOR) -> ScaleTables:
    """The model's box-code tables refitted (:meth:`ScaleTables.refitted`) to the symbols its coder
    writes for some (training) images at every integer quality, both streams.  One set of tables
    serves every quality, so their symbols are pooled."""
    coder = model.y_coder
    counts = np.zeros(coder.tables.freqs.size, np.float64)
    for img in images:
        y = model.analysis(img)
        for q in range(1, model.qualities + 1):
            _, u, levels, shape = model._symbols(y, float(q))
            for coords, lv in model._stream_parts(u, levels, shape):
                coder.count_symbols(coords, lv, counts)
    return coder.tables.refitted(counts, prior)
