"""Entropy coding of a lattice latent under an exact integer hyperprior, shared by image and audio.

Both codecs code a latent ``y'`` of shape (M, h, w) (audio: h = 1) the same way::

    ẑ ◄─ z stream (per-channel tables)
    ẑ ──integer h_s──► mean μ' (1/16 grid), scale level ──► box code ◄─ y stream ──► u
    ŷ' = G·u + μ'

Everything on this path is integers or shipped tables, so streams parse identically on every machine.
A model class mixes in :class:`HyperLatentCoding`, hands its float network to ``_adopt`` (transforms, gains,
lattice; ``from_bytes`` adds the integer h_s and the tables) and supplies ``config.M`` and ``z_shape``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from torch import Tensor, nn

from .boxcode import BoxCoder, ChannelTables, CodingError, LatticeCodingSpec, ScaleTables
from .errors import LtcModelError
from .image_model import CONTEXT_CLAMP, CONTEXT_GRID, LOG2_SCALE_MAX, LOG2_SCALE_MIN
from .intnet import IntegerNetwork, quantize_network

__all__ = ["Streams", "HyperLatentCoding", "freeze_entropy_model", "model_metadata", "MEAN_GRID", "Z_CLAMP",
           "FORMAT_TAG", "write_model_file"]

FORMAT_TAG = "ltcodec-model"

MEAN_GRID = 16  # μ' is an integer number of 1/16 lattice units
LEVEL_MIN = int(LOG2_SCALE_MIN * 8)
LEVEL_MAX = int(LOG2_SCALE_MAX * 8) - 1
Z_CLAMP = 2047  # the integer h_s sees ẑ clamped to ±2047
MEAN_LIMIT = 1 << 24
Z_RADIUS = 2048


@dataclass
class Streams:
    z_words: np.ndarray
    y_words: np.ndarray  # with a checkerboard context: the anchors' blocks
    latent_shape: tuple[int, int]  # (h, w) of y
    y2_words: np.ndarray | None = None  # with a checkerboard context: the other blocks


def model_metadata(blob: bytes) -> dict:
    """The JSON metadata of a safetensors file, read from its header."""
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8 or n > 100_000_000:
        raise ValueError("bad safetensors header")
    return json.loads(blob[8:8 + n]).get("__metadata__", {})


class HyperLatentCoding:
    """Mixed into a codec model class that defines ``kind``, ``config_class`` and ``__init__(config, name, sha)``."""

    #: The exact integer network of a checkerboard context, for models that have one.
    ctx_int: IntegerNetwork | None = None
    #: Latent rows the context network runs on at a time (plus its reach above and below): memory
    #: stays bounded on large images, and the result is exactly the whole latent's.
    context_band = 16
    #: Lattice blocks searched at a time for their closest points: the search's float64 temporaries
    #: stay a few tens of MB, where a 24-megapixel latent of 320 channels (3.75 M blocks of E8) took
    #: 1.9 GB beyond its result.  Each block's point is its own, so the result is the same.
    closest_chunk = 1 << 16
    #: Exact parts read from the model file by :meth:`from_bytes` (the float network has none of them).
    h_s_int: IntegerNetwork | None = None
    z_tables: ChannelTables | None = None
    y_coder: BoxCoder | None = None

    def _adopt(self, net: nn.Module, config, name: str, sha256: str) -> None:
        """Take a float network's transforms, gains and lattice as this model's own (called from
        ``__init__``); the exact entropy-coding parts come from the model file."""
        self.config, self.name, self.sha256 = config, name, sha256
        self.g_a, self.g_s, self.h_a = net.g_a, net.g_s, net.h_a
        self.enc_gain, self.dec_gain = net.enc_gain, net.dec_gain
        self.lattice = net.lattice
        # Kept for gains(); not registered as a submodule, so its parameters (the ones above) are not
        # listed twice in the state.
        object.__setattr__(self, "_net", net)
        self.eval()

    def _gains(self, quality: float) -> tuple[Tensor, Tensor]:
        """The encoder and decoder gains of a (fractional) quality 1…qualities."""
        return self._net.gains(torch.tensor([quality - 1.0]))

    @classmethod
    def from_bytes(cls, blob: bytes, name: str | None = None):
        """Load a shipped model file: float transforms, the self-tested integer h_s and the tables."""
        sha = hashlib.sha256(blob).hexdigest()
        try:
            arrays = st_load(blob)
            meta = model_metadata(blob)
        except Exception as e:  # safetensors raises several types for damaged files
            raise LtcModelError(f"model file is damaged: {e}") from None
        if meta.get("format") != FORMAT_TAG or meta.get("kind") != cls.kind:
            raise LtcModelError(f"not an ltcodec {cls.kind} model")
        config = cls.config_class.from_dict(json.loads(meta["config"]))
        model = cls(config, name or meta.get("name", "unnamed"), sha)
        state = {k[len("float."):]: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()
                 if k.startswith("float.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise LtcModelError(f"model file does not match its architecture (missing {missing[:3]})")
        # The float hyperprior kept for training (and for encoder-side refinement); decoding never reads it.
        model.training_state = {k[len("train."):]: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()
                                if k.startswith("train.")}
        model.h_s_int = IntegerNetwork.from_arrays(arrays, "h_s.", json.loads(meta["h_s"]), Z_CLAMP)
        if model.h_s_int.fingerprint(config.N) != meta["h_s_fingerprint"]:
            raise LtcModelError("integer hyper-synthesis failed its self-test")
        if getattr(config, "context", "none") != "none":
            check_context_lattice(model.lattice)
            model.ctx_int = IntegerNetwork.from_arrays(arrays, "ctx.", json.loads(meta["ctx"]), CONTEXT_CLAMP)
            if model.ctx_int.fingerprint(config.M) != meta["ctx_fingerprint"]:
                raise LtcModelError("integer context network failed its self-test")
            if any(l.kind != "conv" or l.stride != 1 or l.weight.shape[2] % 2 == 0 for l in model.ctx_int.layers):
                raise LtcModelError("a context network is made of odd-sized stride-1 convolutions")
        model.z_tables = ChannelTables.from_arrays(arrays, "z_tables.")
        model.y_coder = BoxCoder(LatticeCodingSpec.from_lattice(model.lattice), ScaleTables.from_arrays(arrays, "y_tables."))
        model.to(memory_format=torch.channels_last)
        return model

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None):
        path = Path(path)
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise LtcModelError(f"cannot read model {path}: {e.strerror}") from None
        return cls.from_bytes(blob, name or path.stem)

    def z_shape(self, latent_shape: tuple[int, int]) -> tuple[int, int]:
        raise NotImplementedError

    def hyper(self, z_hat: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Integer h_s: (mean on the 1/16 grid, scale level) per latent element, shape (M, h, w)."""
        out = self.h_s_int(torch.from_numpy(z_hat)[None])[0]
        h, w = shape
        m = self.config.M
        return out[:m, :h, :w].numpy(), np.maximum(out[m:, :h, :w].numpy(), self.config.scale_floor_level)

    def _blocks(self, a: np.ndarray) -> np.ndarray:
        """(M, h, w) → (h·w·M/n, n): the lattice blocks in coding order."""
        m, h, w = a.shape
        n = self.lattice.dim
        return a.transpose(1, 2, 0).reshape(h * w * (m // n), n)

    def _unblocks(self, b: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        return b.reshape(h, w, self.config.M).transpose(2, 0, 1)

    @staticmethod
    def _anchors(shape: tuple[int, int]) -> np.ndarray:
        """(h, w): whether each latent position is a checkerboard anchor (row + column even)."""
        return np.indices(shape).sum(0) % 2 == 0

    def _anchor_blocks(self, shape: tuple[int, int]) -> np.ndarray:
        """Per block in block order: whether it lies at a checkerboard anchor."""
        return np.repeat(self._anchors(shape).reshape(-1), self.config.M // self.lattice.dim)

    def _context_network(self, v: np.ndarray) -> np.ndarray:
        """The integer context network on (M, h, w), a band of :attr:`context_band` rows at a time."""
        reach = sum((l.weight.shape[2] - 1) // 2 for l in self.ctx_int.layers)  # stride-1 layers
        h = v.shape[1]
        out = None
        for r0 in range(0, h, self.context_band):
            r1 = min(r0 + self.context_band, h)
            a0, a1 = max(r0 - reach, 0), min(r1 + reach, h)
            band = self.ctx_int(torch.from_numpy(np.ascontiguousarray(v[:, a0:a1]))[None])[0].numpy()
            if out is None:  # filled band by band: no list of bands beside their concatenation
                out = np.empty((band.shape[0], h, v.shape[2]), band.dtype)
            out[:, r0:r1] = band[:, r0 - a0: r1 - a0]
        return out

    def context_parameters(self, u: np.ndarray, mean_int: np.ndarray, level_idx: np.ndarray,
                           shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Mean (1/16 grid) and scale level of every latent element once the anchors are known: the
        integer context network sees the anchors' ŷ' (from their coordinates ``u``; the other blocks of
        ``u`` are not read) and moves the parameters of the other positions."""
        m = self.config.M
        g = self.lattice.raw_generator_int.numpy()
        raw = self._unblocks(u.astype(np.int64) @ g.T, shape)  # raw lattice points, exact
        anchors = self._anchors(shape)[None]
        # round(CONTEXT_GRID · ŷ'), half up: ŷ' = raw / den + mean / 16 (in place: these arrays are
        # the size of the latent).
        v = raw * (CONTEXT_GRID * MEAN_GRID // self.lattice.raw_denominator)
        del raw
        v += mean_int * CONTEXT_GRID
        v += MEAN_GRID // 2
        v >>= 4
        v *= anchors
        out = self._context_network(v)
        del v
        anchors = np.broadcast_to(anchors, mean_int.shape)
        mean2, level2 = out[:m], out[m:]  # the anchors keep theirs; the others move
        mean2 += mean_int
        np.copyto(mean2, mean_int, where=anchors)
        level2 += level_idx
        np.clip(level2, LEVEL_MIN, LEVEL_MAX, out=level2)
        np.maximum(level2, self.config.scale_floor_level, out=level2)
        np.copyto(level2, level_idx, where=anchors)
        return mean2, level2

    @torch.no_grad()
    def _symbols(self, y: Tensor, quality: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        """What the coder codes for a latent y (1, M, h, w) taken before the quality's encoder gain:
        ẑ (N, h_z·w_z), lattice coordinates u (blocks, n), their scale levels, and (h, w)."""
        z_hat, u, level_idx, _, shape = self._quantize(y, quality)
        return z_hat.reshape(z_hat.shape[0], -1), u, self._blocks(level_idx), shape

    @torch.no_grad()
    def quantized_latent(self, y: Tensor, quality: float) -> Tensor:
        """The ŷ that :meth:`decompress_latent` returns for :meth:`compress_latent`'s streams, without
        coding them (an encoder that needs the decoded signal, e.g. for a detail layer)."""
        _, u, _, mean_int, shape = self._quantize(y, quality)
        return self._latent(u, mean_int, shape, quality)

    def _latent(self, u: np.ndarray, mean_int: np.ndarray, shape: tuple[int, int], quality: float) -> Tensor:
        """ŷ (1, M, h, w) of lattice coordinates and integer means, after the quality's decoder gain."""
        points = self.lattice.points(torch.from_numpy(u), torch.float64).numpy()
        y_hat = self._unblocks(points, shape) + mean_int / MEAN_GRID
        _, dec_g = self._gains(quality)
        return torch.from_numpy(y_hat.astype(np.float32))[None] * dec_g

    def _quantize(self, y: Tensor, quality: float):
        """ẑ (N, h_z, w_z), coordinates u, scale levels and means (M, h, w), and (h, w) of a latent."""
        enc_g, _ = self._gains(quality)
        y = y * enc_g
        z_hat = torch.round(self.h_a(y))[0].to(torch.int64).numpy()
        lh, lw = y.shape[2], y.shape[3]
        mean_int, level_idx = self.hyper(np.clip(z_hat, -Z_CLAMP, Z_CLAMP), (lh, lw))
        y_lattice = y[0].double().numpy()
        u = self._coordinates(y_lattice - mean_int / MEAN_GRID)
        if self.ctx_int is not None:
            # The anchors' points do not change: the context moves only the other positions' means.
            mean_int, level_idx = self.context_parameters(u, mean_int, level_idx, (lh, lw))
            u = self._coordinates(y_lattice - mean_int / MEAN_GRID)
        return z_hat, u, level_idx, mean_int, (lh, lw)

    def _coordinates(self, residual: np.ndarray) -> np.ndarray:
        """Coordinates u of the closest lattice points to the blocks of ``residual`` (M, h, w)."""
        blocks = torch.from_numpy(self._blocks(residual))
        u = np.empty(blocks.shape, np.int64)
        for i in range(0, len(blocks), self.closest_chunk):
            part = blocks[i:i + self.closest_chunk]
            u[i:i + len(part)] = self.lattice.coordinates(self.lattice.closest(part)).numpy()
        return u

    def compress_latent(self, y: Tensor, quality: float) -> Streams:
        """Code a latent y (1, M, h, w), taken before the quality's encoder gain."""
        z, u, levels, shape = self._symbols(y, quality)
        words = [self.y_coder.encode(*part) for part in self._stream_parts(u, levels, shape)]
        return Streams(self.z_tables.encode(z), words[0], shape, words[1] if len(words) > 1 else None)

    def _stream_parts(self, u: np.ndarray, levels: np.ndarray, shape: tuple[int, int]):
        """(coordinates, levels) of each y stream: all blocks, or with a context the anchors' then the rest."""
        if self.ctx_int is None:
            return [(u, levels)]
        a = self._anchor_blocks(shape)
        return [(u[a], levels[a]), (u[~a], levels[~a])]

    def latent_bits(self, y: Tensor, quality: float) -> float:
        """The information content of :meth:`compress_latent`'s streams, in bits (each stream is
        that rounded up to whole 32-bit words): what a rate search needs, at about a third of the cost."""
        return sum(self.stream_bits(y, quality))

    def stream_bits(self, y: Tensor, quality: float) -> tuple[float, float]:
        """The information content of the z and the y streams of :meth:`compress_latent`, in bits."""
        z, u, levels, shape = self._symbols(y, quality)
        return (self.z_tables.ideal_bits(z),
                sum(self.y_coder.ideal_bits(*part) for part in self._stream_parts(u, levels, shape)))

    def decode_symbols(self, streams: Streams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The exact integer part of decoding: ẑ, coordinates u (blocks, n), means (M, h, w)."""
        lh, lw = streams.latent_shape
        zh, zw = self.z_shape((lh, lw))
        z_hat = self.z_tables.decode(streams.z_words, zh * zw).reshape(-1, zh, zw)
        mean_int, level_idx = self.hyper(np.clip(z_hat, -Z_CLAMP, Z_CLAMP), (lh, lw))
        if self.ctx_int is None:
            return z_hat, self.y_coder.decode(streams.y_words, self._blocks(level_idx)), mean_int
        if streams.y2_words is None:
            raise CodingError("the model codes the latent in two streams; the second is missing")
        a = self._anchor_blocks((lh, lw))
        u = np.zeros((a.size, self.lattice.dim), np.int64)
        u[a] = self.y_coder.decode(streams.y_words, self._blocks(level_idx)[a])
        mean_int, level_idx = self.context_parameters(u, mean_int, level_idx, (lh, lw))
        u[~a] = self.y_coder.decode(streams.y2_words, self._blocks(level_idx)[~a])
        return z_hat, u, mean_int

    @torch.no_grad()
    def decompress_latent(self, streams: Streams, quality: float) -> Tensor:
        """ŷ (1, M, h, w) after the quality's decoder gain, ready for the synthesis transform."""
        _, u, mean_int = self.decode_symbols(streams)
        return self._latent(u, mean_int, streams.latent_shape, quality)


def check_context_lattice(lattice) -> None:
    """A context network takes the anchors' ŷ' exactly: on lattices whose unit-volume points are the
    integer (raw) ones over a denominator dividing 64 (Z^n, E8, …), never through irrational scales."""
    den = lattice.raw_denominator
    if lattice.raw_scale != 1.0 or den <= 0 or (CONTEXT_GRID * MEAN_GRID) % den:
        raise LtcModelError(f"a context needs a lattice with exact points; {lattice.name} has none")


def write_model_file(path: str | Path, kind: str, name: str, config: dict, state: dict[str, Tensor],
                     h_s_int: IntegerNetwork, entropy_arrays: dict[str, np.ndarray], specs: list[dict],
                     half: bool = True, extra_meta: dict | None = None, training_state: bool = True) -> str:
    """Write a shipped model file (safetensors, no pickle); returns its SHA-256.

    ``state`` holds the float transforms and gains (``float.*``; conv kernels in fp16 when ``half``).
    The codec uses the frozen integer forms of h_s and the z density (``entropy_arrays``); their float
    weights are kept under ``train.*`` only so that training can go on from a shipped file without
    relearning the hyperprior (thousands of steps), unless ``training_state`` is False.  Decoding never
    reads them.
    """
    arrays: dict[str, np.ndarray] = {}
    for k, v in state.items():
        hyper = k.startswith(("h_s.", "z_density.", "ctx."))
        if hyper and not training_state:
            continue
        a = v.detach().cpu().numpy()
        big = a.ndim == 4 and k.endswith("weight")
        arrays[("train." if hyper else "float.") + k] = a.astype(np.float16 if (half and big) else np.float32)
    arrays.update(entropy_arrays)
    meta = {
        "format": FORMAT_TAG, "kind": kind, "name": name, "config": json.dumps(config),
        "h_s": json.dumps(specs), "h_s_fingerprint": h_s_int.fingerprint(config["N"]),
        **{k: json.dumps(v) if not isinstance(v, str) else v for k, v in (extra_meta or {}).items()},
    }
    blob = st_save(arrays, metadata=meta)
    Path(path).write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


@torch.no_grad()
def freeze_context(ctx: nn.Sequential, lattice, M: int, calibration: Tensor) -> tuple[dict[str, np.ndarray], dict]:
    """Quantize a context network to an exact integer network: its arrays (``ctx.*``) and the metadata
    that names its layers and fingerprint.  Its outputs are the changes of the mean (1/16 grid) and of
    the scale level (1/8 of log2 σ')."""
    check_context_lattice(lattice)
    scales = np.concatenate([np.full(M, MEAN_GRID, np.float64), np.full(M, 8.0)])
    reach = np.concatenate([np.full(M, MEAN_LIMIT, np.int64), np.full(M, LEVEL_MAX - LEVEL_MIN, np.int64)])
    ctx_int = quantize_network(ctx, calibration, scales, np.zeros(2 * M, np.int64), -reach, reach)
    ctx_int.input_clamp = CONTEXT_CLAMP
    arrays, specs = ctx_int.to_arrays("ctx.")
    return arrays, {"ctx": specs, "ctx_fingerprint": ctx_int.fingerprint(M)}


@torch.no_grad()
def freeze_entropy_model(h_s: nn.Sequential, z_density, lattice, M: int,
                         z_calibration: Tensor) -> tuple[IntegerNetwork, dict[str, np.ndarray], list[dict]]:
    """Quantize h_s to an integer network and freeze the z density and the box-code tables.

    Returns the integer network and the arrays (``h_s.*``, ``z_tables.*``, ``y_tables.*``) and the
    h_s layer specs to store in a model file.
    """
    out_scale = np.concatenate([np.full(M, MEAN_GRID, np.float64), np.full(M, 8.0)])
    out_post = np.zeros(2 * M, np.int64)
    lo = np.concatenate([np.full(M, -MEAN_LIMIT, np.int64), np.full(M, LEVEL_MIN, np.int64)])
    hi = np.concatenate([np.full(M, MEAN_LIMIT, np.int64), np.full(M, LEVEL_MAX, np.int64)])
    h_s_int = quantize_network(h_s, z_calibration, out_scale, out_post, lo, hi)
    z_tables = ChannelTables.from_pmfs(z_density.pmf(Z_RADIUS), -Z_RADIUS)
    spec = LatticeCodingSpec.from_lattice(lattice)
    lmin = LEVEL_MIN + int(spec.level_offset.min())
    lmax = LEVEL_MAX + int(spec.level_offset.max())
    y_tables = ScaleTables.build(lmin, lmax, spec.fractions())
    arrays, specs = h_s_int.to_arrays("h_s.")
    arrays.update(z_tables.to_arrays("z_tables."))
    arrays.update(y_tables.to_arrays("y_tables."))
    return h_s_int, arrays, specs
