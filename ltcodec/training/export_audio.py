"""Export a training checkpoint as a shipped audio model, measure it, write its model card.

    python -m ltcodec.training.export_audio --ckpt ~/.cache/ltcodec/audio-e8/last.ckpt

Writes ``models/<name>.safetensors`` (float transforms in fp16/fp32 as (1, k) Conv2d kernels, integer
h_s, frozen tables) and ``models/<name>.md``: architecture, parameters, data with durations, steps,
CPU hours, the bitrate of every quality and SI-SDR / spectral distance on the evaluation clips
(real .ltc files), and encode/decode speed.  The comparison with Opus and MP3 is ``python -m bench.audio``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from ..audio import DETAIL_FROM_KBPS, decode_audio, encode_audio
from ..audio_codec import AudioCodecModel, export_audio_model
from ..audio_model import AudioLatticeCodec, AudioModelConfig
from .audio import load_corpus, si_sdr
from .card import cpu_name, eval_records, history_line, learning_rate_line, progress_section, weights_line

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


def eval_table(model: AudioCodecModel, folder: Path, per_kind: int = 4) -> tuple[list[dict], dict]:
    """Per quality and set: actual kbps and SI-SDR of real files; speed on the music clips."""
    torch.set_num_threads(2)
    sets = {}
    for kind in ("speech", "music"):
        files = sorted((folder / kind).glob("*.flac"))[:per_kind]
        sets[kind] = [sf.read(f, dtype="float32", always_2d=True) for f in files]
    rows, enc_rtf, dec_rtf = [], [], []
    for q in range(1, model.qualities + 1):
        row = {"quality": q}
        for kind, clips in sets.items():
            bits = sdr = seconds = 0.0
            for x, rate in clips:
                t0 = time.perf_counter()
                data = encode_audio(x, rate, quality=q, model=model)
                t1 = time.perf_counter()
                y, _ = decode_audio(data, model=model)
                t2 = time.perf_counter()
                dur = len(x) / rate
                if kind == "music":
                    enc_rtf.append((t1 - t0) / dur)
                    dec_rtf.append((t2 - t1) / dur)
                y = y[:, None] if y.ndim == 1 else y
                bits += 8 * len(data)
                seconds += dur
                sdr += np.mean([si_sdr(x[:, c], y[:, c]) for c in range(x.shape[1])]) * dur
            row[f"{kind}_kbps"] = bits / seconds / 1000
            row[f"{kind}_si_sdr"] = sdr / seconds
        rows.append(row)
        print(json.dumps(row), flush=True)
    timing = {"encode_rtf_median": statistics.median(enc_rtf), "decode_rtf_median": statistics.median(dec_rtf),
              "threads": 2, "clips": {k: len(v) for k, v in sets.items()}}
    return rows, timing


def load_trained(ckpt: Path, ema: bool = False) -> tuple[AudioLatticeCodec, dict]:
    """The network of a training checkpoint (its moving-average weights with ``ema``, where it keeps
    them), and the checkpoint itself, which records in ``exported_weights`` which of the two it gave."""
    state = torch.load(ckpt, weights_only=False)
    net = AudioLatticeCodec(AudioModelConfig.from_dict(state["config"]))
    state["exported_weights"] = "ema" if ema and "ema" in state else "raw"
    net.load_state_dict(state["ema"] if state["exported_weights"] == "ema" else state["model"])
    return net, state


def corpus_hours(rate: int, folders: list[Path]) -> dict[str, float]:
    corpus = load_corpus(folders, rate)
    return {k: round(sum(len(s) for s in v) / rate / 3600, 2) for k, v in corpus.items()}


def training_metadata(state: dict) -> dict:
    """What a model file keeps of its run so that training can go on from it: step, CPU hours, the
    recipe's history and the dual variables of the per-quality rate targets (a run started without them
    re-converges from the default ladder, and the gains drift meanwhile)."""
    return {"train_step": state["step"], "train_cpu_hours": round(state.get("cpu_seconds", 0) / 3600, 2),
            "history": json.dumps(state.get("history", [])),
            "rate_weights": json.dumps({k: [round(float(v), 4) for v in state[k]] for k in ("log_weights", "rate_ema")})}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--name", default="ltc-audio-e8")
    p.add_argument("--out", type=Path, default=REPO / "models")
    p.add_argument("--eval", type=Path, default=SHARED / "eval" / "audio")
    p.add_argument("--data", type=Path, nargs="+",
                   default=[SHARED / "train" / "audio", Path.home() / ".cache" / "ltcodec-media"])
    p.add_argument("--raw", action="store_true", help="export the training weights, not their moving average")
    p.add_argument("--log", type=Path, help="the run's log.jsonl, for the card's training progress "
                   "(default: the one beside --ckpt)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)  # before the minutes of calibration, not after

    net, state = load_trained(args.ckpt, ema=not args.raw)
    config = net.config
    cal = []
    for f in sorted((args.data[0] / "music").glob("*.flac"))[:4] + sorted((args.data[0] / "speech").glob("*.flac"))[:4]:
        x, rate = sf.read(f, dtype="float32", always_2d=True)
        cal.append(soxr.resample(x.mean(axis=1), rate, config.sample_rate)[: 10 * config.sample_rate])
    path = args.out / f"{args.name}.safetensors"
    sha = export_audio_model(net, cal, path, args.name, extra_meta=training_metadata(state))
    print(f"wrote {path} sha256 {sha}")
    t0 = time.perf_counter()
    model = AudioCodecModel.from_file(path, args.name)
    load_s = time.perf_counter() - t0
    rows, timing = eval_table(model, args.eval)
    hours = corpus_hours(config.sample_rate, args.data)
    params = sum(p.numel() for p in net.parameters())
    progress = eval_records(args.log or args.ckpt.parent / "log.jsonl", state["step"])
    write_card(args.out / f"{args.name}.md", args.name, sha, config, params, state, rows, timing, load_s, path, hours,
               progress)


def write_card(path: Path, name: str, sha: str, config: AudioModelConfig, params: int, state: dict,
               rows: list[dict], timing: dict, load_s: float, weights: Path, hours: dict,
               progress: list[dict] = ()) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    cpu = cpu_name()
    widths = [config.channels * 2 ** i for i in range(len(config.strides) + 1)]
    lines = [
        f"# {name}", "",
        f"The default audio model of ltcodec. File `{weights.name}` ({weights.stat().st_size / 1e6:.1f} MB), "
        f"SHA-256 `{sha}`.", "",
        "## Architecture", "",
        f"* Waveform encoder g_a (SEANet/EnCodec \"ec\" layout, no recurrent layers): 7-tap conv, then per stage "
        f"one residual unit and a strided conv (strides {'·'.join(map(str, config.strides))}, widths "
        f"{'→'.join(map(str, widths))}), ELU; latent M = {config.M} channels at {config.frame_rate:g} frames/s "
        f"for {config.sample_rate // 1000} kHz mono. The decoder g_s mirrors it with transposed convolutions.",
        f"* Latent quantized on the **{config.lattice.upper()}** lattice in blocks of 8 consecutive channels per "
        "frame, after subtracting the predicted mean; coded with the box code.",
        f"* Temporal mean–scale hyperprior: h_a (3 convs, time /4) → z ({config.N} channels at "
        f"{config.frame_rate / 4:g} frames/s), factorized prior frozen into integer tables; h_s is an exact "
        "integer network with (1, k) kernels.",
        f"* One model for qualities 1–{len(config.target_kbps)}: per-quality log2 gains; each quality was trained "
        f"towards {', '.join(f'{k:g}' for k in config.target_kbps)} kbps (one channel) by adapting its rate weight.",
        "* Stereo is coded as mid and side through the same mono model; `--kbps` picks the quality.",
        f"* {params / 1e6:.2f} M parameters. Layers are trained as Conv1d and shipped as (1, k) Conv2d "
        "(faster on CPU, DESIGN-NOTES §4).", "",
        "## Training", "",
        "* Recipe: `python -m ltcodec.training.audio` (random 1.07 s crops at 24 kHz, batch 8 = 4 speech + 4 "
        "music, random level −12…+6 dB, Adam from 3·10⁻⁴ (changes below; the per-quality gains at 10× the "
        "rate since step 3,269); loss = multi-resolution STFT distance (log magnitude + "
        "spectral convergence, windows 64…2048) + 10 · waveform L1 + w_q · kbps / 10).",
        f"* Data (mid and side signals of stereo files count separately): speech {hours.get('speech', 0):.2f} h, "
        f"music {hours.get('music', 0):.2f} h — `../shared/data/train/audio` plus the Debian media corpus of "
        "`../shared/tools/fetch-debian-media.sh` as far as it had arrived.",
        f"* Steps: {state['step']:,}; CPU time: {state.get('cpu_seconds', 0) / 3600:.1f} CPU-hours "
        f"({cpu}, 2 cores shared with other jobs).",
        weights_line(state),
        *learning_rate_line(state),
        *[history_line(h) for h in state.get("history", [])],
        "",
        "## Measured (real .ltc files)", "",
        f"Measured {stamp} by `python -m ltcodec.training.export_audio --ckpt …` on {cpu}, 2 threads, on the first "
        f"{timing['clips']['speech']} speech and {timing['clips']['music']} music clips of "
        "`../shared/data/eval/audio`.", "",
        "| quality | speech kbps | speech SI-SDR dB | music kbps (stereo) | music SI-SDR dB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['quality']} | {r['speech_kbps']:.2f} | {r['speech_si_sdr']:.2f} | "
                     f"{r['music_kbps']:.2f} | {r['music_si_sdr']:.2f} |")
    lines += [
        "",
        f"Speed, 48 kHz stereo, 2 threads (median over clips and qualities): encode "
        f"{timing['encode_rtf_median']:.3f}× real time, decode {timing['decode_rtf_median']:.3f}× real time. "
        f"Model loading: {load_s * 1000:.0f} ms.", "",
        "Perceptual comparison with Opus and MP3 (ViSQOL, PESQ-WB, STOI): `bench/results/audio.md`.", "",
        *status_section(state["step"], rows, config),
        *audio_progress(progress),
    ]
    path.write_text("\n".join(lines))


def audio_progress(records: list[dict]) -> list[str]:
    """The card's training-progress section: the periodic eval on held-out clips, every few thousand steps."""
    kept = [r for r in records if r["step"] % 2000 == 0 or r is records[-1]]
    if not kept:
        return []
    return ["## Training progress", "", *progress_section(
        kept, (1, 3, 5, 8), lambda r: f"{r['kbps']:.1f} kbps, {r['si_sdr']:.1f} dB",
        "Periodic eval on 2 speech and 2 music clips of `../shared/data/eval/audio` (6 s, mono 24 kHz; kbps "
        "and SI-SDR)")]


def status_section(step: int, rows: list[dict], config: AudioModelConfig) -> list[str]:
    """What the model is and is not yet good for, from its measured table."""
    top = rows[-1]
    return [
        "## Status", "",
        f"An early checkpoint ({step:,} steps), shipped so that the audio path works end to end out of the box; "
        f"it is **not yet a competitive codec** (see the comparison above). At quality {top['quality']} it "
        f"reaches speech SI-SDR {top['speech_si_sdr']:.1f} dB and music SI-SDR {top['music_si_sdr']:.1f} dB; the "
        f"{config.sample_rate // 1000} kHz model drops everything above {config.sample_rate // 2000} kHz. Its "
        f"highest quality spends only ≈ {top['speech_kbps']:.0f} kbps on mono speech and ≈ "
        f"{top['music_kbps']:.0f} kbps on stereo music; from {DETAIL_FROM_KBPS:g} kbps per channel `--kbps` codes the base lower "
        "and adds the codec's detail layer (formats/ltc-v1.md §9.7), which is what reaches higher bitrates. "
        "Training continues from `~/.cache/ltcodec/audio-e8/last.ckpt` (`python -m "
        "ltcodec.training.audio --out ~/.cache/ltcodec/audio-e8 --resume --media <corpus folders>`).", "",
    ]


if __name__ == "__main__":
    main()
