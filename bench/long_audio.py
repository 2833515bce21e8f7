"""Peak memory and time of encoding and decoding a long recording (target: 1 h of 48 kHz stereo in 2 GiB).

    python -m bench.long_audio --minutes 60

The recording is synthetic (chords, noise bursts and silence, different in each channel) and is
written here as 16-bit FLAC in blocks, so no data is needed and the writer itself stays small.  Each
step is the ``ltcodec`` command in a fresh process, so its peak resident set size is its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from ltcodec.audio import DETAIL_FROM_KBPS

from .host import machine
from .large import RESULTS, run


def make_recording(path: Path, minutes: float, rate: int = 48000) -> None:
    rng = np.random.default_rng(0)
    block = rate * 10
    total = int(minutes * 60 * rate)
    with sf.SoundFile(path, "w", rate, 2, "PCM_16", format="FLAC") as f:
        for start in range(0, total, block):
            n = min(block, total - start)
            t = (start + np.arange(n)) / rate
            k = start // block
            freqs = 110 * 2 ** (rng.integers(0, 24, 3) / 12)
            left = sum(0.12 * np.sin(2 * np.pi * fr * t) for fr in freqs)
            right = sum(0.1 * np.sin(2 * np.pi * fr * 1.5 * t + 0.3) for fr in freqs)
            noise = rng.standard_normal((n, 2)) * (0.05 if k % 3 == 1 else 0.005)
            sig = np.stack([left, right], 1) + noise
            if k % 7 == 6:
                sig[: n // 2] = 0
            f.write(sig.astype(np.float32))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--kbps", type=float, default=24.0)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        src, ltc, wav = Path(d) / "long.flac", Path(d) / "long.ltc", Path(d) / "long.wav"
        make_recording(src, a.minutes)
        enc_s, enc_mib = run(["encode", str(src), str(ltc), "--kbps", str(a.kbps)])
        dec_s, dec_mib = run(["decode", str(ltc), str(wav)])
        info = sf.info(str(wav))
        assert info.frames == sf.info(str(src)).frames and info.channels == 2
        seconds = a.minutes * 60
        result = {
            "minutes": a.minutes, "target_kbps": a.kbps, "kbps": ltc.stat().st_size * 8 / seconds / 1000,
            "encode_seconds": enc_s, "encode_peak_mib": enc_mib, "decode_seconds": dec_s, "decode_peak_mib": dec_mib,
            "encode_rtf": enc_s / seconds, "decode_rtf": dec_s / seconds,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "command": "python -m bench.long_audio " + " ".join(argv if argv is not None else sys.argv[1:]),
        }
    RESULTS.mkdir(exist_ok=True)
    runs = _saved_runs()
    runs = sorted([r for r in runs if r["target_kbps"] != a.kbps] + [result], key=lambda r: r["target_kbps"])
    (RESULTS / "long-audio.json").write_text(json.dumps({"runs": runs}, indent=1))
    text = report(runs)
    (RESULTS / "long-audio.md").write_text(text)
    print(text)


def _saved_runs() -> list[dict]:
    """The committed runs, one per target bitrate (a file holding one flat run is read as such)."""
    path = RESULTS / "long-audio.json"
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    return saved["runs"] if "runs" in saved else [saved]


def report(runs: list[dict]) -> str:
    lines = [
        "# Long audio: memory and time", "",
        "Synthetic 48 kHz stereo (16-bit FLAC), `ltcodec encode --kbps K` then `ltcodec decode`, each in a fresh "
        "process (peak RSS from ru_maxrss, model loading included).  Above "
        f"{2 * DETAIL_FROM_KBPS:g} kbps a stereo file carries a detail layer (formats/ltc-v1.md §9.7).", "",
        "| minutes | target kbps | actual kbps | step | seconds | × real time | peak RSS MiB | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        for step in ("encode", "decode"):
            lines.append(f"| {r['minutes']:g} | {r['target_kbps']:g} | {r['kbps']:.2f} | {step} | {r[step + '_seconds']:.1f} "
                         f"| {r[step + '_rtf']:.3f} | {r[step + '_peak_mib']:.0f} | ≤ 2048 MiB |")
    lines.append("")
    for r in runs:
        lines.append(f"- {r['target_kbps']:g} kbps: measured {r['date']} on {r['machine']}; command `{r['command']}`.")
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    main()
