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
    plat = MANIFEST["reference_platform"]
    if platform.machine() == plat["machine"] and torch.backends.cpu.get_cpu_capability() == plat["cpu_capability"]:
        assert hashlib.sha256(out.astype(np.uint8).tobytes()).hexdigest() == vec["pixels_sha256"]
