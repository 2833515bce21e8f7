"""How a training run is doing, from the periodic evals in its log (no model is loaded, nothing is coded).

    python -m bench.progress ~/.cache/ltcodec/image-e8-t128/log.jsonl ~/.cache/ltcodec/image-e8-deep/log.jsonl
    python -m bench.progress ~/.cache/ltcodec/audio-e8/log.jsonl --since 60000

Several logs are read as one history (a run forked from another keeps its own log): where two hold the
same step, the later log's record is the one shown.  The moving average's eval is read by default,
because that is what an export ships; ``--weights training`` reads the raw weights' (noisier: ±5% on
audio from one eval to the next), and ``--signals train`` an image run's eval on a few of its training
crops.

* Image logs (rows of bpp and PSNR on a few Kodak images): BD-rate of each eval against the anchor's —
  over all qualities and over qualities 2–8 — and PSNR at the top quality.
* Audio logs (rows of kbps and multi-resolution STFT distance): the mean STFT distance over qualities
  5–8, where the transforms rather than the bits set the quality, and its change against the anchor.

The anchor is the first eval shown unless ``--anchor STEP`` names another.  These are screening numbers
on a handful of signals; decisions to export rest on the repo's benches (``bench.checkpoints``,
``bench.audio``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from .bdrate import bd_rate_rows
from .host import machine

TOP_QUALITIES = (5, 6, 7, 8)


def read_evals(logs: list[Path], weights: str = "ema", signals: str = "eval") -> dict[int, list[dict]]:
    """Step → the eval rows (one per quality) of those weights on those signals, over the logs in order.

    ``signals`` "train" reads the image runs' eval on a few training crops (kept for the moving average
    only), which tells a model that memorizes its crops from one that has stopped learning.  Evals
    without the measure compared (an audio run's evals restored from a model card, which lists no STFT
    distance) are left out.
    """
    if signals == "train":
        key = "eval_train_ema"
    else:
        key = "eval_ema" if weights == "ema" else "eval"
    evals = {}
    for log in logs:
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if key in rec and rec[key] and all("psnr" in r or "stft" in r for r in rec[key]):
                evals[rec["step"]] = sorted(rec[key], key=lambda r: r["quality"])
    return dict(sorted(evals.items()))


def is_image(rows: list[dict]) -> bool:
    return "psnr" in rows[0]


def image_row(anchor: list[dict], rows: list[dict]) -> dict:
    """BD-rate (%) against the anchor over all qualities and over 2–8, and PSNR at the top quality."""
    return {"bd_rate_all": bd_rate_rows(anchor, rows, 1), "bd_rate_q2": bd_rate_rows(anchor, rows, 2),
            "top_psnr": rows[-1]["psnr"], "top_bpp": rows[-1]["bpp"]}


def top_mean(rows: list[dict], key: str) -> float:
    """Mean of ``key`` over the qualities where the transforms, not the bits, set the quality."""
    top = [r[key] for r in rows if r["quality"] in TOP_QUALITIES]
    return sum(top) / len(top) if top else math.nan


def audio_row(anchor: list[dict], rows: list[dict]) -> dict:
    stft = top_mean(rows, "stft")
    return {"top_stft": stft, "vs_anchor": (stft / top_mean(anchor, "stft") - 1) * 100,
            "top_kbps": top_mean(rows, "kbps")}


def report(evals: dict[int, list[dict]], anchor_step: int) -> str:
    anchor = evals[anchor_step]
    if is_image(anchor):
        lines = [f"BD-rate of each eval against step {anchor_step:,}'s (negative: fewer bits):", "",
                 "| step | BD-rate, all qualities | BD-rate, q2–8 | q8 PSNR (dB) | q8 bpp |", "|---|---|---|---|---|"]
        for step, rows in evals.items():
            r = image_row(anchor, rows)
            lines.append(f"| {step:,} | {r['bd_rate_all']:+.2f}% | {r['bd_rate_q2']:+.2f}% | "
                         f"{r['top_psnr']:.2f} | {r['top_bpp']:.3f} |")
    else:
        lines = [f"Mean STFT distance over qualities 5–8 (lower is better), against step {anchor_step:,}'s:", "",
                 "| step | STFT q5–8 | vs anchor | kbps q5–8 |", "|---|---|---|---|"]
        for step, rows in evals.items():
            r = audio_row(anchor, rows)
            lines.append(f"| {step:,} | {r['top_stft']:.4f} | {r['vs_anchor']:+.2f}% | {r['top_kbps']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.progress", description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+", type=Path, help="training logs (log.jsonl), oldest run first")
    p.add_argument("--since", type=int, default=0, help="show evals from this step on")
    p.add_argument("--anchor", type=int, help="the step to compare against (default: the first shown)")
    p.add_argument("--weights", choices=("ema", "training"), default="ema")
    p.add_argument("--signals", choices=("eval", "train"), default="eval",
                   help="the eval signals (default) or, for image runs, the training crops (moving average)")
    p.add_argument("--out", type=Path, help="also write the table to this Markdown file, with command, date, machine")
    args = p.parse_args(argv)
    for log in args.logs:
        if not log.is_file():
            raise SystemExit(f"no such log: {log}")
    evals = {s: rows for s, rows in read_evals(args.logs, args.weights, args.signals).items() if s >= args.since}
    if not evals:
        raise SystemExit("no periodic evals in those logs" + (f" from step {args.since:,}" if args.since else ""))
    anchor = next(iter(evals)) if args.anchor is None else args.anchor
    if anchor not in evals:
        raise SystemExit(f"no eval at step {anchor:,}; evals at {', '.join(f'{s:,}' for s in evals)}")
    text = report(evals, anchor)
    print(text, end="")
    if args.out is not None:
        command = "python -m bench.progress " + " ".join(sys.argv[1:] if argv is None else argv)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        args.out.write_text(f"# Training progress from the logs' periodic evals\n\nCommand: `{command}` · {when} · "
                            f"{machine()}\n\n{text}")


if __name__ == "__main__":
    main()
