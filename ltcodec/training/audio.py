"""Train the variable-rate lattice audio model.

    python -m ltcodec.training.audio --out ~/.cache/ltcodec/audio-e8
    python -m ltcodec.training.audio --out ~/.cache/ltcodec/audio-e8 --resume

Data: every FLAC/WAV/Ogg file under ``--data`` (the project's training audio) and ``--media`` (the
corpus that ``../shared/tools/fetch-debian-media.sh`` builds), resampled once to the model's rate with
soxr and cached as int16 ``.npy`` files that are memory-mapped, so tens of hours cost no RAM.  Stereo
files give their mid and side signals, since the codec codes stereo as mid/side.  Half of each batch
is speech and half music; each crop gets a random level.

Loss: multi-resolution STFT distance (log and linear magnitudes, six window sizes) plus waveform L1,
optionally a log-mel term (``--mel-weight``), and the rate in kbps weighted per quality.  Each quality has a target bitrate; its rate weight is
adapted by slow dual ascent from a fixed starting ladder (the weight grows while the quality's measured
rate is above its target), so the qualities land on the intended bitrates whatever the scale of the
distortion.  (A fast update, or a start from equal weights, collapses the shared latent early on:
the lowest quality's weight runs away while no quality can yet buy distortion with rate.)  Checkpoints with
optimizer, RNG and rate-weight state are written atomically every few minutes; ``--resume`` continues.
``--ranks 2 --threads 1`` splits each batch over two processes (:mod:`ltcodec.training.parallel`), about
twice the steps per hour of one process on 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from ..audio_model import HYPER_STRIDE, AudioLatticeCodec, AudioModelConfig
from ..image_model import RATE_RELAXATIONS
from .card import (RecipeChanges, processes_setting, recorded_history, recorded_settings, resumed_setting,
                   seed_from_card)
from .image import save_checkpoint
from .optim import (QUALITY_WEIGHTINGS, QualityLosses, WeightAverage, descend, drop_mismatched_state,
                    gain_optimizer, learning_rate_change, resolve_learning_rate, set_learning_rate, split_state,
                    warmup_factor)
from . import parallel
from .adversary import SpectrogramDiscriminator, discriminator_loss, generator_terms
from .parallel import Ranks
from .restore import fit_density, float_layers, load_float_layers, table_pmfs, table_radius
from .widen import COPY_NOISE, widen_state

CACHE = Path(os.environ.get("LTCODEC_CACHE", Path.home() / ".cache" / "ltcodec"))
DEFAULT_OUT = CACHE / "audio-e8"
DEFAULT_LR = 3e-4
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg")
STFT_SIZES = (2048, 1024, 512, 256, 128, 64)
#: The mel term of the loss (``--mel-weight``): (FFT size, bands) of log mel magnitudes compared by L1.
MEL_RESOLUTIONS = ((512, 40), (1024, 64), (2048, 80))
assert {n for n, _ in MEL_RESOLUTIONS} <= set(STFT_SIZES)  # rd_loss shares the STFTs of both terms
#: Steps over which the learning rate ramps up after widening (the widened tensors' Adam state is new).
WIDEN_WARMUP = 200


def load_init(path: Path) -> tuple[AudioModelConfig, dict[str, torch.Tensor], dict]:
    """Config, float weights and training record (step, CPU seconds, history) of a shipped model file.

    Training goes on from it when the checkpoint is gone (the optimizer state starts afresh; the rate
    weights too unless the file kept them, ``rate_weights``).  Files that kept the float hyperprior
    (``train.*``) give it back; older files kept only its frozen forms, from which the float h_s is
    rebuilt (the same function up to rounding) and the z density refitted to the frozen tables.
    """
    from safetensors import safe_open

    from ..audio_codec import AudioCodecModel
    from ..latent_coding import MEAN_GRID

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        weights = {k.split(".", 1)[1]: f.get_tensor(k).float() for k in f.keys() if k.startswith(("float.", "train."))}
    config = AudioModelConfig.from_dict(json.loads(meta["config"]))
    net = AudioLatticeCodec(config)
    shapes = net.state_dict()
    # Shipped kernels have the (1, k) layout: drop the unit height.
    weights = {k: (v[:, :, 0] if k in shapes and v.ndim == shapes[k].ndim + 1 else v) for k, v in weights.items()}
    if not any(k.startswith("h_s.") for k in weights):
        shipped = AudioCodecModel.from_file(path)
        out_scale = np.concatenate([np.full(config.M, MEAN_GRID, np.float64), np.full(config.M, 8.0)])
        load_float_layers(net.h_s, float_layers(shipped.h_s_int.layers, out_scale))
        t = shipped.z_tables
        radius = table_radius(t.starts, t.offsets)
        kl = fit_density(net.z_density, table_pmfs(t.freqs, t.starts, t.offsets, radius), radius)
        print(f"rebuilt the float h_s from the integer one; z density refitted (KL {kl:.5f} bits)", flush=True)
        weights.update({k: v for k, v in net.state_dict().items() if k.startswith(("h_s.", "z_density."))})
    record = {"step": int(meta.get("train_step", 0)), "cpu_seconds": float(meta.get("train_cpu_hours", 0)) * 3600,
              "history": recorded_history(meta, Path(path).with_suffix(".md"))}
    if "rate_weights" in meta:
        record.update({k: torch.tensor(v) for k, v in json.loads(meta["rate_weights"]).items()})
    return config, weights, record


def _cached_signals(path: Path, rate: int, cache_dir: Path) -> list[np.ndarray]:
    """Mono signals of one file at ``rate`` (mid, and side for stereo) as memory-mapped int16 arrays."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{rate}".encode()).hexdigest()[:20]
    outs = [cache_dir / f"{key}-{k}.npy" for k in ("mid", "side")]
    if not outs[0].exists():
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        mid = data.mean(axis=1)
        sigs = [mid] + ([(data[:, 0] - data[:, 1]) / 2] if data.shape[1] == 2 else [])
        for sig, out in zip(sigs, outs):
            if sr != rate:
                sig = soxr.resample(sig, sr, rate)
            a = np.clip(np.round(sig * 32767), -32768, 32767).astype(np.int16)
            tmp = out.with_suffix(".tmp.npy")
            np.save(tmp, a)
            os.replace(tmp, out)
    return [np.load(o, mmap_mode="r") for o in outs if o.exists()]


def load_corpus(folders: list[Path], rate: int, min_seconds: float = 1.5) -> dict[str, list[np.ndarray]]:
    """Signals by kind ("speech", "music"): the kind is the name of a folder on the file's path."""
    cache_dir = CACHE / f"audio-{rate}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    corpus: dict[str, list[np.ndarray]] = {"speech": [], "music": []}
    for folder in folders:
        if not folder.exists():
            continue
        # Hidden folders hold a corpus builder's work in progress (fetch-debian-media.sh unpacks there),
        # whose files come and go.
        files = (p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and ".part." not in p.name
                 and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        for path in sorted(files):
            kind = "speech" if "speech" in path.parts else "music" if "music" in path.parts else None
            if kind is None:
                continue
            try:
                sigs = _cached_signals(path, rate, cache_dir)
            except (OSError, RuntimeError, ValueError, sf.LibsndfileError) as e:  # OSError: gone since listed
                print(f"skipped {path}: {e}", flush=True)
                continue
            corpus[kind] += [s for s in sigs if len(s) >= min_seconds * rate]
    return corpus


def sample_batch(corpus: dict[str, list[np.ndarray]], rng: np.random.Generator, batch: int, length: int) -> torch.Tensor:
    """Random crops, half speech and half music (by duration within a kind), at a random level."""
    out = np.zeros((batch, length), np.float32)
    kinds = [k for k in ("speech", "music") if corpus[k]]
    weights = {k: np.array([len(s) for s in corpus[k]], np.float64) for k in kinds}
    for i in range(batch):
        kind = kinds[i % len(kinds)]
        sigs = corpus[kind]
        for _ in range(8):  # avoid silent crops
            s = sigs[rng.choice(len(sigs), p=weights[kind] / weights[kind].sum())]
            start = rng.integers(0, len(s) - length + 1)
            crop = np.asarray(s[start:start + length], np.float32) / 32768.0
            rms = float(np.sqrt(np.mean(crop ** 2)))
            if rms > 1e-3:
                break
        peak = float(np.abs(crop).max()) + 1e-6
        gain_db = rng.uniform(-12.0, 6.0)
        gain = min(10 ** (gain_db / 20), 0.99 / peak)
        out[i] = crop * gain
    return torch.from_numpy(out)[:, None, :]


def magnitudes(x: torch.Tensor, x_hat: torch.Tensor, sizes) -> dict[int, list[torch.Tensor]]:
    """|STFT| of both signals (Hann window, hop n/4) for each FFT size n: computed once per step and
    shared by the loss terms that use the same resolutions."""
    out = {}
    for n in sizes:
        win = torch.hann_window(n, dtype=x.dtype)
        out[n] = [torch.stft(s[:, 0], n, n // 4, window=win, return_complex=True).abs() for s in (x, x_hat)]
    return out


def spectral_distance(x: torch.Tensor, x_hat: torch.Tensor, spectra: dict | None = None) -> torch.Tensor:
    """Per-example multi-resolution STFT distance: log-magnitude L1 + spectral convergence."""
    spectra = spectra or magnitudes(x, x_hat, STFT_SIZES)
    total = 0.0
    for n in STFT_SIZES:
        spec = spectra[n]
        log_l1 = (torch.log(spec[0] + 1e-4) - torch.log(spec[1] + 1e-4)).abs().flatten(1).mean(1)
        conv = (spec[0] - spec[1]).flatten(1).norm(dim=1) / (spec[0].flatten(1).norm(dim=1) + 1e-5)
        total = total + log_l1 + conv
    return total / len(STFT_SIZES)


def mel_filterbank(rate: int, n_fft: int, bands: int = 80) -> np.ndarray:
    """(bands, n_fft/2 + 1) triangular filters spaced evenly on the HTK mel scale from 0 to rate/2."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    edges = 700.0 * (10.0 ** (np.linspace(0.0, mel(rate / 2), bands + 2) / 2595.0) - 1.0)
    freqs = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))


@functools.lru_cache(maxsize=None)
def _mel_basis(rate: int, n_fft: int, bands: int) -> torch.Tensor:
    return torch.from_numpy(mel_filterbank(rate, n_fft, bands)).float()


def mel_distance(x: torch.Tensor, x_hat: torch.Tensor, rate: int, spectra: dict | None = None) -> torch.Tensor:
    """Per-example L1 distance of log mel magnitudes at several resolutions: unlike the linear-frequency
    terms, whose bins crowd the highest octave, it weighs the spectrum the way hearing (and ViSQOL's
    gammatone bands) resolve it."""
    spectra = spectra or magnitudes(x, x_hat, [n for n, _ in MEL_RESOLUTIONS])
    total = 0.0
    for n, bands in MEL_RESOLUTIONS:
        fb = _mel_basis(rate, n, bands).to(x.dtype)
        mel = [torch.log(fb @ spec + 1e-5) for spec in spectra[n]]
        total = total + (mel[0] - mel[1]).abs().flatten(1).mean(1)
    return total / len(MEL_RESOLUTIONS)


def rd_loss(model: AudioLatticeCodec, x: torch.Tensor, quality: torch.Tensor, log_weights: torch.Tensor,
            rate: str = "noise", mel_weight: float = 0.0, critic: SpectrogramDiscriminator | None = None,
            adversarial: float = 0.0) -> dict:
    """Per example: distortion + the adversarial terms (``adversarial`` times :func:`generator_terms` of
    ``critic``, if any) + the quality's rate weight times kbps / 10."""
    out = model(x, quality, rate)
    seconds = x.shape[-1] / model.config.sample_rate
    kbps = (out["bits_y"] + out["bits_z"]) / seconds / 1000.0
    spectra = magnitudes(x, out["x_hat"], STFT_SIZES)  # the mel term's resolutions are among these
    dist = spectral_distance(x, out["x_hat"], spectra) + 10.0 * (out["x_hat"] - x).abs().flatten(1).mean(1)
    if mel_weight:
        dist = dist + mel_weight * mel_distance(x, out["x_hat"], model.config.sample_rate, spectra)
    w = torch.exp(log_weights[quality.long()])
    per_sample = dist + w * kbps / 10.0
    adv = torch.zeros_like(dist)
    if critic is not None and adversarial:
        adv = adversarial * generator_terms(critic, x, out["x_hat"])
        per_sample = per_sample + adv
    return {"loss": per_sample.mean(), "dist": dist.detach(), "kbps": kbps.detach(), "per_sample": per_sample,
            "adv": adv.detach(), "x_hat": out["x_hat"].detach()}


def si_sdr(x: np.ndarray, x_hat: np.ndarray) -> float:
    a = np.dot(x_hat, x) / (np.dot(x, x) + 1e-12)
    e = x_hat - a * x
    return 10 * math.log10((np.dot(a * x, a * x) + 1e-12) / (np.dot(e, e) + 1e-12))


@torch.no_grad()
def evaluate(model: AudioLatticeCodec, clips: list[np.ndarray]) -> list[dict]:
    """Ideal box-code kbps, spectral distance and SI-SDR per quality on held-out clips."""
    model.eval()
    rows = []
    unit = model.config.hop * HYPER_STRIDE
    for q in range(model.qualities):
        kb, dist, sdr = [], [], []
        for clip in clips:
            n = len(clip) // unit * unit
            x = torch.from_numpy(clip[:n])[None, None]
            out = model.estimate(x, torch.tensor([float(q)]))
            kb.append(float(out["bits_y"] + out["bits_z"]) / (n / model.config.sample_rate) / 1000)
            dist.append(float(spectral_distance(x, out["x_hat"])))
            sdr.append(si_sdr(clip[:n], out["x_hat"][0, 0].numpy()))
        rows.append({"quality": q + 1, "kbps": float(np.mean(kb)), "stft": float(np.mean(dist)),
                     "si_sdr": float(np.mean(sdr))})
    model.train()
    return rows


def load_eval_clips(folder: Path, rate: int, seconds: float = 6.0, per_kind: int = 2) -> list[np.ndarray]:
    clips = []
    for kind in ("speech", "music"):
        files = sorted((folder / kind).glob("*.wav")) + sorted((folder / kind).glob("*.flac"))
        for f in files[:per_kind]:
            data, sr = sf.read(str(f), dtype="float32", always_2d=True)
            sig = soxr.resample(data.mean(axis=1), sr, rate) if sr != rate else data.mean(axis=1)
            clips.append(np.ascontiguousarray(sig[: int(seconds * rate)], np.float32))
    return clips


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/train/audio"))
    p.add_argument("--media", type=Path, nargs="+",
                   default=[Path(os.environ.get("LTCODEC_MEDIA", Path.home() / ".cache" / "ltcodec-media"))])
    p.add_argument("--eval", type=Path, default=Path("../shared/data/eval/audio"))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", type=Path, help="start from a shipped model file's weights (fresh optimizer)")
    p.add_argument("--warmup", type=int, default=500,
                   help="with --init, ramp the learning rate up over this many steps (the optimizer starts afresh)")
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=80, help="latent frames per crop (80 = 1.07 s at 24 kHz)")
    p.add_argument("--lr", type=float,
                   help=f"base learning rate (default {DEFAULT_LR:g}; on --resume, the rate the run trains with)")
    p.add_argument("--channels", type=int,
                   help="channels of the first layer (default 16); on --resume, more than the run's widens its "
                   "transforms without changing what they compute")
    p.add_argument("--M", type=int, default=96)
    p.add_argument("--lattice", default="e8")
    p.add_argument("--rate", choices=RATE_RELAXATIONS,
                   help="the rate the loss and the rate targets see: of the dithered latent (noise, the "
                        "default) or of the hard lattice point, the coded bits; resumes keep it")
    p.add_argument("--mel-weight", type=float,
                   help="weight of the log-mel term of the distortion (0 before checkpoints kept it); resumes keep it")
    p.add_argument("--adversarial", type=float,
                   help="weight of the adversarial and feature-matching terms of a small spectrogram "
                        "discriminator (ltcodec.training.adversary; 0, the default, trains none); resumes keep it")
    p.add_argument("--disc-filters", type=int, default=8, help="filters per layer of that discriminator")
    p.add_argument("--disc-lr", type=float, default=1e-4, help="its Adam learning rate")
    p.add_argument("--target-kbps", type=float, nargs="+",
                   help="the per-quality rate targets (one channel); a resumed run keeps its own unless given")
    p.add_argument("--quality-weighting", choices=QUALITY_WEIGHTINGS,
                   help="how the qualities of a batch add up: the plain sum of their losses (the default) or "
                        "each relative to its quality's running mean (log, QualityLosses); resumes keep it")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--gain-lr-factor", type=float, default=10.0,
                   help="learning-rate factor of the per-quality gains (they must move far for the rates to spread)")
    p.add_argument("--dual-step", type=float, default=0.003, help="step of the rate-weight updates")
    WeightAverage.add_argument(p)
    p.add_argument("--reload-every", type=int, default=2000, help="rescan the data folders (a corpus may still be arriving)")
    parallel.add_argument(p)
    args = p.parse_args(argv)
    parallel.run(train, args)


def train(args: argparse.Namespace, ranks: Ranks) -> None:
    """The run of :func:`main` in one of its processes: every rank computes its slice of each batch; rank 0
    alone logs, evaluates and writes checkpoints."""
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "last.ckpt"
    log_path = args.out / "log.jsonl"

    state = torch.load(ckpt_path, weights_only=False) if args.resume and ckpt_path.exists() else None
    args.lr = resolve_learning_rate(args.lr, state, None, DEFAULT_LR)  # as learning_rate_change reads it
    init = load_init(args.init) if state is None and args.init is not None else None
    if init is not None and ranks.main:
        seed_from_card(args.init.with_suffix(".md"), log_path)
    config = (AudioModelConfig.from_dict(state["config"]) if state else init[0] if init else
              AudioModelConfig(channels=args.channels or 16, M=args.M, lattice=args.lattice))
    widen_from = None
    if state is not None and args.channels and args.channels != config.channels:
        if args.channels < config.channels:
            raise SystemExit(f"--channels {args.channels}: a run can only widen (it has {config.channels})")
        widen_from, config = config.channels, replace(config, channels=args.channels)
    retarget = None
    if args.target_kbps and tuple(args.target_kbps) != tuple(config.target_kbps):
        if len(args.target_kbps) != len(config.target_kbps):
            raise SystemExit(f"--target-kbps needs {len(config.target_kbps)} values, one per quality of the model")
        retarget = {"target_kbps_from": list(config.target_kbps), "target_kbps": list(args.target_kbps)}
        config = replace(config, target_kbps=tuple(args.target_kbps))
    torch.manual_seed(args.seed)  # before the model: a fresh run's initial weights come from its seed
    model = AudioLatticeCodec(config)
    if widen_from is not None:
        gen = torch.Generator().manual_seed(args.seed)
        state["model"] = widen_state(state["model"], model, COPY_NOISE, gen)
        state["ema"] = widen_state(state["ema"], model)
    gains = [model.enc_gain, model.dec_gain]
    opt = gain_optimizer(model, gains, args.lr, args.gain_lr_factor)
    targets = torch.tensor(config.target_kbps)
    # A starting ladder near the usual slopes of such codecs; dual ascent then moves each weight slowly.
    log_weights = torch.linspace(-1.0, -4.5, len(targets))
    rate_ema = targets.clone()
    step = 0
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(split_state(state["optimizer"], model, gains))
        drop_mismatched_state(opt)  # Adam's moments of the narrower tensors of a widened run
        set_learning_rate(opt, args.lr, args.gain_lr_factor)
        step = state["step"]
        log_weights, rate_ema = state["log_weights"], state["rate_ema"]
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {step}", flush=True)
    elif init is not None:
        missing, unexpected = model.load_state_dict(init[1], strict=False)
        step = init[2]["step"]
        if "log_weights" in init[2]:
            log_weights, rate_ema = init[2]["log_weights"], init[2]["rate_ema"]
        print(f"initialized from {args.init} at step {step} (missing {missing}, unexpected {unexpected})", flush=True)
    if not ranks.main:  # noise of its own (the dither of the rates); the crops and qualities are shared
        torch.manual_seed(args.seed + 1000 * ranks.rank + step)
    # Changes of the recipe so far (the model card reports them); 3·10⁻⁴ is the rate of every run before
    # checkpoints kept theirs.
    changes = RecipeChanges(state.get("history", []) if state is not None else init[2]["history"] if init else [])
    changes.add(learning_rate_change(state, args.lr, step, default=DEFAULT_LR), "learning rate")
    warmup = state.get("warmup", (0, 0)) if state is not None else ((step, args.warmup) if init else (0, 0))
    if init is not None and step:
        changes.add({"step": step, "init_from": args.init.name, "warmup": args.warmup, "lr": args.lr}, "start")
    # A run initialized from weights goes on with the settings their history left in force.
    kept = state if state is not None else recorded_settings(init[2]["history"]) if init is not None else None
    rate, change = resumed_setting(kept, "rate", "noise", args.rate, step)
    changes.add(change, "rate relaxation")
    mel_weight, change = resumed_setting(kept, "mel_weight", 0.0, args.mel_weight, step)
    changes.add(change, "mel term")
    weighting, change = resumed_setting(kept, "quality_weighting", "sum", args.quality_weighting, step)
    changes.add(change, "quality weighting")
    adversarial, change = resumed_setting(kept, "adversarial", 0.0, args.adversarial, step)
    changes.add(change, "adversarial term")
    critic = critic_opt = None
    if adversarial:
        with torch.random.fork_rng(devices=[]):  # the same discriminator on every rank; the run's stream untouched
            torch.manual_seed(args.seed + 1)
            critic = SpectrogramDiscriminator(state["critic_filters"] if state and "critic" in state
                                              else args.disc_filters)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=args.disc_lr, betas=(0.5, 0.9))
        if state is not None and "critic" in state:
            critic.load_state_dict(state["critic"])
            critic_opt.load_state_dict(state["critic_optimizer"])
    world, change = processes_setting(kept, ranks.world, step)
    changes.add(change, "processes")
    quality_losses = QualityLosses(len(targets), state.get("quality_losses") if state is not None else None)
    if retarget is not None:
        # The dual ascent moves each quality's rate weight towards its new target from here.
        changes.add({"step": step, **retarget}, "rate targets")
    widened_at = step
    if widen_from is not None:
        changes.add({"step": step, "channels_from": widen_from, "channels": config.channels}, "channels")

    def corpus_now() -> dict[str, list[np.ndarray]]:
        # Rank 0 converts what is new into the cache first; the others then read the same signals, so
        # that their shared random stream draws the same crops (a corpus still arriving may break that).
        c = ranks.main_first(lambda: load_corpus([args.data, *args.media], config.sample_rate))
        hours = {k: sum(len(s) for s in v) / config.sample_rate / 3600 for k, v in c.items()}
        print(f"corpus: {len(c['speech'])} speech signals ({hours['speech']:.2f} h), "
              f"{len(c['music'])} music signals ({hours['music']:.2f} h)", flush=True)
        return c

    corpus = corpus_now()
    clips = load_eval_clips(args.eval, config.sample_rate) if args.eval.exists() else []
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e6:.2f} M parameters, config {config.to_dict()}", flush=True)
    length = args.frames * config.hop
    if args.frames % HYPER_STRIDE:
        raise SystemExit(f"--frames must be a multiple of {HYPER_STRIDE}")

    cpu_base = state.get("cpu_seconds", 0.0) if state else init[2]["cpu_seconds"] if init else 0.0
    cpu_start = time.process_time()
    cpu_others = 0.0  # the other ranks' CPU time, as of the last step

    def cpu_total() -> float:
        return cpu_base + cpu_others + time.process_time() - cpu_start

    average = WeightAverage(model, args.ema_decay, state.get("ema") if state is not None else None)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "ema": average.state, "ema_decay": args.ema_decay,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "config": config.to_dict(), "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "log_weights": log_weights, "rate_ema": rate_ema, "cpu_seconds": cpu_total(),
            "history": changes.history, "lr": args.lr, "warmup": warmup, "rate": rate,
            "mel_weight": mel_weight, "quality_weighting": weighting, "quality_losses": quality_losses.state(),
            "ranks": world, "adversarial": adversarial,
            **({"critic": critic.state_dict(), "critic_optimizer": critic_opt.state_dict(),
                "critic_filters": critic.filters} if critic is not None else {}),
        })

    model.train()
    last_ckpt = time.time()
    t0, acc, n_acc = time.time(), {"loss": 0.0, "dist": 0.0, **({"adv": 0.0, "critic": 0.0} if critic else {})}, 0
    part = ranks.part(args.batch)
    with open(log_path if ranks.main else os.devnull, "a") as log:
        changes.write_new(log)
        while step < args.steps:
            if widen_from is not None and step - widened_at < WIDEN_WARMUP:
                # Fresh Adam moments take sign-sized steps at first: ramp the rate up after widening.
                set_learning_rate(opt, args.lr * (step - widened_at + 1) / WIDEN_WARMUP, args.gain_lr_factor)
            elif warmup[1] and step - warmup[0] <= warmup[1]:
                set_learning_rate(opt, args.lr * warmup_factor(step, warmup), args.gain_lr_factor)
            # Every rank draws the same whole batch (one random stream, checkpointed by rank 0) and codes
            # its slice; what the batch's losses and rates steer is computed from all the slices.
            x = sample_batch(corpus, rng, args.batch, length)
            quality = torch.from_numpy(rng.permutation(len(targets))[: args.batch] if args.batch <= len(targets)
                                       else rng.integers(0, len(targets), args.batch)).float()
            out = rd_loss(model, x[part], quality[part], log_weights, rate, mel_weight, critic, adversarial)
            (per_sample, kbps, distortion, adv), cpu_others = ranks.share(
                [out["per_sample"], out["kbps"], out["dist"], out["adv"]], time.process_time() - cpu_start)
            if not torch.isfinite(per_sample).all():
                print(f"step {step}: non-finite loss, batch skipped", flush=True)
                continue
            if weighting == "log":
                quality_losses.observe(per_sample, quality)
                objective = quality_losses.weight(out["per_sample"], quality[part])
            else:
                objective = out["loss"]
            if not descend(opt, model, average, objective, step,
                           lambda: ranks.average_gradients(model.parameters())):
                continue
            if critic is not None:  # then the discriminator learns from the same crops
                critic_loss = discriminator_loss(critic, x[part], out["x_hat"])
                critic_opt.zero_grad(set_to_none=True)  # also drops what the generator's pass left
                critic_loss.backward()
                ranks.average_gradients(critic.parameters())
                critic_opt.step()
                acc["adv"] += float(adv.mean())
                acc["critic"] += float(ranks.gather(critic_loss.detach()[None]).mean())
            step += 1
            # Dual ascent on the per-quality rate weights.
            for q, r in zip(quality.long().tolist(), kbps.tolist()):
                rate_ema[q] = 0.95 * rate_ema[q] + 0.05 * r
            log_weights = (log_weights + args.dual_step * torch.log(rate_ema / targets)).clamp(-7, 3)
            acc["loss"] += float(per_sample.mean())
            acc["dist"] += float(distortion.mean())
            n_acc += 1
            if step % args.log_every == 0:
                ranks.assert_same(model)
                if critic is not None:
                    ranks.assert_same(critic)
                rec = {"step": step, **{k: v / n_acc for k, v in acc.items()},
                       "kbps": [round(float(r), 2) for r in rate_ema], "log_w": [round(float(w), 2) for w in log_weights],
                       "s_per_step": (time.time() - t0) / n_acc, "cpu_hours": cpu_total() / 3600}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
                t0, acc, n_acc = time.time(), {k: 0.0 for k in acc}, 0
            if clips and ranks.main and step % args.eval_every == 0:
                averaged = AudioLatticeCodec(config)
                averaged.load_state_dict(average.state)
                rec = {"step": step, "eval": evaluate(model, clips), "eval_ema": evaluate(averaged, clips)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
            if args.reload_every and step % args.reload_every == 0:
                corpus = corpus_now()
            if ranks.main and time.time() - last_ckpt > args.ckpt_minutes * 60:
                checkpoint()
                last_ckpt = time.time()
        if ranks.main:
            checkpoint()


if __name__ == "__main__":
    main()
