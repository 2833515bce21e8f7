"""How the image model uses its latent, quality by quality: how many channels carry the bits, and what
quantization costs against the same latent left unquantized (the transforms' own ceiling).

    python -m bench.latent_usage --weights models/ltc-image-e8.safetensors
    python -m bench.latent_usage --weights ~/.cache/ltcodec/image-e8/last.ckpt   # a checkpoint's average

When every channel carries bits at the top quality and the unquantized PSNR is barely above the coded
one, the latent is too narrow for higher qualities: more bits cannot buy more PSNR.  For scale, the
report gives what the best linear map to as many dimensions keeps: each image's 16×16 RGB blocks (one
latent position's worth of pixels) projected on the leading principal components of all the images'
blocks, for the model's M and for other widths.  Rates are the ideal box-code bits of y (z excluded)
under the float hyperprior, which training descends; for a model file they are set beside the bits of
the coder's own y stream (its integer hyperprior and frozen tables), which is what files cost.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ltcodec.entropy import box_likelihood
from ltcodec.image import load_image_model
from ltcodec.image_model import ImageModelConfig, LatticeHyperprior
from ltcodec.training.export_image import load_trained
from ltcodec.training.image import load_init

from .host import machine

RESULTS = Path(__file__).parent / "results"
SHARES = (0.5, 0.9, 0.99)
#: Latent widths for the linear bound (besides the model's own M).
BOUND_WIDTHS = (128, 192, 256, 320)


def load_network(path: Path) -> tuple[LatticeHyperprior, str]:
    """The float network of a model file (which keeps it for training and refinement) or of a training
    checkpoint (its moving average of the weights), and a description of it."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            config = ImageModelConfig.from_dict(json.loads(f.metadata()["config"]))
        init = load_init(path)
        net = LatticeHyperprior(config)
        net.load_state_dict(init.weights)
        return net, f"`{path.name}` ({init.step:,} steps)"
    net, state = load_trained(path, ema=True)
    return net, f"checkpoint `{path.name}` at step {state['step']:,} (moving average)"


def first_images(folder: Path, limit: int) -> tuple[list[Path], list[np.ndarray]]:
    """The first ``limit`` PNG images of a folder (by name) as RGB arrays, and their files."""
    files = sorted(folder.glob("*.png"))[:limit]
    if not files:
        raise SystemExit(f"no PNG images in {folder}")
    return files, [np.asarray(Image.open(f).convert("RGB")) for f in files]


def blocks_of(img: np.ndarray, size: int = 16) -> np.ndarray:
    """The whole ``size``×``size`` RGB blocks of an image as rows of size·size·3 values (the latent's
    stride: one position of y per block)."""
    h, w, _ = img.shape
    a = img[:h // size * size, :w // size * size].astype(np.float64)
    return a.reshape(h // size, size, w // size, size, 3).transpose(0, 2, 1, 3, 4).reshape(-1, size * size * 3)


def linear_bound(images: list[np.ndarray], widths: tuple[int, ...]) -> dict[int, float]:
    """Mean PSNR per image of its 16×16 blocks kept in the ``d`` leading principal components of all the
    images' blocks (their own KLT, so an optimistic bound for a linear transform), for each width d."""
    rows = [blocks_of(img) for img in images]
    allrows = np.concatenate(rows)
    mean = allrows.mean(0)
    _, vectors = np.linalg.eigh(np.cov((allrows - mean).T))
    vectors = vectors[:, ::-1]
    out = {}
    for d in widths:
        basis = vectors[:, :d]
        psnrs = []
        for b in rows:
            r = np.clip(np.round((b - mean) @ basis @ basis.T + mean), 0, 255)
            psnrs.append(10 * math.log10(255.0 ** 2 / max(float(((r - b) ** 2).mean()), 1e-10)))
        out[d] = float(np.mean(psnrs))
    return out


def channels_for_share(bits: np.ndarray, share: float) -> int:
    """The fewest channels that together carry ``share`` of the bits."""
    ordered = np.sort(bits)[::-1]
    return int(np.searchsorted(np.cumsum(ordered) / ordered.sum(), share) + 1)


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    mse = float(((torch.round(x_hat.clamp(0, 1) * 255) - torch.round(x * 255)) ** 2).mean())
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-10))


@torch.no_grad()
def measure(net: LatticeHyperprior, images: list[np.ndarray], coder=None) -> list[dict]:
    """Per quality: y's bits per channel and in all, PSNR coded and unquantized; with ``coder`` (the
    same model loaded as a codec) also the bits of the coder's y stream (``bpp_y_coder``)."""
    net.eval()
    coder_bits = np.zeros(net.qualities)
    qualities = [torch.tensor([float(q)]) for q in range(net.qualities)]
    bits = np.zeros((net.qualities, net.config.M))
    coded, unquantized = np.zeros((2, net.qualities, len(images)))
    pixels = 0
    for i, img in enumerate(images):
        h, w, _ = img.shape
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255.0
        y = net.g_a(torch.nn.functional.pad(x, (0, (-w) % 64, 0, (-h) % 64), mode="replicate"))
        pixels += h * w
        for q, quality in enumerate(qualities):
            t = net.hard_latent_of(y, quality)
            lik = box_likelihood(t["hard"], net.lattice.diagonal, t["scale"], net.config.likelihood_floor)
            bits[q] += net.from_blocks(-torch.log2(lik)).sum((0, 2, 3)).double().numpy()
            x_hat = net.g_s((net.from_blocks(t["hard"]) + t["mean"]) * t["dec_g"])
            coded[q, i] = psnr(x_hat[..., :h, :w], x)
            enc_g, dec_g = net.gains(quality)
            unquantized[q, i] = psnr(net.g_s(y * enc_g * dec_g)[..., :h, :w], x)
        if coder is not None:
            y_coder = coder.analysis(img)
            for q in range(net.qualities):
                coder_bits[q] += coder.stream_bits(y_coder, float(q + 1))[1]
    rows = [{"quality": q + 1, "bpp_y": float(bits[q].sum() / pixels), "psnr": float(coded[q].mean()),
             "psnr_unquantized": float(unquantized[q].mean()),
             "channels": {f"{s:g}": channels_for_share(bits[q], s) for s in SHARES}}
            for q in range(net.qualities)]
    if coder is not None:
        for q, row in enumerate(rows):
            row["bpp_y_coder"] = float(coder_bits[q] / pixels)
    return rows


def report(rows: list[dict], what: str, m: int, n_images: int, command: str, stamp: str,
           bound: dict[int, float] | None = None, set_name: str = "Kodak") -> str:
    with_coder = all("bpp_y_coder" in r for r in rows)
    lines = [f"# Latent usage of the image model: {what}", "",
             f"Command: `{command}` · {stamp} · {machine()} · first {n_images} {set_name} images", "",
             f"Per quality: ideal box-code bits of y per pixel under the float hyperprior (what training "
             f"descends){' and in the coder’s y stream (what files cost)' if with_coder else ''}, PSNR of the "
             f"coded latent and of the same latent unquantized (g_s of g_a's output times both gains), and how "
             f"many of the M = {m} latent channels carry 50 / 90 / 99% of y's bits.", "",
             f"| quality | bpp (y){' | bpp (y), coder' if with_coder else ''} | PSNR | PSNR unquantized | "
             "channels for 50 / 90 / 99% of the bits |",
             "|---|---|---|---|---|" + ("---|" if with_coder else "")]
    for r in rows:
        c = r["channels"]
        coder = f" {r['bpp_y_coder']:.4f} |" if with_coder else ""
        lines.append(f"| {r['quality']} | {r['bpp_y']:.4f} |{coder} {r['psnr']:.2f} | {r['psnr_unquantized']:.2f} | "
                     f"{c['0.5']} / {c['0.9']} / {c['0.99']} |")
    if bound:
        widths = ", ".join(f"{d}{' (the model’s M)' if d == m else ''}: {v:.2f} dB" for d, v in sorted(bound.items()))
        lines += ["", "Linear bound: PSNR of the images' 16×16 RGB blocks (768 values, one latent position) kept in "
                  f"the leading principal components of these blocks — {widths}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=Path("models/ltc-image-e8.safetensors"))
    p.add_argument("--set", type=Path, default=Path("../shared/data/eval/images/kodak"))
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--out", type=Path, default=RESULTS / "latent-usage")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    files, images = first_images(args.set, args.images)
    net, what = load_network(args.weights.expanduser())
    coder = load_image_model(str(args.weights.expanduser())) if args.weights.suffix == ".safetensors" else None
    rows = measure(net, images, coder)
    bound = linear_bound(images, tuple(sorted({*BOUND_WIDTHS, net.config.M})))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m bench.latent_usage " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    set_name = "Kodak" if args.set.name == "kodak" else f"`{args.set.name}`"
    text = report(rows, what, net.config.M, len(files), command.strip(), stamp, bound, set_name)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"weights": what, "rows": rows, "date": stamp,
                                                         "linear_bound": bound}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
