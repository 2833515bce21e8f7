"""The audio model's own ceiling: each quality coded, against the same latent left unquantized.

    python -m bench.audio_ceiling --weights models/ltc-audio-e8.safetensors
    python -m bench.audio_ceiling --weights ~/.cache/ltcodec/audio-e8/last.ckpt   # a checkpoint's average

When the unquantized latent decodes barely better than the coded one, quantization is not what limits
quality: more bits cannot buy more, and only better transforms can.  Metrics as in ``bench.audio``
(ViSQOL in speech mode at 16 kHz or audio mode at 48 kHz, SI-SDR) on the mono mix of each clip, which
the model codes at its own rate; bitrates are the ideal box-code bits of that mono signal.  The MP3 and
Opus rows at 24 kbps, from the committed ``bench/results/audio.json``, are there for scale.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soxr
import torch

from ltcodec.audio_model import AudioLatticeCodec
from ltcodec.training.audio import HYPER_STRIDE
from ltcodec.training.export_audio import load_trained

from .audio import DATA, Metrics, load_set
from .host import machine

RESULTS = Path(__file__).parent / "results"
REFERENCE_KBPS = 24


def load_network(path: Path) -> tuple[AudioLatticeCodec, str]:
    """The float network of a model file or of a training checkpoint (its moving average), described."""
    if path.suffix == ".safetensors":
        from ltcodec.training.audio import load_init

        config, weights, record = load_init(path)
        net = AudioLatticeCodec(config)
        net.load_state_dict({k: v for k, v in weights.items() if k in net.state_dict()})
        return net, f"`{path.name}` ({record['step']:,} steps)"
    net, state = load_trained(path, ema=True)
    kind = "moving average" if state["exported_weights"] == "ema" else "training weights"
    return net, f"checkpoint `{path.name}` at step {state['step']:,} ({kind})"


@torch.no_grad()
def measure(net: AudioLatticeCodec, kind: str, clips, metrics) -> dict:
    """Per quality (``rows``): mean kbps and the metrics of the coded and of the unquantized
    reconstruction; and the ViSQOL of the clips only resampled to the model's rate and back
    (``visqol_resampled``, None when no clip has another rate): the best any model at that rate can do."""
    net.eval()
    rate = net.config.sample_rate
    unit = net.config.hop * HYPER_STRIDE
    acc: dict[int, dict[str, list[float]]] = {q: {} for q in range(net.qualities)}
    band: list[float] = []
    for _, x, clip_rate in clips:
        mono = x.mean(axis=1).astype(np.float32)
        ref = mono.astype(np.float64)
        sig = soxr.resample(mono, clip_rate, rate).astype(np.float32) if clip_rate != rate else mono
        n = len(sig) // unit * unit
        if n == 0:
            continue
        xt = torch.from_numpy(sig[:n])[None, None]
        if clip_rate != rate:  # the model's rate alone: the original through the resampler and back
            back = soxr.resample(sig.astype(np.float64), rate, clip_rate)[: len(mono)]
            band.append(metrics(kind, ref[: len(back), None], back[:, None], clip_rate)["visqol"])
        y = net.g_a(xt)
        for q in range(net.qualities):
            quality = torch.tensor([float(q)])
            out = net.estimate(xt, quality)
            enc_g, dec_g = net.gains(quality)
            a = acc[q]
            a.setdefault("kbps", []).append(float(out["bits_y"] + out["bits_z"]) / (n / rate) / 1000)
            for tag, x_hat in (("coded", out["x_hat"]), ("unquantized", net.g_s(y * enc_g * dec_g))):
                deg = x_hat[0, 0].numpy().astype(np.float64)
                if clip_rate != rate:
                    deg = soxr.resample(deg, rate, clip_rate)
                k = min(len(ref), len(deg))
                m = metrics(kind, ref[:k, None], deg[:k, None], clip_rate)
                a.setdefault(f"visqol_{tag}", []).append(m["visqol"])
                a.setdefault(f"si_sdr_{tag}", []).append(m["si_sdr"])
    rows = [{"quality": q + 1, **{k: float(np.mean(v)) for k, v in acc[q].items()}} for q in acc if acc[q]]
    return {"rows": rows, "visqol_resampled": float(np.mean(band)) if band else None}


def references(path: Path = RESULTS / "audio.json", kbps: float = REFERENCE_KBPS) -> dict[str, dict]:
    """The committed MP3 and Opus points nearest ``kbps`` per set, if the audio bench has been run."""
    if not path.exists():
        return {}
    results = json.loads(path.read_text())["results"]
    out: dict[str, dict] = {}
    for kind, codecs in results.items():
        for codec in ("mp3", "opus"):
            rows = codecs.get(codec) or []
            if rows:
                best = min(rows, key=lambda r: abs(r["kbps"] - kbps))
                out.setdefault(kind, {})[codec] = {"kbps": best["kbps"], "visqol": best["visqol"]}
    return out


def report(sets: dict[str, dict], refs: dict, what: str, counts: dict, command: str, stamp: str,
           rate_khz: float = 24) -> str:
    lines = [f"# The audio model's ceiling: {what}", "",
             f"Command: `{command}` · {stamp} · {machine()}", "",
             "Per quality: ideal box-code kbps of the mono mix, and ViSQOL / SI-SDR (dB) of the coded latent "
             "and of the same latent unquantized (g_s of g_a's output times both gains).  Where the two "
             "columns agree, the transforms, not the bits, set the quality.", ""]
    for kind, measured in sets.items():
        rows = measured["rows"]
        lines += [f"## {kind} ({counts[kind]} clip{'s' if counts[kind] != 1 else ''})", "",
                  "| quality | kbps | ViSQOL | ViSQOL unquantized | SI-SDR | SI-SDR unquantized |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['quality']} | {r['kbps']:.1f} | {r['visqol_coded']:.2f} | "
                         f"{r['visqol_unquantized']:.2f} | {r['si_sdr_coded']:.1f} | {r['si_sdr_unquantized']:.1f} |")
        if measured["visqol_resampled"] is not None:
            lines.append(f"\nThe originals only resampled to the model's {rate_khz:g} kHz and back: ViSQOL "
                         f"{measured['visqol_resampled']:.2f} (the bandwidth's own ceiling).")
        for codec, ref in refs.get(kind, {}).items():
            lines.append(f"\nFor scale, {codec.upper() if codec == 'mp3' else codec.capitalize()} in "
                         f"`audio.json`: ViSQOL {ref['visqol']:.2f} at {ref['kbps']:.1f} kbps (all clips of the set).")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=Path("models/ltc-audio-e8.safetensors"))
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--sets", nargs="+", default=["speech", "music"], choices=["speech", "music"])
    p.add_argument("--limit", type=int, default=8, help="the first N clips of each set")
    p.add_argument("--out", type=Path, default=RESULTS / "audio-ceiling")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    net, what = load_network(args.weights.expanduser())
    metrics = Metrics()
    sets, counts = {}, {}
    for kind in args.sets:
        clips = load_set(args.data / kind, args.limit)
        if not clips:
            raise SystemExit(f"no audio clips in {args.data / kind}")
        print(f"{kind}: {len(clips)} clips × {net.qualities} qualities", file=sys.stderr, flush=True)
        sets[kind], counts[kind] = measure(net, kind, clips, metrics), len(clips)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m bench.audio_ceiling " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(sets, references(), what, counts, command.strip(), stamp, net.config.sample_rate / 1000)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"weights": what, "sets": sets, "date": stamp}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
