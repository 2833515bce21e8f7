"""The conformance vectors in formats/conformance decode to their recorded integers and pixels."""

import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltcodec.image import decode_image, decoded_integers
from ltcodec.training.card import cpu_name
from ltcodec.zoo import load_image_model

HERE = Path(__file__).resolve().parent.parent / "formats" / "conformance"
MANIFEST = json.loads((HERE / "vectors.json").read_text())
VECTORS = MANIFEST["vectors"]


def test_vectors_are_for_the_shipped_model():
    m = load_image_model(MANIFEST["model"])
    assert m.sha256 == MANIFEST["model_sha256"], "regenerate with formats/conformance/make_vectors.py"
    assert len(VECTORS) >= 4


@pytest.mark.parametrize("vec", VECTORS, ids=[v["file"] for v in VECTORS])
def test_integers_are_exact(vec):
    data = (HERE / vec["file"]).read_bytes()
    assert hashlib.sha256(decoded_integers(data)).hexdigest() == vec["integers_sha256"]


@pytest.mark.parametrize("vec", VECTORS, ids=[v["file"] for v in VECTORS])
def test_pixels_match_the_reference_decoder(vec):
    data = (HERE / vec["file"]).read_bytes()
    out = np.asarray(decode_image(data)).astype(np.float64)
    ref = np.asarray(Image.open(HERE / vec["file"].replace(".ltc", ".reference.png"))).astype(np.float64)
    assert out.shape == ref.shape
    mse = ((out - ref) ** 2).mean()
    assert mse == 0 or 10 * np.log10(255**2 / mse) >= 50  # the spec's tolerance across platforms
    if _on_reference_platform():
        assert hashlib.sha256(out.astype(np.uint8).tobytes()).hexdigest() == vec["pixels_sha256"]


AUDIO = MANIFEST["audio_vectors"]


def test_audio_vectors_are_for_the_shipped_audio_model():
    from ltcodec.zoo import load_audio_model

    m = load_audio_model(MANIFEST["audio_model"])
    assert m.sha256 == MANIFEST["audio_model_sha256"], "regenerate with formats/conformance/make_vectors.py"
    assert len(AUDIO) >= 3
    from ltcodec.audio import audio_info

    # The detail layer (§9.7) is among the vectors.
    assert any(audio_info((HERE / v["file"]).read_bytes()).detail_step is not None for v in AUDIO)


def _on_reference_platform() -> bool:
    """Whether this machine computes floats as the one that made the vectors: the same ISA level is not
    enough (two processors of one level have given different audio samples), so the processor counts."""
    plat = MANIFEST["reference_platform"]
    return (platform.machine() == plat["machine"] and torch.backends.cpu.get_cpu_capability() == plat["cpu_capability"]
            and cpu_name() == plat.get("cpu"))


@pytest.mark.parametrize("vec", AUDIO, ids=[v["file"] for v in AUDIO])
def test_audio_integers_are_exact(vec):
    from ltcodec.audio import decoded_integers

    data = (HERE / vec["file"]).read_bytes()
    assert hashlib.sha256(decoded_integers(data)).hexdigest() == vec["integers_sha256"]


@pytest.mark.parametrize("vec", AUDIO, ids=[v["file"] for v in AUDIO])
def test_audio_samples_match_the_reference_decoder(vec):
    import soundfile as sf

    from ltcodec.audio import decode_audio

    data = (HERE / vec["file"]).read_bytes()
    out, rate = decode_audio(data, dtype="int16")
    ref, ref_rate = sf.read(HERE / vec["file"].replace(".ltc", ".reference.flac"), dtype="int16")
    assert (rate, out.shape) == (ref_rate, ref.shape) == (vec["sample_rate"], ref.shape)
    err = (out.astype(np.float64) - ref) ** 2
    # Across platforms float synthesis may differ by rounding: at most ±2 LSB per sample on average.
    assert err.mean() <= 4.0
    if _on_reference_platform():
        assert hashlib.sha256(np.ascontiguousarray(out).astype("<i2").tobytes()).hexdigest() == vec["samples_sha256"]
