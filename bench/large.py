"""Peak memory and time of encoding and decoding a large image (issue target: 24 MP within 4 GiB).

    python -m bench.large --megapixels 24

Each step runs in a fresh process so that its peak resident set size (ru_maxrss) is its own.  The test
image is synthetic (smooth colour fields, edges and noise), made here, so no data is needed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from .host import machine

RESULTS = Path(__file__).parent / "results"

_CHILD = r"""
import resource, sys, time
t = time.perf_counter()
from ltcodec.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print("RESULT", time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def make_image(width: int, height: int, path: Path) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 90 * np.sin(xx / 97.0) * np.cos(yy / 131.0)
    g = 128 + 90 * np.cos((xx + yy) / 211.0)
    b = np.where(((xx // 64) + (yy // 64)) % 2 == 0, 170.0, 80.0)
    img = np.stack([r, g, b], -1) + rng.normal(0, 3, (height, width, 3)).astype(np.float32)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)


def run(args: list[str]) -> tuple[float, float]:
    p = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr)
    line = [l for l in p.stderr.splitlines() if l.startswith("RESULT")][-1].split()
    return float(line[1]), int(line[2]) / 1024  # seconds, MiB (ru_maxrss is KiB on Linux)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--megapixels", type=float, default=24.0)
    ap.add_argument("--quality", type=float, default=4.0)
    a = ap.parse_args(argv)
    w = int(round((a.megapixels * 1e6 * 1.5) ** 0.5))
    h = int(round(a.megapixels * 1e6 / w))
    with tempfile.TemporaryDirectory() as d:
        src, enc, dec = Path(d) / "big.png", Path(d) / "big.ltc", Path(d) / "out.png"
        make_image(w, h, src)
        t_enc, m_enc = run(["encode", str(src), str(enc), "-q", str(a.quality)])
        t_dec, m_dec = run(["decode", str(enc), str(dec)])
        size = enc.stat().st_size
        ok = Image.open(dec).size == (w, h)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rec = {"width": w, "height": h, "quality": a.quality, "bytes": size, "encode_s": t_enc, "encode_peak_mib": m_enc,
           "decode_s": t_dec, "decode_peak_mib": m_dec, "decoded_size_ok": ok, "date": stamp,
           "machine": machine(), "command": f"python -m bench.large --megapixels {a.megapixels:g}"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "large-image.json").write_text(json.dumps(rec, indent=1) + "\n")
    limit = 4096
    (RESULTS / "large-image.md").write_text("\n".join([
        "# Large image: peak memory and time", "",
        f"Command: `{rec['command']}` · {stamp} · {rec['machine']}", "",
        f"{w}×{h} ({w * h / 1e6:.1f} MP) synthetic image, quality {a.quality:g}, {size} bytes.", "",
        "| step | wall time (s) | peak RSS (MiB) | within 4 GiB |", "|---|---|---|---|",
        f"| encode | {t_enc:.1f} | {m_enc:.0f} | {'yes' if m_enc < limit else '**no**'} |",
        f"| decode | {t_dec:.1f} | {m_dec:.0f} | {'yes' if m_dec < limit else '**no**'} |", ""]))
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
