"""Regenerate the conformance vectors for the default image and audio models.

    python formats/conformance/make_vectors.py

Writes small .ltc files made from synthetic images and signals (no external data), the reference
decoder's output beside each (PNG, or 16-bit FLAC for audio) and ``vectors.json`` with, per file, the
SHA-256 of its normative integers (equal on every machine) and of the reference decoder's output (on
the reference platform).  Run it whenever a shipped model changes.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import date
from pathlib import Path

import numpy as np
import torch

import soundfile as sf

from ltcodec import audio
from ltcodec.image import decode_image, decoded_integers, encode_image
from ltcodec.training.card import cpu_name
from ltcodec.zoo import DEFAULT_AUDIO_MODEL, DEFAULT_IMAGE_MODEL, load_audio_model, load_image_model

HERE = Path(__file__).parent


def synthetic(width: int, height: int, channels: int, seed: int) -> np.ndarray:
    """A smooth colour field with edges and a little noise: exercises every part of the codec."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 100 * np.sin(xx / max(width, 1) * 3.1 + seed)
    g = 128 + 100 * np.cos(yy / max(height, 1) * 2.3)
    b = np.where((xx // 8 + yy // 8) % 2 == 0, 200.0, 60.0)
    a = np.clip(255 * xx / max(width - 1, 1), 0, 255)
    img = np.stack([r, g, b, a], -1) + rng.normal(0, 4, (height, width, 4))
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if channels == 1:
        return img[..., 0]
    if channels == 2:
        return img[..., [0, 3]]
    return img[..., :channels]


CASES = [
    ("rgb-48x32-q4", 48, 32, 3, 4.0),
    ("rgb-1x1-q1", 1, 1, 3, 1.0),
    ("gray-37x23-q8", 37, 23, 1, 8.0),
    ("rgba-70x65-q2.5", 70, 65, 4, 2.5),
    ("la-17x90-q6", 17, 90, 2, 6.0),
]


AUDIO_CASES = [
    ("mono-16k-1s-q3", 16000, 1, 1.0, 3.0),
    ("stereo-22k-4.5s-q6", 22050, 2, 4.5, 6.0),  # two segments, mid/side
    ("3ch-8k-0.3s-q1.5", 8000, 3, 0.3, 1.5),
    ("mono-detail-16k-5s-40kbps", 16000, 1, 5.0, "40kbps"),  # a detail layer (§9.7) on two segments
]


def synthetic_audio(rate: int, channels: int, seconds: float, seed: int) -> np.ndarray:
    """Tones, a chirp and noise bursts, different per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    chans = []
    for c in range(channels):
        s = 0.3 * np.sin(2 * np.pi * (220 * (c + 1)) * t) + 0.2 * np.sin(2 * np.pi * (100 + 400 * t) * t)
        s += rng.standard_normal(t.size) * np.where((t * 4).astype(int) % 2 == 0, 0.05, 0.002)
        chans.append(s)
    return np.stack(chans, 1).astype(np.float32)


def audio_vectors() -> dict:
    model = load_audio_model(DEFAULT_AUDIO_MODEL)
    vectors = []
    for name, rate, ch, seconds, q in AUDIO_CASES:
        target = {"kbps": float(q[:-4])} if isinstance(q, str) else {"quality": q}
        data = audio.encode_audio(synthetic_audio(rate, ch, seconds, seed=len(name)), rate, model=model, **target)
        (HERE / f"{name}.ltc").write_bytes(data)
        samples, _ = audio.decode_audio(data, dtype="int16", model=model)
        sf.write(HERE / f"{name}.reference.flac", samples, rate, subtype="PCM_16")
        vectors.append({
            "file": f"{name}.ltc", "sample_rate": rate, "channels": ch, "frames": int(rate * seconds),
            "quality": audio.audio_info(data).quality, **({"kbps": target["kbps"]} if "kbps" in target else {}),
            "integers_sha256": hashlib.sha256(audio.decoded_integers(data, model=model)).hexdigest(),
            "samples_sha256": hashlib.sha256(np.ascontiguousarray(samples).astype("<i2").tobytes()).hexdigest(),
        })
    return {"audio_model": model.name, "audio_model_sha256": model.sha256, "audio_vectors": vectors}


def main() -> None:
    model = load_image_model(DEFAULT_IMAGE_MODEL)
    for old in [*HERE.glob("*.ltc"), *HERE.glob("*.reference.png"), *HERE.glob("*.reference.flac")]:
        old.unlink()
    vectors = []
    for name, w, h, ch, q in CASES:
        data = encode_image(synthetic(w, h, ch, seed=len(name)), quality=q, model=model)
        (HERE / f"{name}.ltc").write_bytes(data)
        decoded = decode_image(data, model=model)
        decoded.save(HERE / f"{name}.reference.png")
        pixels = np.asarray(decoded)
        vectors.append({
            "file": f"{name}.ltc", "width": w, "height": h, "channels": ch, "quality": q,
            "integers_sha256": hashlib.sha256(decoded_integers(data, model=model)).hexdigest(),
            "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
        })
    manifest = {
        "model": model.name, "model_sha256": model.sha256, "generated": date.today().isoformat(),
        "reference_platform": {"machine": platform.machine(), "torch": torch.__version__,
                               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_name()},
        "vectors": vectors,
        **audio_vectors(),
    }
    (HERE / "vectors.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(vectors)} vectors for {model.name} ({model.sha256[:12]}…)")


if __name__ == "__main__":
    main()
