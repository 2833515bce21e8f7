"""The image model: GDN transforms, a mean–scale hyperprior and lattice quantization of the latent.

::

    x ──g_a──► y ──×2^θ_q──► y' ──(y'−μ') on Λ in blocks of n channels──► ŷ' ──×2^φ_q──► ŷ ──g_s──► x̂
                              │                       ▲ μ', σ'
                              └──h_a──► z ──round──► ẑ ──h_s──┘
                                          factorized prior

One set of transforms serves every quality: per-quality log2-gain vectors θ_q (encoder) and φ_q
(decoder) scale the latent before quantization (Cui et al., "Asymmetric gained deep image compression
with continuous rate adaptation", CVPR 2021); fractional qualities interpolate the gains.  The
hyper-synthesis h_s sees only ẑ and predicts μ', σ' directly in lattice units; it uses integer-friendly
layers (transposed convolutions and leaky ReLU with slope 1/8) so that it can be exported as an exact
integer network (DESIGN-NOTES §3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .entropy import LIKELIHOOD_FLOOR, FactorizedDensity, box_likelihood
from .lattice import Lattice, get_lattice
from .layers import GDN, ResidualBlock, conv, deconv, lower_bound

__all__ = ["ImageModelConfig", "AnalysisTransform", "LatticeHyperprior", "DEFAULT_LAMBDAS", "CONTEXTS", "anchor_mask"]

#: Rate–distortion trade-offs of qualities 1–8 (loss = λ·255²·MSE + bpp): geometric from 0.00015 to
#: 0.18, wider than CompressAI's 0.0018–0.18 so that quality 1 reaches ~0.1 bpp on Kodak while the
#: transforms are still far from converged (at 0.0018 a 25 k-step model spends 0.36 bpp).
DEFAULT_LAMBDAS = (0.00015, 0.00041, 0.0011, 0.0031, 0.0086, 0.024, 0.065, 0.18)

#: Range of log2 σ' (lattice units) that the coding tables cover; the model's scales are clamped to it.
LOG2_SCALE_MIN = -4.0
LOG2_SCALE_MAX = 8.0


#: Entropy models of the latent (``ImageModelConfig.context``).
CONTEXTS = ("none", "checkerboard")
#: The context network sees the decoded anchors ŷ' on a grid of 1/4 lattice unit, clamped to ±2047
#: grid steps: integers, as the exact integer network that the codec runs takes them.
CONTEXT_GRID = 4
CONTEXT_CLAMP = 2047
#: Groups of the context network's 5×5 convolution: each sees 1/8 of the channels (a full one did no
#: better in a first test, at 8 times the cost).
CONTEXT_GROUPS = 8


def anchor_mask(h: int, w: int, dtype=torch.float32) -> Tensor:
    """(1, 1, h, w): 1 at the checkerboard's anchor positions (i + j even), coded first."""
    i = torch.arange(h)[:, None]
    j = torch.arange(w)[None]
    return ((i + j) % 2 == 0).to(dtype)[None, None]


def context_network(M: int) -> nn.Sequential:
    """Anchors' ŷ' (M channels, zero elsewhere) → changes of μ' and log2 σ' (2M channels).  The last
    layer starts at zero, so adding the context to a trained hyperprior starts from what it computed."""
    net = nn.Sequential(nn.Conv2d(M, 2 * M, 5, padding=2, groups=CONTEXT_GROUPS), nn.LeakyReLU(0.125),
                        nn.Conv2d(2 * M, 2 * M, 1))
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    return net


#: How the training rate treats the latent (:func:`rate_points`).
RATE_RELAXATIONS = ("noise", "hard")


def rate_points(lattice: Lattice, residual: Tensor, hard: Tensor, rate: str) -> Tensor:
    """The points whose box likelihood is the training rate: the hard (straight-through) lattice points
    ``hard`` for ``rate="hard"`` (the coded bits), or ``residual`` plus Voronoi-uniform noise for
    ``rate="noise"`` (the dithered relaxation)."""
    if rate == "hard":
        return hard
    if rate == "noise":
        return lattice.quantize(residual, "noise")
    raise ValueError(f"unknown rate relaxation {rate!r}")


def bounded_log2_scale(log2_scale: Tensor, floor_level: int | None = None) -> Tensor:
    """log2 σ' within the coder's range, and at least a model's scale floor level ℓ (σ' ≥ 2^(ℓ/8)) if
    given (``lower_bound`` at both ends: below a bound the gradient still flows where it pushes back in)."""
    least = LOG2_SCALE_MIN if floor_level is None else max(LOG2_SCALE_MIN, floor_level / 8)
    return -lower_bound(-lower_bound(log2_scale, least), -LOG2_SCALE_MAX)


@dataclass
class ImageModelConfig:
    N: int = 96
    M: int = 128
    lattice: str = "e8"
    lambdas: tuple[float, ...] = field(default_factory=lambda: DEFAULT_LAMBDAS)
    #: Smallest σ' the entropy model uses, as a level ℓ of σ' = 2^(ℓ/8) (−32 = the tables' 2^-4).  The
    #: hyperprior learns scales too small for the rare nonzero latents of the lowest qualities; a floor
    #: fitted at export on training images (``fit_scale_floor``) prices them better at no cost in quality.
    scale_floor_level: int = int(LOG2_SCALE_MIN * 8)
    #: Smallest likelihood of a latent coordinate in the float rate (training, refinement, estimates).
    #: The coder's tables give every symbol at least about 2^-16, so a coordinate far out in its
    #: predicted Gaussian costs it some 16–20 bits; the default 10⁻⁹ charges 30.
    likelihood_floor: float = LIKELIHOOD_FLOOR
    #: "checkerboard": half of the latent positions (the anchors, i + j even) are coded first under the
    #: hyperprior alone; a small network then sees the decoded anchors and refines the mean and scale
    #: of the other half (He et al., "Checkerboard context model for efficient learned image
    #: compression", CVPR 2021).  "none": the hyperprior alone.
    context: str = "none"
    #: Channels of the transforms g_a and g_s; None: N, the hyper-latent's (as in models before the two
    #: could differ).  The transforms set the quality a model can reach at high rates, the hyperprior
    #: only what its side information costs, so they are widened alone.
    transform_N: int | None = None
    #: Residual blocks that g_a runs after its second and after its third GDN (at 1/4 and 1/8 of the
    #: image's size), this many at each.  The encoder alone runs g_a, so they cost encode time only: the
    #: decoder, and what a file needs to decode, stay as they are.  Added to a trained model they start
    #: as the identity (:class:`~ltcodec.layers.ResidualBlock`).
    analysis_blocks: int = 0

    @property
    def transform_channels(self) -> int:
        """Channels of g_a and g_s (:attr:`transform_N`, else N)."""
        return self.transform_N or self.N

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambdas"] = list(self.lambdas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ImageModelConfig":
        d = dict(d)
        d["lambdas"] = tuple(d.get("lambdas", DEFAULT_LAMBDAS))
        return cls(**d)


class AnalysisTransform(nn.Sequential):
    """g_a: four strided 5×5 convolutions with GDN between them, and ``blocks`` residual blocks after the
    second and after the third GDN.

    The seven layers of the plain transform keep their places (``g_a.0`` … ``g_a.6``) and the blocks
    follow them (``g_a.7`` …), so a model file written before the blocks existed loads unchanged and a
    deeper model takes a shallower one's weights as they are.
    """

    def __init__(self, channels: int, latent: int, blocks: int = 0):
        T = channels
        super().__init__(conv(3, T), GDN(T), conv(T, T), GDN(T), conv(T, T), GDN(T), conv(T, latent),
                         *(ResidualBlock(T) for _ in range(2 * blocks)))
        self.blocks = blocks

    def forward(self, x: Tensor) -> Tensor:
        extra = list(self)[7:]
        for i, layer in enumerate(list(self)[:7]):
            x = layer(x)
            if i == 3:
                for block in extra[:self.blocks]:
                    x = block(x)
            elif i == 5:
                for block in extra[self.blocks:]:
                    x = block(x)
        return x


class LatticeHyperprior(nn.Module):
    def __init__(self, config: ImageModelConfig | None = None):
        super().__init__()
        self.config = config = config or ImageModelConfig()
        N, M = config.N, config.M
        self.lattice: Lattice = get_lattice(config.lattice)
        if M % self.lattice.dim:
            raise ValueError(f"M={M} is not a multiple of the lattice dimension {self.lattice.dim}")
        T = config.transform_channels
        self.g_a = AnalysisTransform(T, M, config.analysis_blocks)
        self.g_s = nn.Sequential(
            deconv(M, T), GDN(T, inverse=True), deconv(T, T), GDN(T, inverse=True),
            deconv(T, T), GDN(T, inverse=True), deconv(T, 3),
        )
        self.h_a = nn.Sequential(
            conv(M, N, 3, 1), nn.LeakyReLU(0.125), conv(N, N), nn.LeakyReLU(0.125), conv(N, N),
        )
        H = N * 3 // 2
        self.h_s = nn.Sequential(
            deconv(N, N), nn.LeakyReLU(0.125), deconv(N, H), nn.LeakyReLU(0.125), conv(H, 2 * M, 3, 1),
        )
        self.z_density = FactorizedDensity(N)
        if config.context not in CONTEXTS:
            raise ValueError(f"unknown context {config.context!r} (known: {', '.join(CONTEXTS)})")
        self.ctx = context_network(M) if config.context == "checkerboard" else None
        # A quantizer step ∝ λ^-1/2 at high rate: log2-gains start 0.5·log2 λ apart.
        lam = torch.tensor(config.lambdas, dtype=torch.float64)
        init = (0.5 * torch.log2(lam / lam[0]) - 1.0).float()[:, None]
        self.enc_gain = nn.Parameter(init.repeat(1, M))
        self.dec_gain = nn.Parameter(-init.repeat(1, M))

    @property
    def qualities(self) -> int:
        return len(self.config.lambdas)

    # -- helpers -------------------------------------------------------------------------------------
    def gains(self, quality: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder and decoder gains (B, M, 1, 1) for 0-based, possibly fractional, quality indices."""
        q = quality.clamp(0, self.qualities - 1)
        lo = q.floor().long().clamp(max=self.qualities - 2) if self.qualities > 1 else q.long()
        t = (q - lo.to(q.dtype))[:, None]
        hi = (lo + 1).clamp(max=self.qualities - 1)
        enc = (1 - t) * self.enc_gain[lo] + t * self.enc_gain[hi]
        dec = (1 - t) * self.dec_gain[lo] + t * self.dec_gain[hi]
        return torch.exp2(enc)[..., None, None], torch.exp2(dec)[..., None, None]

    def to_blocks(self, t: Tensor) -> Tensor:
        """(B, M, H, W) → (B, H, W, M/n, n): n consecutive channels at one position form a block."""
        b, m, h, w = t.shape
        n = self.lattice.dim
        return t.permute(0, 2, 3, 1).reshape(b, h, w, m // n, n)

    def from_blocks(self, t: Tensor) -> Tensor:
        b, h, w, k, n = t.shape
        return t.reshape(b, h, w, k * n).permute(0, 3, 1, 2)

    def hyper_parameters(self, z_hat: Tensor, floor: bool = True) -> tuple[Tensor, Tensor]:
        """Mean μ' and log2 σ' of y' in lattice units, from the decoded hyper-latent (σ' floored at the
        config's scale floor unless ``floor`` is false: then only at the coder's smallest scale)."""
        mean, log2_scale = self.h_s(z_hat).chunk(2, dim=1)
        return mean, bounded_log2_scale(log2_scale, self.config.scale_floor_level if floor else None)

    # -- training forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor, quality: Tensor, rate: str = "noise") -> dict[str, Tensor]:
        """Training pass: reconstruction and bits per image (y through the box likelihood, z factorized).

        Distortion sees straight-through hard lattice quantization.  With ``rate="noise"`` the rate sees
        dithered (Voronoi-uniform) noise, the usual mixed relaxation (Minnen & Singh 2020), here on a
        lattice.  With ``rate="hard"`` it is the box-code likelihood of the hard lattice point itself
        (straight-through to y): the bits the coder writes, but for coordinates far out in their
        predicted scale, which cost at most −log2 ``likelihood_floor`` here and some 16–20 bits in the
        coder.  At low rates, where most latents sit on 0 well inside their cell, the noisy estimate is
        about three times the coded bits and prices small scales wrongly; the hard rate gives the
        entropy model the true gradient.
        """
        enc_g, dec_g = self.gains(quality)
        bits_y, bits_z, hard, mean = self.latent_rate(self.g_a(x) * enc_g, rate)
        x_hat = self.g_s((self.from_blocks(hard) + mean) * dec_g)
        return {"x_hat": x_hat, "bits_y": bits_y, "bits_z": bits_z}

    def latent_rate(self, y: Tensor, rate: str = "noise") -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The rate half of :meth:`forward` for y' (after the encoder gain): bits of y' and of z per image,
        the lattice points of y' − μ' (straight-through, in blocks) and the mean μ' they sit around."""
        z = self.h_a(y)
        z_noisy = z + torch.rand_like(z) - 0.5
        z_hat = z + (torch.round(z) - z).detach()
        hard, mean, log2_scale = self.quantized_latent(y, z_hat, "ste")
        residual = self.to_blocks(y - mean)
        scale = self.to_blocks(torch.exp2(log2_scale))
        lik_y = box_likelihood(rate_points(self.lattice, residual, hard, rate), self.lattice.diagonal, scale,
                               self.config.likelihood_floor)
        lik_z = self.z_density.likelihood(z_noisy)
        return -torch.log2(lik_y).flatten(1).sum(1), -torch.log2(lik_z).flatten(1).sum(1), hard, mean

    def quantized_latent(self, y: Tensor, z_hat: Tensor, mode: str = "hard",
                         floor: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """The lattice points of y' − μ' (in blocks; ``mode`` "hard" or straight-through "ste"), and the
        mean μ' and log2 σ' they are coded under.

        With a checkerboard context the anchors are quantized under the hyperprior's μ', σ'; the
        context network then moves μ', σ' of the other positions, which are quantized around their
        new mean (the anchors' points do not change: the context leaves their parameters alone).
        """
        mean, log2_scale = self.hyper_parameters(z_hat, floor)
        hard = self.lattice.quantize(self.to_blocks(y - mean), mode)
        if self.ctx is None:
            return hard, mean, log2_scale
        anchors = anchor_mask(y.shape[2], y.shape[3], y.dtype)
        d_mean, d_log2_scale = self.context((self.from_blocks(hard) + mean) * anchors).chunk(2, dim=1)
        mean = mean + d_mean * (1 - anchors)
        log2_scale = bounded_log2_scale(log2_scale + d_log2_scale * (1 - anchors),
                                        self.config.scale_floor_level if floor else None)
        return self.lattice.quantize(self.to_blocks(y - mean), mode), mean, log2_scale

    def context(self, anchors_hat: Tensor) -> Tensor:
        """The context network on the anchors' ŷ' (zero elsewhere), taken on its integer grid
        (:data:`CONTEXT_GRID`, rounded straight-through) as the codec's integer network takes it."""
        v = (anchors_hat * CONTEXT_GRID).clamp(-CONTEXT_CLAMP, CONTEXT_CLAMP)
        return self.ctx(v + (torch.round(v) - v).detach())

    @torch.no_grad()
    def hard_latent(self, x: Tensor, quality: Tensor, floor: bool = True) -> dict[str, Tensor]:
        """The coder's view of an image: hard-quantized lattice points of y' − μ' ("hard", in blocks),
        their scales σ' ("scale", in blocks; see :meth:`hyper_parameters` for ``floor``), the mean,
        the rounded hyper-latent and the decoder gain."""
        return self.hard_latent_of(self.g_a(x), quality, floor)

    @torch.no_grad()
    def hard_latent_of(self, y: Tensor, quality: Tensor, floor: bool = True) -> dict[str, Tensor]:
        """:meth:`hard_latent` from g_a's output ``y`` (before the gains), which does not depend on the
        quality: one analysis serves every quality."""
        enc_g, dec_g = self.gains(quality)
        y = y * enc_g
        z_hat = torch.round(self.h_a(y))
        hard, mean, log2_scale = self.quantized_latent(y, z_hat, "hard", floor)
        return {"hard": hard, "scale": self.to_blocks(torch.exp2(log2_scale)), "mean": mean, "z_hat": z_hat,
                "dec_g": dec_g}

    def estimate(self, x: Tensor, quality: Tensor) -> dict[str, Tensor]:
        """Evaluation pass with hard quantization everywhere: bits are the box-code ideal."""
        t = self.hard_latent(x, quality)
        lik_y = box_likelihood(t["hard"], self.lattice.diagonal, t["scale"], self.config.likelihood_floor)
        lik_z = self.z_density.likelihood(t["z_hat"])
        x_hat = self.g_s((self.from_blocks(t["hard"]) + t["mean"]) * t["dec_g"])
        return {
            "x_hat": x_hat,
            "bits_y": -torch.log2(lik_y).flatten(1).sum(1),
            "bits_z": -torch.log2(lik_z).flatten(1).sum(1),
        }
