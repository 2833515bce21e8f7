"""Train the variable-rate lattice image model.

    python -m ltcodec.training.image --data ../shared/data/train/images --out ~/.cache/ltcodec/image-e8
    python -m ltcodec.training.image --out ~/.cache/ltcodec/image-e8 --resume

Design (DESIGN-NOTES §4): random 128² crops, batch 8, fp32, channels_last, 2 threads, data held in
memory as uint8 and sampled in the main process (no DataLoader workers on 2 cores).  Each sample of a
batch draws its own quality, so one model learns all of them.  A checkpoint with optimizer and RNG
state is written atomically every few minutes; ``--resume`` continues bit-for-bit from it (with one
process: ``--ranks 2 --threads 1`` splits each batch over two processes, which draw their own noise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..image_model import (CONTEXT_GROUPS, CONTEXTS, LOG2_SCALE_MIN, RATE_RELAXATIONS, ImageModelConfig,
                           LatticeHyperprior)
from .card import (RecipeChanges, changed_setting, is_change, processes_setting, recorded_history, recorded_settings,
                   resumed_setting, seed_from_card)
from .optim import (QUALITY_WEIGHTINGS, QualityLosses, WeightAverage, descend, gain_optimizer, learning_rate_change,
                    resolve_learning_rate, set_learning_rate, split_state, warmup_factor)
from . import parallel
from .parallel import Ranks
from .widen import COPY_NOISE, widen_state

DEFAULT_OUT = Path(os.environ.get("LTCODEC_CACHE", Path.home() / ".cache" / "ltcodec")) / "image-e8"
DEFAULT_LR = 2e-4


def load_images(folder: Path, cache: Path | None = None) -> list[np.ndarray]:
    """All RGB images of a folder as uint8 arrays (cached as one .npz beside the checkpoints)."""
    if cache is not None and cache.exists():
        with np.load(cache) as f:
            return [f[k] for k in sorted(f.files, key=int)]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    if not files:
        raise SystemExit(f"no images in {folder}")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **{str(i): a for i, a in enumerate(images)})
    return images


def sample_batch(images: list[np.ndarray], rng: np.random.Generator, batch: int, crop: int) -> torch.Tensor:
    out = np.empty((batch, crop, crop, 3), dtype=np.uint8)
    for b in range(batch):
        img = images[rng.integers(len(images))]
        h, w, _ = img.shape
        i, j = rng.integers(h - crop + 1), rng.integers(w - crop + 1)
        patch = img[i:i + crop, j:j + crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch[::-1]
        if rng.random() < 0.5:
            patch = patch.transpose(1, 0, 2)
        out[b] = patch
    x = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


def rd_loss(model: LatticeHyperprior, x: torch.Tensor, quality: torch.Tensor,
            rate: str = "noise") -> dict[str, torch.Tensor]:
    out = model(x, quality, rate)
    pixels = x.shape[2] * x.shape[3]
    mse = ((out["x_hat"] - x) ** 2).flatten(1).mean(1)
    bpp = (out["bits_y"] + out["bits_z"]) / pixels
    lam = torch.tensor(model.config.lambdas, dtype=x.dtype)[quality.long()]
    per_sample = lam * 255.0 ** 2 * mse + bpp
    penalty = getattr(model.lattice, "orthogonality_penalty", None)
    extra = 0.1 * penalty() if penalty is not None else torch.zeros(())
    return {"loss": per_sample.mean() + extra, "mse": mse.detach(), "bpp": bpp.detach(), "per_sample": per_sample,
            "penalty": extra}


#: The entropy model of the image model: hyper-analysis, hyper-synthesis, hyper-latent density and (if
#: any) context network.  ``--fit-entropy`` fits these alone, then holds them fixed while the rest trains.
ENTROPY_PARTS = ("h_a", "h_s", "z_density", "ctx")


def fit_entropy_model(model: LatticeHyperprior, images: list[np.ndarray], rng: np.random.Generator, steps: int,
                      crop: int, batch: int, lr: float, ctx_factor: float) -> list[float]:
    """Train ``model``'s entropy model alone for the bits of y and z, the transforms and gains frozen, on
    ``crop``² crops (the context at ``ctx_factor`` × ``lr``); returns the loss of every 100th step.

    The joint run's 128² crops have 8×8 latents and 2×2 hyper-latents: for the hyper-synthesis and a
    5×5 context they are nearly all border (zeros beyond the edge), and what these learn there fits
    whole photographs badly.  From the 135 k-step model, 1,000 steps of the context alone on 256² crops
    saved 2–12% of the Kodak bits per quality, 600 more of the hyperprior alone 5–20%, at −0.04 dB or
    less.  The loss is each sample's log bits, so every quality counts by its relative saving, as in a
    BD-rate; the learning rate decays to zero along a cosine, so no late step's noise stays.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    groups = []
    for name in ENTROPY_PARTS:
        part = getattr(model, name, None)
        if part is not None:
            for p in part.parameters():
                p.requires_grad_(True)
            groups.append({"params": list(part.parameters()), "base": lr * (ctx_factor if name == "ctx" else 1.0)})
    opt = torch.optim.Adam(groups, lr=lr)
    losses = []
    for s in range(steps):
        for group in opt.param_groups:
            group["lr"] = group["base"] * 0.5 * (1 + math.cos(math.pi * s / steps))
        x = sample_batch(images, rng, batch, crop)
        quality = torch.from_numpy(rng.integers(0, len(model.config.lambdas), batch)).float()
        with torch.no_grad():
            enc_g, _ = model.gains(quality)
            y = model.g_a(x) * enc_g
        bits_y, bits_z, _, _ = model.latent_rate(y, "hard")
        loss = torch.log2(bits_y + bits_z).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if s % 100 == 0:
            losses.append(loss.item())
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


@torch.no_grad()
def evaluate(model: LatticeHyperprior, images: list[np.ndarray]) -> list[dict]:
    """Ideal box-code bits and PSNR per quality on whole images (padded to a multiple of 64)."""
    model.eval()
    rows = []
    for q in range(model.qualities):
        bpps, psnrs = [], []
        for img in images:
            h, w, _ = img.shape
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255.0
            ph, pw = (-h) % 64, (-w) % 64
            xp = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
            out = model.estimate(xp.contiguous(memory_format=torch.channels_last), torch.tensor([float(q)]))
            x_hat = out["x_hat"][..., :h, :w].clamp(0, 1)
            mse = float(((torch.round(x_hat * 255) - torch.round(x * 255)) ** 2).mean())
            bpps.append(float(out["bits_y"] + out["bits_z"]) / (h * w))
            psnrs.append(10 * math.log10(255.0 ** 2 / max(mse, 1e-10)))
        rows.append({"quality": q + 1, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))})
    model.train()
    return rows


class Init(NamedTuple):
    weights: dict[str, torch.Tensor]
    step: int
    cpu_seconds: float
    config: ImageModelConfig  # its shape and the settings it was trained with (ladder, floors)
    history: tuple[dict, ...] = ()  # its recipe changes, which the card goes on reporting


def load_init(path: Path) -> Init:
    """Weights, step, CPU seconds and quality ladder to start from: a training checkpoint (its moving
    average of the weights, where it kept one) or a shipped model.

    A shipped model keeps the float transforms and gains (``float.*``) and the float hyper-synthesis and
    hyper-latent density (``train.*``), so training can go on from it when the checkpoint is gone (only
    the optimizer state is lost).  Files written before ``train.*`` existed lack the last two: those
    parts then start afresh and relearn over thousands of steps.
    """
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            weights = {k.split(".", 1)[1]: f.get_tensor(k).float() for k in f.keys()
                       if k.startswith(("float.", "train."))}
        config = ImageModelConfig.from_dict(json.loads(meta.get("config", "{}")))
        history = recorded_history(meta, path.with_suffix(".md"), config.lambdas)
        return Init(weights, int(meta.get("train_step", 0)), float(meta.get("train_cpu_hours", 0.0)) * 3600.0,
                    config, tuple(history))
    state = torch.load(path, weights_only=False)
    config = ImageModelConfig.from_dict(state.get("config", {}))
    return Init(state.get("ema") or state["model"], state.get("step", 0), state.get("cpu_seconds", 0.0),
                config, tuple(state.get("history", ())))


def last_fit_step(history: Sequence[dict]) -> int:
    """The step of the last fit of the entropy model alone in a run's recipe changes (0 if none)."""
    return max((c["step"] for c in history if "entropy_fit_steps" in c or "context_fit_steps" in c), default=0)


def releases_entropy_model(change: dict) -> bool:
    """Whether a recipe change lets a fitted entropy model train again: a widened latent or a new context
    has to be learned by it (:func:`held_parts`)."""
    return "latent_from" in change or "context_from" in change


def entropy_fit_due(history: Sequence[dict], step: int, every: int) -> bool:
    """Whether a run refitting its entropy model every ``every`` steps (``--refit-every``) fits it now:
    ``every`` steps after its last fit, or after the change that released it.  A run that never fitted it
    alone does not start to."""
    if not every:
        return False
    fitted = last_fit_step(history)
    released = max((c["step"] for c in history if releases_entropy_model(c)), default=0)
    return bool(fitted) and step - max(fitted, released) >= every


def held_parts(history: Sequence[dict]) -> list[str]:
    """The parts of the model that a run's recipe changes fitted alone and hold fixed (``--fit-entropy``).

    Widening the latent or changing the context releases them: the new channels, or the new network, have
    to be learned by the entropy model, which trains with the rest until it is fitted again.
    """
    parts: list[str] = []
    for change in history:
        if releases_entropy_model(change):
            parts, new = [], []
        elif "entropy_fit_steps" in change:
            new = change.get("parts", [])
        else:
            new = ["ctx"] if "context_fit_steps" in change else []
        parts += [name for name in new if name not in parts]
    return parts


def refit_gains(gains: torch.Tensor, old: Sequence[float], new: Sequence[float]) -> torch.Tensor:
    """Gain vectors (qualities × M) for a new λ ladder, from those learned for the old one.

    Per channel, log2-gain is interpolated piecewise-linearly in log2 λ between the old qualities; beyond
    the old ladder's ends it continues with the channel's least-squares slope (the ends alone are noisy).
    Log2-gains are close to linear in log2 λ (a step ∝ λ^-1/2 at high rate), so the new qualities start
    near their operating points and training refines them.
    """
    x = np.log2(np.asarray(old, dtype=np.float64))
    xn = np.log2(np.asarray(new, dtype=np.float64))
    if np.any(np.diff(x) <= 0) or np.any(np.diff(xn) <= 0):
        raise ValueError("quality ladders must be strictly increasing in λ")
    g = gains.detach().double().numpy()
    slope = ((x - x.mean())[:, None] * (g - g.mean(0))).sum(0) / ((x - x.mean()) ** 2).sum()
    out = np.stack([np.interp(xn, x, g[:, c]) for c in range(g.shape[1])], 1)
    below, above = xn < x[0], xn > x[-1]
    out[below] = g[0] + (xn[below] - x[0])[:, None] * slope
    out[above] = g[-1] + (xn[above] - x[-1])[:, None] * slope
    return torch.from_numpy(out).to(gains.dtype)


def latent_positions(m0: int, M: int, groups: int) -> torch.Tensor:
    """Where each of a latent's M₀ channels goes in a latent widened to M: appended after them without a
    context network, or with one whose 5×5 convolution has ``groups`` groups, kept in its group (the
    first M₀/groups of M/groups places of each), so that every old channel keeps the companions its
    context sees."""
    c = torch.arange(m0)
    if groups == 1:
        return c
    size0, size = m0 // groups, M // groups
    return (c // size0) * size + c % size0


def widen_latent(weights: dict[str, torch.Tensor], M: int, seed: int = 0, lattice_dim: int = 8
                 ) -> dict[str, torch.Tensor]:
    """Widen a model's latent from its M₀ channels to M (more room for detail at high rates, or a
    multiple of a wider lattice's dimension: Leech 128 → 144).

    The new channels start small in g_a and invisible to g_s, h_a, the hyper-mean and the context, with
    the smallest scale, so the widened model starts as the same function at nearly the same rate; training
    then decides what they carry.  With a checkerboard context (grouped 5×5 convolution) each group widens
    in place, whole lattice blocks at a time (:func:`latent_positions`); its hidden units likewise.
    """
    w = dict(weights)
    m0 = w["g_a.6.weight"].shape[0]
    extra = M - m0
    if extra == 0:
        return w
    if extra < 0:
        raise ValueError(f"cannot narrow the latent from {m0} to {M} channels")
    groups = CONTEXT_GROUPS if "ctx.0.weight" in w else 1
    if groups > 1 and (m0 % (groups * lattice_dim) or M % (groups * lattice_dim)):
        raise ValueError(f"a latent with a context widens by whole lattice blocks per group: {m0} and {M} "
                         f"must be multiples of {groups * lattice_dim}")
    pos = latent_positions(m0, M, groups)
    gen = torch.Generator().manual_seed(seed)

    def place(t: torch.Tensor, dim: int, where: torch.Tensor, size: int,
              fill: torch.Tensor | float = 0.0) -> torch.Tensor:
        shape = list(t.shape)
        shape[dim] = size
        out = fill.clone() if isinstance(fill, torch.Tensor) else torch.full(shape, float(fill), dtype=t.dtype)
        return out.to(t.dtype).index_copy(dim, where, t)

    ga = w["g_a.6.weight"]
    w["g_a.6.weight"] = place(ga, 0, pos, M, torch.randn((M, *ga.shape[1:]), generator=gen) * 0.1 * ga.std())
    w["g_a.6.bias"] = place(w["g_a.6.bias"], 0, pos, M)
    w["g_s.0.weight"] = place(w["g_s.0.weight"], 0, pos, M)
    w["h_a.0.weight"] = place(w["h_a.0.weight"], 1, pos, M)
    both = torch.cat([pos, pos + M])  # [means | scales] of 2M outputs
    w["h_s.4.weight"] = place(w["h_s.4.weight"], 0, both, 2 * M)
    w["h_s.4.bias"] = place(w["h_s.4.bias"], 0, both, 2 * M,
                            torch.cat([torch.zeros(M), torch.full((M,), LOG2_SCALE_MIN)]))
    for k in ("enc_gain", "dec_gain"):
        g = w[k]
        w[k] = place(g, 1, pos, M, g.mean(1, keepdim=True).expand(-1, M))
    if groups > 1:
        # ctx.0: per group, M/groups inputs → 2M/groups hidden units; ctx.2: 2M hidden → [means | scales].
        hidden = latent_positions(2 * m0, 2 * M, groups)
        c0 = w["ctx.0.weight"]
        c0 = place(c0, 1, torch.arange(c0.shape[1]), M // groups)  # within a group the old inputs come first
        w["ctx.0.weight"] = place(c0, 0, hidden, 2 * M)
        w["ctx.0.bias"] = place(w["ctx.0.bias"], 0, hidden, 2 * M)
        w["ctx.2.weight"] = place(place(w["ctx.2.weight"], 1, hidden, 2 * M), 0, both, 2 * M)
        w["ctx.2.bias"] = place(w["ctx.2.bias"], 0, both, 2 * M)
    return w


def widen_transforms(weights: dict[str, torch.Tensor], model: LatticeHyperprior, seed: int = 0,
                     noise: float = COPY_NOISE) -> dict[str, torch.Tensor]:
    """``weights`` with g_a and g_s widened to ``model``'s transform channels (Net2WiderNet,
    :func:`~ltcodec.training.widen.widen_state`): the same function but for ``noise`` on the copies.  The
    hyperprior keeps its width, so the side information costs what it did."""
    old = {k: v for k, v in weights.items() if k.startswith(("g_a.", "g_s."))}
    if old["g_a.0.weight"].shape[0] == model.config.transform_channels:
        return weights
    if model.config.analysis_blocks:
        raise ValueError("widen the transforms before deepening g_a: the widening does not know its residual blocks")
    parts = nn.ModuleDict({"g_a": model.g_a, "g_s": model.g_s})
    return {**weights, **widen_state(old, parts, noise, torch.Generator().manual_seed(seed))}


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/train/images"))
    p.add_argument("--eval", type=Path, default=Path("../shared/data/eval/images/kodak"))
    p.add_argument("--eval-images", type=int, default=4, help="Kodak images used by the periodic eval")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", type=Path, help="start from this checkpoint's weights (fresh optimizer)")
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float,
                   help=f"base learning rate (default {DEFAULT_LR:g}; on --resume, the rate the run trains with)")
    p.add_argument("--lr-drop-at", type=int, default=0, help="divide the learning rate by 10 from this step")
    p.add_argument("--warmup", type=int, default=1000,
                   help="with --init, ramp the learning rate up over this many steps (the optimizer starts afresh)")
    p.add_argument("--gain-lr-factor", type=float, default=10.0,
                   help="the per-quality gain vectors (and a context network) learn this many times faster "
                        "(ltcodec.training.optim)")
    p.add_argument("--N", type=int, default=96, help="channels of the hyper-latent (and of the transforms, "
                   "unless --transform-N)")
    p.add_argument("--transform-N", type=int,
                   help="channels of g_a and g_s; with --init, more than the weights' widens them without "
                        "changing what they compute (widen_transforms)")
    p.add_argument("--analysis-blocks", type=int,
                   help="residual blocks in g_a after each of its second and third GDN; with --init, more than "
                        "the weights' deepens g_a without changing what it computes (the new blocks start as the "
                        "identity); the decoder is not touched")
    p.add_argument("--M", type=int, default=128)
    p.add_argument("--lattice", default="e8")
    p.add_argument("--lambdas", type=float, nargs="+",
                   help="the quality ladder (λ of qualities 1…n, increasing); when it differs from the one "
                        "being resumed or initialized from, the gain vectors are refitted to it")
    p.add_argument("--scale-floor-level", type=int,
                   help="train with the entropy model's σ' floored at 2^(ℓ/8), as the codec applies it "
                        "(the model's scale_floor_level); resumes keep it")
    p.add_argument("--likelihood-floor", type=float,
                   help="the smallest likelihood of a latent coordinate in the rate (the model's "
                        "likelihood_floor; 1e-9 by default, the coder's tables ~1.5e-5); resumes keep it")
    p.add_argument("--rate", choices=RATE_RELAXATIONS,
                   help="the rate the loss sees: of the dithered latent (noise, the default) or of the hard "
                        "lattice point, the coded bits (LatticeHyperprior.forward); resumes keep it")
    p.add_argument("--quality-weighting", choices=QUALITY_WEIGHTINGS,
                   help="how the qualities of a batch add up: the plain sum of their losses (the default) or "
                        "each relative to its quality's running mean (log, QualityLosses); resumes keep it")
    p.add_argument("--context", choices=CONTEXTS,
                   help="the latent's entropy model: the hyperprior alone (none, the default) or with a "
                        "checkerboard context; a run takes one on with --init (its network starts at zero), "
                        "and keeps it")
    p.add_argument("--fit-entropy", type=int, default=0, metavar="STEPS",
                   help="first fit the entropy model (hyperprior and context) alone for this many steps on "
                        "--fit-crop crops, the moving average's transforms frozen (fit_entropy_model), then hold "
                        "it fixed while the rest trains; a resumed run may refit it")
    p.add_argument("--fit-crop", type=int, default=256)
    p.add_argument("--fit-batch", type=int, default=8, help="the fit's batch (not --batch: the fit's crops are its own)")
    p.add_argument("--refit-every", type=int, default=0, metavar="STEPS",
                   help="refit a fixed entropy model whenever the transforms have trained this many steps since "
                        "its last fit, or since a widening of the latent released it (for --refit-steps steps; "
                        "0: only when --fit-entropy asks)")
    p.add_argument("--refit-steps", type=int, default=600)
    p.add_argument("--fit-lr", type=float, default=1e-4, help="(the context's: times --gain-lr-factor)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--eval-every", type=int, default=5000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--keep-every", type=int, default=20_000, help="also keep step-N.ckpt every N steps")
    WeightAverage.add_argument(p)
    parallel.add_argument(p)
    args = p.parse_args(argv)
    parallel.run(train, args)


def train(args: argparse.Namespace, ranks: Ranks) -> None:
    """The run of :func:`main` in one of its processes: every rank computes its slice of each batch; rank 0
    alone logs, evaluates, fits the entropy model (the others take its result) and writes checkpoints."""
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "last.ckpt"
    log_path = args.out / "log.jsonl"

    init = None
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        config = ImageModelConfig.from_dict(state["config"])
        if args.context is not None and args.context != config.context:
            raise SystemExit(f"--context {args.context}: a run changes its entropy model only when it starts "
                             f"from another's weights (--init {ckpt_path})")
    else:
        state = None
        config = ImageModelConfig(N=args.N, M=args.M, lattice=args.lattice, context=args.context or "none",
                                  transform_N=args.transform_N, analysis_blocks=args.analysis_blocks or 0)
        if args.init is not None:
            init = load_init(args.init)
            # The shape comes from the command line (the latent may widen, the lattice change); every
            # training setting (ladder, floors) from the weights, which were trained for them.
            config = replace(init.config, N=args.N, M=args.M, lattice=args.lattice,
                             context=args.context or init.config.context,
                             transform_N=args.transform_N or init.config.transform_N,
                             analysis_blocks=(init.config.analysis_blocks if args.analysis_blocks is None
                                              else args.analysis_blocks))
            if ranks.main:
                seed_from_card(args.init.with_suffix(".md"), log_path)
            if config.transform_channels < init.config.transform_channels:
                raise SystemExit(f"--transform-N {config.transform_channels}: the transforms can only widen "
                                 f"(they have {init.config.transform_channels} channels)")
            if config.analysis_blocks < init.config.analysis_blocks:
                raise SystemExit(f"--analysis-blocks {config.analysis_blocks}: g_a can only deepen "
                                 f"(it has {init.config.analysis_blocks} blocks at each stage)")
    if args.lr_drop_at and args.lr is None:
        raise SystemExit("--lr-drop-at divides the rate given with --lr: give both")
    args.lr = resolve_learning_rate(args.lr, state, log_path, DEFAULT_LR)
    torch.manual_seed(args.seed)  # before the model: a fresh run's initial weights come from its seed
    model = LatticeHyperprior(config).to(memory_format=torch.channels_last)
    # A learned lattice's basis is a handful of numbers too: it learns at the gains' rate.  So does a
    # context network: it starts at zero beside transforms that have trained for long (at the base rate
    # its moving average had saved 1.6% of the bits of quality 1 after 2,500 steps; a frozen model's,
    # trained alone at ten times that rate, 18% after 600).
    gains = [model.enc_gain, model.dec_gain, *model.lattice.parameters(),
             *(model.ctx.parameters() if model.ctx is not None else ())]
    opt = gain_optimizer(model, gains, args.lr, args.gain_lr_factor)
    step = 0
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(split_state(state["optimizer"], model, gains))
        step = state["step"]
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {step}", flush=True)
    elif init is not None:
        step = init.step
        widened = widen_latent(init.weights, config.M, args.seed, model.lattice.dim)
        widened = widen_transforms(widened, model, args.seed)
        missing, unexpected = model.load_state_dict(widened, strict=False)
        print(f"initialized from {args.init} at step {step} (missing {missing}, unexpected {unexpected})", flush=True)
    # Changes of the quality ladder so far (the model card reports them); runs that changed it before
    # checkpoints kept this list have it in their log.
    history = list(state.get("history", [])) if state is not None else list(init.history) if init else []
    if state is not None and "history" not in state and log_path.exists():
        history = [r for r in map(json.loads, log_path.read_text().splitlines()) if is_change(r)]
    changes = RecipeChanges(history)
    if init is not None and init.step:
        changes.add({"step": step, "init_from": args.init.name, "warmup": args.warmup, "lr": args.lr}, "start")
    if init is not None and init.config.context != config.context:
        changes.add({"step": step, "context_from": init.config.context, "context": config.context}, "context")
    if init is not None and init.config.transform_channels != config.transform_channels:
        changes.add({"step": step, "transform_N_from": init.config.transform_channels,
                     "transform_N": config.transform_channels}, "transforms")
    if init is not None and init.config.analysis_blocks != config.analysis_blocks:
        changes.add({"step": step, "analysis_blocks_from": init.config.analysis_blocks,
                     "analysis_blocks": config.analysis_blocks}, "analysis")
    latent_from = init.weights["g_a.6.weight"].shape[0] if init is not None else config.M
    if latent_from != config.M:
        changes.add({"step": step, "latent_from": latent_from, "latent": config.M}, "latent")
    if args.lambdas and tuple(args.lambdas) != tuple(config.lambdas):
        if len(args.lambdas) != len(config.lambdas):
            raise SystemExit(f"--lambdas needs {len(config.lambdas)} values, one per quality of the model")
        with torch.no_grad():
            for g in (model.enc_gain, model.dec_gain):
                g.copy_(refit_gains(g, config.lambdas, args.lambdas))
                opt.state.pop(g, None)  # Adam moments of the old operating points
        changes.add({"step": step, "lambdas_from": list(config.lambdas), "lambdas": list(args.lambdas)},
                    "quality ladder")
        config.lambdas = tuple(args.lambdas)
    if not args.lr_drop_at:
        changes.add(learning_rate_change(state, args.lr, step, log_path), "learning rate")
    config.scale_floor_level, change = changed_setting(config.scale_floor_level, "scale_floor_level",
                                                       args.scale_floor_level, step)
    changes.add(change, "scale floor")
    config.likelihood_floor, change = changed_setting(config.likelihood_floor, "likelihood_floor",
                                                      args.likelihood_floor, step)
    changes.add(change, "likelihood floor")
    # A run initialized from weights goes on with the settings their history left in force.
    kept = state if state is not None else recorded_settings(init.history) if init is not None else None
    rate, change = resumed_setting(kept, "rate", "noise", args.rate, step)
    changes.add(change, "rate relaxation")
    weighting, change = resumed_setting(kept, "quality_weighting", "sum", args.quality_weighting, step)
    changes.add(change, "quality weighting")
    world, change = processes_setting(kept, ranks.world, step)
    changes.add(change, "processes")
    quality_losses = QualityLosses(len(config.lambdas), state.get("quality_losses") if state is not None else None)
    # 128² crops in batches of 8 until checkpoints kept theirs.
    before = (state.get("crop", 128), state.get("batch", 8)) if state is not None else (args.crop, args.batch)
    if (args.crop, args.batch) != before:
        changes.add({"step": step, "crop_from": before[0], "batch_from": before[1], "crop": args.crop,
                     "batch": args.batch}, "crops")

    images = ranks.main_first(lambda: load_images(args.data, args.out / "train-images.npz"))  # rank 0 writes the cache
    eval_files = sorted(args.eval.glob("*.png"))[: args.eval_images] if args.eval.exists() else []
    eval_images = [np.asarray(Image.open(f).convert("RGB")) for f in eval_files]
    # Four training images measured like the eval images: the gap between the two curves over the
    # steps shows how far the model is fitting its (small) training set rather than photographs.
    train_probe = [images[i] for i in np.linspace(0, len(images) - 1, 4).astype(int)]
    params = sum(p.numel() for p in model.parameters())
    print(f"{len(images)} training images, {params / 1e6:.2f} M parameters, config {config.to_dict()}", flush=True)

    warmup = state.get("warmup", (0, 0)) if state is not None else ((step, args.warmup) if init else (0, 0))

    def lr_at(s: int) -> float:
        return args.lr * warmup_factor(s, warmup) * (0.1 if args.lr_drop_at and s >= args.lr_drop_at else 1.0)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "config": config.to_dict(), "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "cpu_seconds": cpu_total(), "history": changes.history, "ema": average.state,
            "ema_decay": args.ema_decay, "lr": args.lr if not args.lr_drop_at else lr_at(step),
            "crop": args.crop, "batch": args.batch, "warmup": warmup, "rate": rate,
            "quality_weighting": weighting, "quality_losses": quality_losses.state(),
            "fixed_parts": fixed, "ranks": world,
        })

    average = WeightAverage(model, args.ema_decay, state.get("ema") if state is not None else None)

    cpu_base = state.get("cpu_seconds", 0.0) if state else (init.cpu_seconds if init is not None else 0.0)
    cpu_start = time.process_time()
    cpu_others = 0.0  # the other ranks' CPU time, as of the last step

    def cpu_total() -> float:
        return cpu_base + cpu_others + time.process_time() - cpu_start

    # An entropy model fitted alone stays as fitted: the joint run's 128² crops would pull it back to their
    # borders.  A run started from a model file whose history fitted it goes on holding it, unless the run
    # widened the latent or changed the context.
    fixed = list(state.get("fixed_parts", [])) if state is not None else held_parts(changes.history)

    def fit_entropy(steps: int) -> list[str]:
        """Fit the entropy model alone on the moving average's transforms, put it into both the training
        weights and their average, drop its optimizer state and record it; returns the parts now fixed (the
        caller checkpoints)."""
        averaged = LatticeHyperprior(config).to(memory_format=torch.channels_last)
        averaged.load_state_dict(average.state)
        parts = [name for name in ENTROPY_PARTS if getattr(model, name, None) is not None]
        if ranks.main:
            losses = fit_entropy_model(averaged, images, np.random.default_rng([args.seed, step]), steps,
                                       args.fit_crop, args.fit_batch, args.fit_lr, args.gain_lr_factor)
            print(f"entropy model fitted: log2 bits {losses[0]:.4f} → {losses[-1]:.4f} (every 100th step)",
                  flush=True)
        ranks.broadcast_([t for name in parts for t in getattr(averaged, name).state_dict().values()])
        with torch.no_grad():
            for name in parts:
                for k, v in getattr(averaged, name).state_dict().items():
                    getattr(model, name).state_dict()[k].copy_(v)
                    average.state[f"{name}.{k}"].copy_(v)
                for p_ in getattr(model, name).parameters():
                    opt.state.pop(p_, None)
        changes.add({"step": step, "entropy_fit_steps": steps, "parts": parts, "crop": args.fit_crop,
                     "batch": args.fit_batch, "lr": args.fit_lr, "ctx_factor": args.gain_lr_factor},
                    "entropy model fit")
        return parts

    def hold(parts: list[str]) -> None:
        for name in parts:
            for p_ in getattr(model, name).parameters():
                p_.requires_grad_(False)

    if args.fit_entropy:
        fixed = fit_entropy(args.fit_entropy)
        if ranks.main:
            checkpoint()
    hold(fixed)

    model.train()
    last_ckpt = time.time()
    t0, acc = time.time(), {"loss": 0.0, "mse": 0.0, "bpp": 0.0}
    n_acc = 0
    part = ranks.part(args.batch)
    with open(log_path if ranks.main else os.devnull, "a") as log:
        changes.write_new(log)
        while step < args.steps:
            set_learning_rate(opt, lr_at(step), args.gain_lr_factor)
            # Every rank draws the same whole batch (one random stream, checkpointed by rank 0) and codes
            # its slice; the running means of the qualities' losses follow the whole batch.
            x = sample_batch(images, rng, args.batch, args.crop)
            quality = torch.from_numpy(rng.integers(0, len(config.lambdas), args.batch)).float()
            out = rd_loss(model, x[part], quality[part], rate)
            (per_sample, mse, bpp), cpu_others = ranks.share(
                [out["per_sample"], out["mse"], out["bpp"]], time.process_time() - cpu_start)
            if not torch.isfinite(per_sample).all():
                print(f"step {step}: non-finite loss, batch skipped", flush=True)
                continue
            objective = out["loss"]
            if weighting == "log":
                quality_losses.observe(per_sample, quality)
                objective = quality_losses.weight(out["per_sample"], quality[part]) + out["penalty"]
            if not descend(opt, model, average, objective, step,
                           lambda: ranks.average_gradients(model.parameters())):
                continue
            step += 1
            for k, v in (("loss", float(per_sample.mean() + out["penalty"])), ("mse", float(mse.mean())),
                         ("bpp", float(bpp.mean()))):
                acc[k] += v
            n_acc += 1
            if step % args.log_every == 0:
                ranks.assert_same(model)
                dt = (time.time() - t0) / n_acc
                rec = {"step": step, **{k: v / n_acc for k, v in acc.items()}, "s_per_step": dt,
                       "lr": lr_at(step), "cpu_hours": cpu_total() / 3600}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
                t0, acc, n_acc = time.time(), {k: 0.0 for k in acc}, 0
            if eval_images and ranks.main and args.eval_every and step % args.eval_every == 0:
                rows = evaluate(model, eval_images)
                averaged = LatticeHyperprior(config)
                averaged.load_state_dict(average.state)
                rec = {"step": step, "eval": rows, "eval_ema": evaluate(averaged, eval_images),
                       "eval_train_ema": evaluate(averaged, train_probe)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
            if ranks.main and args.keep_every and step % args.keep_every == 0:
                checkpoint()
                save_checkpoint(args.out / f"step-{step:07d}.ckpt", torch.load(ckpt_path, weights_only=False))
                last_ckpt = time.time()
            if ranks.main and time.time() - last_ckpt > args.ckpt_minutes * 60:
                checkpoint()
                last_ckpt = time.time()
            if entropy_fit_due(changes.history, step, args.refit_every):
                fixed = fit_entropy(args.refit_steps)
                hold(fixed)  # a released entropy model trained until now
                changes.write_new(log)
                if ranks.main:
                    checkpoint()
                last_ckpt = time.time()
        if ranks.main:
            checkpoint()


if __name__ == "__main__":
    main()
