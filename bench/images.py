"""Image benchmark: ltcodec against the codecs users would pick instead, on the same images.

    python -m bench.images --set ../shared/data/eval/images/kodak
    python -m bench.images --set DIR --codecs ltcodec webp --limit 4     # a subset

For every codec and setting: bits per pixel from the bytes written, PSNR on 8-bit RGB and MS-SSIM per
image, averaged per setting; BD-rate (piecewise cubic, overlapping range) of every codec against every
other and against published Kodak curves (CompressAI's results, stored under ../shared/data/reference);
encode/decode wall time per image (median) at the setting nearest 0.5 bpp; a PSNR–bpp plot; and a crop
of one image near 0.25 bpp per codec.  Results go to bench/results/images-<name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .bdrate import bd_rate, bd_rate_segments
from .host import machine
from .codecs import THREADS, all_codecs
from .metrics import ms_ssim, psnr
from .plots import psnr_bpp_axes, save

RESULTS = Path(__file__).parent / "results"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference" / "kodak"
REFERENCE_CURVES = {
    "BPG 4:4:4 (published)": "bpg_444_x265_ycbcr.json",
    "VTM (published)": "vtm.json",
    "Ballé 2018 hyperprior (published)": "compressai-bmshj2018-hyperprior_mse_cpu.json",
}


def _progress(iterable, total, desc):
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)
    except ImportError:
        return iterable


def load_set(folder: Path, limit: int | None) -> list[tuple[str, np.ndarray]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".ppm", ".bmp"))
    if limit:
        files = files[:limit]
    if not files:
        raise SystemExit(f"no images in {folder}")
    return [(p.name, np.asarray(Image.open(p).convert("RGB"))) for p in files]


def measure(codec, images) -> list[dict]:
    """One row per setting: averages over the images, plus the per-image timings."""
    rows = []
    for setting in _progress(codec.settings, len(codec.settings), codec.name):
        bpps, psnrs, ssims, enc, dec = [], [], [], [], []
        for _, rgb in images:
            r = codec.run(rgb, setting)
            h, w, _ = rgb.shape
            bpps.append(8 * r.nbytes / (h * w))
            psnrs.append(psnr(rgb, r.decoded))
            ssims.append(ms_ssim(rgb, r.decoded))
            enc.append(r.encode_s)
            dec.append(r.decode_s)
        rows.append({"setting": setting, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs)),
                     "ms_ssim": float(np.mean(ssims)), "encode_s_median": float(np.median(enc)),
                     "decode_s_median": float(np.median(dec))})
    return rows


def reference_curves() -> dict[str, dict]:
    out = {}
    for label, fname in REFERENCE_CURVES.items():
        p = REFERENCE / fname
        if p.exists():
            r = json.loads(p.read_text())["results"]
            out[label] = {"bpp": r["bpp"], "psnr": r["psnr-rgb"], "source": f"CompressAI results/image/kodak/{fname}"}
    return out


def crop_figure(name: str, rgb: np.ndarray, codecs, path: Path, target: float = 0.25, box: int = 192) -> None:
    """The same crop of one image from every codec near ``target`` bpp, side by side, labelled."""
    h, w, _ = rgb.shape
    y0, x0 = (h - box) // 2, (w - box) // 2
    tiles = [("original", rgb)]
    for codec in codecs:
        best = None
        for s in codec.settings:
            r = codec.run(rgb, s)
            bpp = 8 * r.nbytes / (h * w)
            if best is None or abs(math.log(bpp / target)) < abs(math.log(best[0] / target)):
                best = (bpp, r.decoded)
        tiles.append((f"{codec.name} {best[0]:.2f} bpp", best[1]))
    scale = 2
    fig = Image.new("RGB", (len(tiles) * (box * scale + 8), box * scale + 24), "white")
    draw = ImageDraw.Draw(fig)
    for i, (label, img) in enumerate(tiles):
        tile = Image.fromarray(img[y0:y0 + box, x0:x0 + box]).resize((box * scale, box * scale), Image.NEAREST)
        fig.paste(tile, (i * (box * scale + 8), 22))
        draw.text((i * (box * scale + 8) + 4, 4), label, fill="black")
    fig.save(path)


def keep_previous(old: dict, rerun: Sequence[str], model_of: Callable[[str], str | None]) -> tuple[dict, list[str]]:
    """The codecs of an earlier run to keep beside a rerun of some: all but the rerun ones and those whose
    recorded model (``model_sha256``) is not the one ``model_of(name)`` would run now — or who recorded
    none where a model runs now, so cannot be shown to be of it — so that every row of a report is of the
    current model.  Also returns the names dropped for that."""
    kept, dropped = {}, []
    for name, v in old.items():
        if name in rerun:
            continue
        if v.get("model_sha256") != model_of(name):  # another model, or none recorded where one runs now
            dropped.append(name)
            continue
        kept[name] = v
    return kept, dropped


def where_lost(curves: dict[str, list[dict]], anchor: str = "webp") -> list[str]:
    """Report lines: the PSNR BD-rate of each ltcodec row against ``anchor`` cut at its own points
    (:func:`bd_rate_segments`): which part of the range costs how many bits, i.e. which qualities to
    improve first."""
    lines = []
    for n in (n for n in curves if n.startswith("ltcodec") and anchor in curves):
        a, t = curves[anchor], curves[n]
        pieces = bd_rate_segments([r["bpp"] for r in a], [r["psnr"] for r in a],
                                  [r["bpp"] for r in t], [r["psnr"] for r in t])
        if not pieces:
            continue
        logs = [p["share"] * math.log(p["ratio"]) for p in pieces]  # they add up to log(1 + BD-rate)
        whole = sum(logs)
        total = math.exp(whole) - 1
        lines += ["", f"## Where the BD-rate of {n} against {anchor} comes from", "",
                  f"The BD-rate ({total * 100:+.1f}%) averages the log of the bits ratio over the PSNR range both "
                  f"curves cover ({pieces[0]['from']:.2f}–{pieces[-1]['to']:.2f} dB); cut at {n}'s own points, "
                  "each piece's share of that range and its mean ratio of bits at equal PSNR, and what the piece "
                  "adds to the BD-rate's log:", "",
                  f"| PSNR (dB) | share of the range | {n} bits / {anchor} bits | share of the log |",
                  "|---|---|---|---|"]
        lines += [f"| {p['from']:.2f}–{p['to']:.2f} | {p['share'] * 100:.0f}% | {p['ratio']:.3f} | "
                  + (f"{g / whole * 100:+.0f}% |" if whole else "– |") for p, g in zip(pieces, logs)]
    return lines


def write_report(name: str, folder: Path, results: dict, skipped: dict, refs: dict, command: str,
                 seconds: float, images: int) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    curves = {k: v["rows"] for k, v in results.items()}
    labels = {k: v["label"] for k, v in results.items()}
    names = list(curves)

    def psnr(r: dict) -> float:
        return r["psnr"]

    def ssim_db(r: dict) -> float:
        return -10 * math.log10(max(1 - r["ms_ssim"], 1e-10))

    def bd_of(anchor: list[dict], test: list[dict], score) -> float:
        return bd_rate([r["bpp"] for r in anchor], [score(r) for r in anchor],
                       [r["bpp"] for r in test], [score(r) for r in test])

    bd = {a: {b: bd_of(curves[a], curves[b], psnr) for b in names} for a in names}
    bd_ssim = {a: {b: bd_of(curves[a], curves[b], ssim_db) for b in names} for a in names}
    # A published reference curve is a pair of lists, not rows.
    bd_ref = {n: {ref: bd_of([{"bpp": b, "psnr": q} for b, q in zip(c["bpp"], c["psnr"])], curves[n], psnr)
                  for ref, c in refs.items()} for n in names}
    meta = {"command": command, "date": stamp, "machine": machine(), "threads": THREADS, "images": images,
            "set": str(folder), "seconds": seconds}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"images-{name}.json").write_text(json.dumps(
        {"meta": meta, "codecs": results, "skipped": skipped, "bd_rate": bd, "bd_rate_ms_ssim": bd_ssim,
         "bd_rate_vs_reference": bd_ref,
         "references": refs}, indent=1) + "\n")

    lines = [f"# Images: {name}", "", f"Command: `{command}` · {stamp} · {machine()} · {images} images · "
             f"{seconds / 60:.1f} min", "",
             "Bits per pixel from file bytes; PSNR on 8-bit RGB and MS-SSIM per image, averaged per setting.", ""]
    if skipped:
        lines += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()), ""]
    lines += ["Measured (each codec's own run; earlier runs' rows are kept when one codec is rerun):", ""]
    lines += [f"- {labels[n]}: `{results[n].get('measured', {}).get('command', command)}` · "
              f"{results[n].get('measured', {}).get('date', stamp)}" + (f" · {results[n]['note']}" if results[n].get("note") else "")
              for n in names]
    lines.append("")
    lines += ["## BD-rate (%, PSNR), row codec against column anchor; negative = fewer bits", "",
              "| codec | " + " | ".join(names) + " | " + " | ".join(refs) + " |",
              "|---|" + "---|" * (len(names) + len(refs))]
    for a in names:
        cells = [f"{bd[b][a]:+.1f}" if not math.isnan(bd[b][a]) else "–" for b in names]
        cells += [f"{bd_ref[a][r]:+.1f}" if not math.isnan(bd_ref[a][r]) else "–" for r in refs]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += where_lost(curves)
    lines += ["", "## BD-rate (%, MS-SSIM in dB = −10·log10(1 − MS-SSIM)), row codec against column anchor", "",
              "| codec | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for a in names:
        lines.append(f"| {a} | " + " | ".join(f"{bd_ssim[b][a]:+.1f}" if not math.isnan(bd_ssim[b][a]) else "–"
                                              for b in names) + " |")
    lines += ["", f"## Timings near 0.5 bpp (median per image, {THREADS} threads where the codec uses threads)", "",
              "| codec | setting | bpp | encode (s) | decode (s) |", "|---|---|---|---|---|"]
    for n in names:
        r = min(curves[n], key=lambda r: abs(math.log(max(r["bpp"], 1e-6) / 0.5)))
        lines.append(f"| {n} | {r['setting']} | {r['bpp']:.3f} | {r['encode_s_median']:.3f} | {r['decode_s_median']:.3f} |")
    lines += ["", "## Curves", ""]
    for n in names:
        lines += [f"**{labels[n]}**", "", "| setting | bpp | PSNR | MS-SSIM |", "|---|---|---|---|"]
        lines += [f"| {r['setting']} | {r['bpp']:.4f} | {r['psnr']:.3f} | {r['ms_ssim']:.5f} |" for r in curves[n]]
        lines.append("")
    lines += [f"![PSNR vs bpp](images-{name}.png)", "", f"![crops near 0.25 bpp](images-{name}-crops.png)", ""]
    (RESULTS / f"images-{name}.md").write_text("\n".join(lines))

    fig, ax = psnr_bpp_axes((7.5, 5.5))
    for n in names:
        pts = sorted((r["bpp"], r["psnr"]) for r in curves[n] if r["bpp"] <= 2.2)
        ax.plot(*zip(*pts), "o-", ms=3, lw=2.2 if n == "ltcodec" else 1.2, label=labels[n])
    for ref, c in refs.items():
        pts = sorted((b, p) for b, p in zip(c["bpp"], c["psnr"]) if b <= 2.2)
        ax.plot(*zip(*pts), "--", lw=1, label=ref)
    save(fig, ax, f"{name} ({images} images)", RESULTS / f"images-{name}.png", legend_size=7)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", type=Path, required=True, help="folder of images")
    p.add_argument("--name", help="name of the results (default: the folder's name)")
    p.add_argument("--codecs", nargs="*", help="only these codecs (ltcodec jpeg420 jpeg444 webp avif jxl x265; "
                   "ltcodec-refine and ltcodec-refine10, the slow encodes, only when named)")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--model", help="ltcodec model name or path")
    p.add_argument("--crop-image", default="kodim23.png", help="image used for the crop figure")
    args = p.parse_args(argv)
    name = args.name or args.set.name
    images = load_set(args.set, args.limit)
    t0 = time.time()
    results, skipped = {}, {}
    codecs = [c for c in all_codecs(args.model) if (c.name in args.codecs if args.codecs else c.default)]
    previous = RESULTS / f"images-{name}.json"
    if args.codecs and previous.exists():
        # Keep the other codecs' measurements (same set, same settings) so one codec can be rerun alone.
        old = json.loads(previous.read_text())
        if old["meta"]["images"] == len(images):
            by_name = {c.name: c for c in all_codecs(args.model)}

            def model_of(name: str) -> str | None:
                codec = by_name.get(name)
                return None if codec is None or codec.available() else codec.model_sha256()

            results, dropped = keep_previous(old["codecs"], args.codecs, model_of)
            for k in dropped:
                recorded = old["codecs"][k].get("model_sha256")
                print(f"dropping {k}: measured with model {recorded[:12] + '…' if recorded else '(not recorded)'}, "
                      "not the current one", file=sys.stderr)
            for v in results.values():
                v.setdefault("measured", {"date": old["meta"]["date"], "command": old["meta"]["command"]})
    for codec in codecs:
        why = codec.available()
        if why:
            skipped[codec.name] = why
            print(f"skipping {codec.name}: {why}", file=sys.stderr)
            continue
        print(f"{codec.label}: {len(codec.settings)} settings × {len(images)} images", file=sys.stderr, flush=True)
        results[codec.name] = {"label": codec.label, "note": codec.note, "rows": measure(codec, images),
                               "model_sha256": codec.model_sha256(),
                               "measured": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                            "command": f"python -m bench.images {' '.join(argv or sys.argv[1:])}"}}
    crop_src = dict(images).get(args.crop_image, images[0][1])
    RESULTS.mkdir(parents=True, exist_ok=True)
    crop_codecs = [c for c in all_codecs(args.model) if c.name in results and not c.available()]
    crop_figure(name, crop_src, crop_codecs, RESULTS / f"images-{name}-crops.png")
    argv_s = " ".join(argv if argv is not None else sys.argv[1:])
    write_report(name, args.set, results, skipped, reference_curves(), f"python -m bench.images {argv_s}",
                 time.time() - t0, len(images))
    print(f"wrote {RESULTS / f'images-{name}.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
