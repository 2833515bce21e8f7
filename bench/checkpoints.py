"""Compare image models or training checkpoints on the same Kodak images: ideal bits and PSNR per quality,
and the BD-rate of each against the first.

    python -m bench.checkpoints ~/.cache/ltcodec/run-a/last.ckpt ~/.cache/ltcodec/run-b/last.ckpt --limit 12
    python -m bench.checkpoints models/ltc-image-e8.safetensors ~/.cache/ltcodec/image-e8/last.ckpt

For deciding between two training runs forked from one checkpoint (an A/B of a recipe change) without
exporting either: rates are the ideal box-code bits of y and z under the float entropy model (what
training descends; within about 1% of file sizes from quality 2 up, `latent-usage.md`), PSNR on 8-bit
RGB of whole images, a checkpoint's moving average of the weights.  ``--entropy-from`` puts one file's
entropy model (hyper-analysis, hyper-synthesis, hyper-latent density, context) on the transforms of
every model after the first, to measure what a refit bought::

    python -m bench.checkpoints after-refit.ckpt after-refit.ckpt --entropy-from before-refit.ckpt

Prints a Markdown table; ``--json`` also writes one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ltcodec.image_model import LatticeHyperprior
from ltcodec.training.image import ENTROPY_PARTS, evaluate

from .bdrate import bd_rate_rows
from .host import machine
from .latent_usage import first_images, load_network


def with_entropy_model(net: LatticeHyperprior, donor: LatticeHyperprior) -> LatticeHyperprior:
    """``net`` with ``donor``'s entropy model (the parts a fit trains alone)."""
    state = net.state_dict()
    prefixes = tuple(f"{name}." for name in ENTROPY_PARTS)
    state.update({k: v for k, v in donor.state_dict().items() if k.startswith(prefixes)})
    net.load_state_dict(state)
    return net


def compare(nets: list[LatticeHyperprior], images: list[np.ndarray]) -> list[dict]:
    """Rows per model: its curve and its BD-rate (%) against the first model's curve, over all qualities
    and without quality 1: the classical codecs' curves start near 25 dB, above quality 1 (about 21.5
    dB on Kodak), so the BD-rate against WebP sees qualities 2–8 (and quality 1 only through the fitted
    curve's shape)."""
    out = [{"rows": evaluate(net, images)} for net in nets]
    ref = out[0]["rows"]
    for entry in out:
        entry["bd_rate_vs_first"] = bd_rate_rows(ref, entry["rows"], 1)
        entry["bd_rate_vs_first_from_q2"] = bd_rate_rows(ref, entry["rows"], 2)
    return out


def report(names: list[str], results: list[dict], images: int, command: str, when: str) -> str:
    qualities = [r["quality"] for r in results[0]["rows"]]
    lines = [f"# Image models compared on {images} Kodak images", "",
             f"Command: `{command}` · {when} · {machine()}", "",
             "Ideal box-code bits of y and z per pixel and PSNR (8-bit RGB) per quality; BD-rate against the "
             "first model (negative = fewer bits), over all qualities and over qualities 2–8 (the range the "
             "classical codecs' curves share).", "",
             "| model | BD-rate | BD-rate q2–8 | " + " | ".join(f"q{q}" for q in qualities) + " |",
             "|---|---|---|" + "---|" * len(qualities)]
    percent = lambda bd: "–" if math.isnan(bd) else f"{bd:+.2f}%"
    for name, entry in zip(names, results):
        cells = " | ".join(f"{r['bpp']:.4f} bpp, {r['psnr']:.2f} dB" for r in entry["rows"])
        lines.append(f"| {name} | {percent(entry['bd_rate_vs_first'])} | "
                     f"{percent(entry['bd_rate_vs_first_from_q2'])} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", type=Path, nargs="+", help="model files (.safetensors) or training checkpoints")
    p.add_argument("--set", type=Path, default=Path("../shared/data/eval/images/kodak"))
    p.add_argument("--limit", type=int, default=6, help="the first N images of the set")
    p.add_argument("--entropy-from", type=Path, help="give every model after the first this file's entropy model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    files, images = first_images(args.set, args.limit)
    loaded = [load_network(path) for path in args.models]
    nets, names = [net for net, _ in loaded], [desc for _, desc in loaded]
    if args.entropy_from is not None:
        donor, donor_name = load_network(args.entropy_from)
        nets[1:] = [with_entropy_model(net, donor) for net in nets[1:]]
        names[1:] = [f"{name} with the entropy model of {donor_name}" for name in names[1:]]
    results = compare(nets, images)
    command = "python -m bench.checkpoints " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(names, results, len(images), command, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    print(text, end="")
    if args.json is not None:
        args.json.write_text(json.dumps({"models": [str(m) for m in args.models], "names": names,
                                         "images": [f.name for f in files], "results": results}, indent=1))


if __name__ == "__main__":
    main()
