"""Export a training checkpoint as a shipped image model, measure it on Kodak, write its model card.

    python -m ltcodec.training.export_image --ckpt ~/.cache/ltcodec/image-e8/last.ckpt \\
        --kodak ../shared/data/eval/images/kodak --calibration ../shared/data/train/images

Writes ``models/<name>.safetensors`` (float transforms in fp16/fp32, integer h_s, frozen tables) and
``models/<name>.md`` with the architecture, parameter count, data, steps, CPU hours and the Kodak table
measured with real coded files.  Regenerate the conformance vectors afterwards
(``python formats/conformance/make_vectors.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..image import decode_image, encode_image
from ..image_codec import TABLE_PRIOR, ImageCodecModel, export_image_model
from ..entropy import box_likelihood
from ..image_model import LOG2_SCALE_MIN, ImageModelConfig, LatticeHyperprior
from .card import cpu_name, eval_records, history_line, learning_rate_line, progress_section, weights_line

REPO = Path(__file__).resolve().parents[2]


def kodak_table(model: ImageCodecModel, folder: Path, threads: int = 2,
                limit: int | None = None) -> tuple[list[dict], dict]:
    torch.set_num_threads(threads)
    files = sorted(folder.glob("*.png"))[:limit]
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    rows, enc_t, dec_t = [], [], []
    for q in range(1, model.qualities + 1):
        bpp, psnr = [], []
        for img in images:
            t0 = time.perf_counter()
            data = encode_image(img, quality=q, model=model)
            t1 = time.perf_counter()
            out = np.asarray(decode_image(data, model=model))
            t2 = time.perf_counter()
            enc_t.append(t1 - t0)
            dec_t.append(t2 - t1)
            h, w, _ = img.shape
            bpp.append(8 * len(data) / (h * w))
            mse = ((out.astype(np.float64) - img) ** 2).mean()
            psnr.append(10 * math.log10(255**2 / mse))
        rows.append({"quality": q, "bpp": float(np.mean(bpp)), "psnr": float(np.mean(psnr))})
        print(json.dumps(rows[-1]), flush=True)
    timing = {"encode_s_median": statistics.median(enc_t), "decode_s_median": statistics.median(dec_t),
              "threads": threads, "images": len(images)}
    return rows, timing


def load_trained(ckpt: Path, ema: bool = False) -> tuple[LatticeHyperprior, dict]:
    """The network of a training checkpoint (its moving-average weights with ``ema``, where it keeps
    them), and the checkpoint itself (step, CPU time, ...)."""
    state = torch.load(ckpt, weights_only=False)
    net = LatticeHyperprior(ImageModelConfig.from_dict(state["config"]))
    net.load_state_dict(state["ema"] if ema and "ema" in state else state["model"])
    return net, state


@torch.no_grad()
def fit_scale_floor(net: LatticeHyperprior, images: list[np.ndarray], candidates=range(-32, -7)) -> int:
    """The σ' floor level that minimizes the coded size of some (training) images, summed over qualities
    as relative sizes so that every quality counts alike.

    Quantization does not depend on σ', so the floor changes the rate only, never the reconstruction.
    """
    net.eval()
    cands = list(candidates)
    ratio = np.zeros(len(cands))
    for q in range(net.qualities):
        bits = np.zeros(len(cands))
        for img in images:
            x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
            x = torch.nn.functional.pad(x, (0, (-x.shape[3]) % 64, 0, (-x.shape[2]) % 64), mode="replicate")
            t = net.hard_latent(x, torch.tensor([float(q)]), floor=False)
            for i, level in enumerate(cands):
                lik = box_likelihood(t["hard"], net.lattice.diagonal, t["scale"].clamp_min(2.0 ** (level / 8)),
                                     net.config.likelihood_floor)
                bits[i] += float(-torch.log2(lik).sum())
        ratio += bits / bits[0]
    return cands[int(np.argmin(ratio))]


def calibration_images(folder: Path, every: int = 10) -> list[np.ndarray]:
    """Every ``every``-th training image: every tenth sets the integer h_s's activation ranges (their
    hyper-latents); the box-code tables are refitted to more (``--table-every``)."""
    return [np.asarray(Image.open(f).convert("RGB")) for f in sorted(folder.glob("*.png"))[::every]]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--name", default="ltc-image-e8")
    p.add_argument("--out", type=Path, default=REPO / "models")
    p.add_argument("--kodak", type=Path, default=REPO.parent / "shared" / "data" / "eval" / "images" / "kodak")
    p.add_argument("--calibration", type=Path, default=REPO.parent / "shared" / "data" / "train" / "images")
    p.add_argument("--raw", action="store_true", help="export the training weights, not their moving average")
    p.add_argument("--scale-floor-level", type=int,
                   help="σ' floor level ℓ (σ' ≥ 2^(ℓ/8)); default: fitted on the calibration images")
    p.add_argument("--table-every", type=int, default=3,
                   help="refit the box-code tables to the symbols coded for every N-th image of --calibration at "
                        "every quality (0: keep the Gaussian tables)")
    p.add_argument("--log", type=Path, help="the run's log.jsonl, for the card's training progress "
                   "(default: the one beside --ckpt)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)  # before the minutes of calibration, not after

    net, state = load_trained(args.ckpt, ema=not args.raw)
    state["exported_weights"] = "raw" if args.raw or "ema" not in state else "ema"
    config = net.config
    calibration = calibration_images(args.calibration)
    if args.scale_floor_level is None:
        config.scale_floor_level = fit_scale_floor(net, calibration)
    else:
        config.scale_floor_level = args.scale_floor_level
    print(f"scale floor level {config.scale_floor_level} (σ' ≥ {2 ** (config.scale_floor_level / 8):.3f})")
    path = args.out / f"{args.name}.safetensors"
    meta = {"train_step": state["step"], "train_cpu_hours": round(state.get("cpu_seconds", 0) / 3600, 2),
            "history": json.dumps(state.get("history", []))}
    table_images = calibration_images(args.calibration, args.table_every) if args.table_every else None
    sha = export_image_model(net, calibration, path, args.name, extra_meta=meta, table_images=table_images)
    print(f"wrote {path} sha256 {sha}")
    model = ImageCodecModel.from_file(path, args.name)
    t0 = time.perf_counter()
    ImageCodecModel.from_file(path, args.name)
    load_s = time.perf_counter() - t0
    rows, timing = kodak_table(model, args.kodak)
    params = sum(p.numel() for p in net.parameters())
    progress = eval_records(args.log or args.ckpt.parent / "log.jsonl", state["step"])
    write_card(args.out / f"{args.name}.md", args.name, sha, config, params, state, rows, timing, load_s, path,
               progress, len(table_images) if table_images else 0)


def lattice_section(shipped: str, ablation: Path = REPO / "bench" / "results" / "ablation-kodak.json") -> list[str]:
    """The card's "which lattice and why", from the committed lattice ablation on Kodak."""
    lines = ["## Which lattice, and why", ""]
    if not ablation.exists():
        return lines + ["The lattice ablation (`python -m bench.ablation`) has not been run for this model yet."]
    saved = json.loads(ablation.read_text())
    bd = saved["bd_rate_vs_scalar"]
    res = saved["results"]
    meta = saved["meta"]
    lines += [f"Lattice ablation (`bench/results/ablation-kodak.md`, {meta['date']}): each lattice fine-tuned "
              f"{meta['steps']:,} steps from one checkpoint, measured with real files on Kodak.", "",
              "| lattice | BD-rate vs scalar | decode (s, median, 1 thread) |", "|---|---|---|"]
    lines += [f"| {lat} | {bd[lat]:+.1f}% | {r['timing']['decode_s_median']:.3f} |" for lat, r in res.items()]
    others = {lat: v for lat, v in bd.items() if lat not in ("z", shipped) and not math.isnan(v)}
    best = min(others, key=others.get) if others else None
    lines += ["", f"Ships with {shipped.upper()}: {bd.get(shipped, math.nan):+.1f}% against scalar quantization"
              + (f"; the best other lattice, {best}, {others[best]:+.1f}%." if best else ".")]
    if best and shipped in res and others[best] < bd.get(shipped, math.nan):
        slower = res[best]["timing"]["decode_s_median"] / res[shipped]["timing"]["decode_s_median"]
        lines += [f"{best} saves {bd[shipped] - others[best]:.1f} points more at {slower:.2f}× the decode time"
                  + (" and needs the latent widened to a multiple of 24 channels" if best == "leech" else "")
                  + "; the learned basis, which stayed next to the identity (nearly scalar), lies "
                  f"{saved['bd_psnr_vs_scalar'].get('learned8', math.nan):+.2f} dB (BD-PSNR) from scalar, so "
                  "differences of this size between short runs are not established, and the cheaper lattice "
                  "ships."]
    return lines


def image_progress(records: list[dict]) -> list[str]:
    """The card's training-progress section: the periodic Kodak eval, and the training images beside it."""
    if not records:
        return []

    def cell(r: dict) -> str:
        return f"{r['bpp']:.3f} bpp, {r['psnr']:.2f} dB"

    qualities = (1, 3, 5, 8)
    return ["## Training progress", "",
            *progress_section(records, qualities, cell, "Periodic eval on the first 4 Kodak images"),
            *progress_section(records, qualities, cell, "The same eval on 4 training images, for the gap "
                              "between what the model fits and what it generalizes to", key="eval_train_ema")]


def write_card(path: Path, name: str, sha: str, config: ImageModelConfig, params: int, state: dict,
               rows: list[dict], timing: dict, load_s: float, weights: Path, progress: list[dict] = (),
               table_images: int = 0) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    cpu = cpu_name()
    lines = [
        f"# {name}", "",
        f"The default image model of ltcodec. File `{weights.name}` ({weights.stat().st_size / 1e6:.1f} MB), "
        f"SHA-256 `{sha}`.", "",
        "## Architecture", "",
        f"* Analysis g_a: 4 × (5×5 conv, stride 2) with simplified GDN, {config.transform_channels} channels, latent M = {config.M} "
        "channels at 1/16 resolution"
        + (f", and {config.analysis_blocks} residual block{'s' if config.analysis_blocks > 1 else ''} (two 3×3 convs) "
           "after each of its second and third GDN" if config.analysis_blocks else "")
        + "; synthesis g_s mirrors the strided layers with transposed convolutions and inverse GDN.",
        f"* Latent quantized on the **{config.lattice.upper()}** lattice in blocks of "
        f"{8 if config.lattice == 'e8' else '?'} consecutive channels at each position, after subtracting the "
        "predicted mean; coded with the box code.",
        f"* Mean–scale hyperprior: h_a (3 convs) → z (N = {config.N} channels at 1/64) with a factorized prior frozen into "
        "per-channel integer tables; h_s is an **exact integer network** (12-bit weights and activations) "
        "predicting the mean on a 1/16 grid and the scale as one of 96 log-spaced levels"
        + (f", floored at σ' = {2 ** (config.scale_floor_level / 8):.3f} (level {config.scale_floor_level}, "
           "fitted at export on training images: fewer bits at the lowest qualities, same pixels)."
           if config.scale_floor_level > int(LOG2_SCALE_MIN * 8) else "."),
        *([f"* Box-code tables of the latent refitted at export to the symbols the coder writes for "
           f"{table_images} training crops at every quality (each table averaged with its mirror image and "
           f"{TABLE_PRIOR:g} pseudo-counts of the discretized Gaussian it replaces): the residuals over their "
           "predicted scale are not quite Gaussian."] if table_images else []),
        *(["* Checkerboard context: the anchor half of the latent positions (row + column even) is coded "
           "first under the hyperprior alone; an exact integer network (5×5 grouped convolution, then 1×1) "
           "sees the decoded anchors and moves the mean and scale of the other half, coded in a second stream."]
          if config.context == "checkerboard" else []),
        f"* One model for qualities 1–{len(config.lambdas)}: per-quality log2 gain vectors on the latent "
        f"(encoder and decoder), λ = {', '.join(str(l) for l in config.lambdas)} (loss λ·255²·MSE + bpp).",
        f"* {params / 1e6:.2f} M trainable parameters (float weights stored in fp16 where they are conv kernels).", "",
        "## Training", "",
        "* Recipe: `python -m ltcodec.training.image` (random 128² crops, batch 8, Adam from 2·10⁻⁴ (changes "
        "below), each sample "
        "its own quality), on `../shared/data/train/images` (610 crops of 256² from 105 freely licensed "
        "photographs; see that folder's manifest).",
        f"* Steps: {state['step']:,}; CPU time: {state.get('cpu_seconds', 0) / 3600:.1f} CPU-hours "
        "(1–2 threads on whichever 2-core machine the run was on, Intel Xeon or AMD EPYC; the time of every "
        "thread counts).",
        weights_line(state),
        *learning_rate_line(state),
        *[history_line(h) for h in state.get("history", [])], "",
        "## Kodak (24 images, real .ltc files, PSNR on RGB)", "",
        f"Measured {stamp} by `python -m ltcodec.training.export_image --ckpt …` on {cpu}, "
        f"{timing['threads']} threads.", "",
        "| quality | bpp | PSNR (dB) |", "|---|---|---|",
    ]
    lines += [f"| {r['quality']} | {r['bpp']:.4f} | {r['psnr']:.2f} |" for r in rows]
    lines += ["", f"Median per Kodak image: encode {timing['encode_s_median']:.3f} s, decode "
              f"{timing['decode_s_median']:.3f} s (model loading excluded: {load_s:.2f} s).", "",
              "Comparison with other codecs (BD-rates, plots, crops): `bench/results/images-kodak.md`.", "",
              *lattice_section(config.lattice), "", *image_progress(progress)]
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
