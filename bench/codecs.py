"""The image codecs a user would pick instead of ltcodec, behind one interface.

Each codec: ``available() -> str | None`` (None, or why it is missing), ``settings`` (a sweep covering
about 0.1–2 bits per pixel on Kodak) and ``run(rgb, setting) -> Result`` (bytes counted, decoded
pixels, wall times).  Peers come from Pillow (JPEG, WebP, AVIF), Debian's libjxl-tools (``cjxl``)
and ffmpeg with libx265 (HEVC intra 4:4:4, the usual stand-in for BPG, counting only the raw
bitstream).  Thread counts are fixed and stated, so timings compare like with like.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, features

THREADS = 2


@dataclass
class Result:
    nbytes: int
    decoded: np.ndarray
    encode_s: float
    decode_s: float


class Codec:
    default = True  # run when no codecs are named
    name = "codec"
    label = "codec"
    settings: list = []
    note = ""

    def available(self) -> str | None:
        return None

    def model_sha256(self) -> str | None:
        """The SHA-256 of the learned model this codec runs (after :meth:`available`), None for the others."""
        return None

    def run(self, rgb: np.ndarray, setting) -> Result:  # pragma: no cover - interface
        raise NotImplementedError


class PillowCodec(Codec):
    fmt = "JPEG"
    options: dict = {}

    def _opts(self, setting) -> dict:
        return {"quality": setting, **self.options}

    def run(self, rgb, setting):
        im = Image.fromarray(rgb)
        buf = io.BytesIO()
        t0 = time.perf_counter()
        im.save(buf, self.fmt, **self._opts(setting))
        t1 = time.perf_counter()
        data = buf.getvalue()
        out = Image.open(io.BytesIO(data))
        out = np.asarray(out.convert("RGB"))
        t2 = time.perf_counter()
        return Result(len(data), out, t1 - t0, t2 - t1)


class Jpeg420(PillowCodec):
    name, label = "jpeg420", "JPEG 4:2:0 (Pillow)"
    settings = [5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95]
    options = {"subsampling": 2, "optimize": True}


class Jpeg444(PillowCodec):
    name, label = "jpeg444", "JPEG 4:4:4 (Pillow)"
    settings = [5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95]
    options = {"subsampling": 0, "optimize": True}


class WebP(PillowCodec):
    name, label, fmt = "webp", "WebP (Pillow, method 6)", "WEBP"
    settings = [0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95]
    options = {"method": 6}

    def available(self):
        return None if features.check("webp") else "Pillow built without WebP"


class Avif(PillowCodec):
    name, label, fmt = "avif", "AVIF (Pillow/libavif, speed 6)", "AVIF"
    settings = [10, 20, 30, 40, 50, 60, 70, 80, 90]
    options = {"speed": 6, "subsampling": "4:4:4", "max_threads": THREADS}

    def available(self):
        return None if features.check("avif") else "Pillow built without AVIF"


class JpegXL(Codec):
    name, label = "jxl", "JPEG XL (cjxl, effort 7)"
    settings = [10.0, 7.0, 5.0, 3.5, 2.5, 1.8, 1.2, 0.8, 0.5]

    def available(self):
        return None if shutil.which("cjxl") and shutil.which("djxl") else "cjxl/djxl not installed (apt-get install libjxl-tools)"

    def run(self, rgb, setting):
        with tempfile.TemporaryDirectory() as d:
            src, enc, dec = Path(d) / "in.png", Path(d) / "x.jxl", Path(d) / "out.png"
            Image.fromarray(rgb).save(src)
            t0 = time.perf_counter()
            subprocess.run(["cjxl", str(src), str(enc), "-d", str(setting), "-e", "7", f"--num_threads={THREADS}"],
                           check=True, capture_output=True)
            t1 = time.perf_counter()
            subprocess.run(["djxl", str(enc), str(dec), f"--num_threads={THREADS}"], check=True, capture_output=True)
            t2 = time.perf_counter()
            return Result(enc.stat().st_size, np.asarray(Image.open(dec).convert("RGB")), t1 - t0, t2 - t1)


class Hevc444(Codec):
    name, label = "x265", "HEVC intra 4:4:4 (ffmpeg libx265)"
    settings = [46, 42, 38, 35, 32, 29, 26, 23, 20]
    note = "raw HEVC bitstream bytes; RGB→YCbCr 4:4:4 (BT.601 full range) conversion by ffmpeg"

    def available(self):
        if not shutil.which("ffmpeg"):
            return "ffmpeg not installed (apt-get install ffmpeg)"
        out = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
        return None if "libx265" in out else "ffmpeg built without libx265"

    def run(self, rgb, setting):
        h, w, _ = rgb.shape
        with tempfile.TemporaryDirectory() as d:
            src, enc, dec = Path(d) / "in.png", Path(d) / "x.hevc", Path(d) / "out.png"
            Image.fromarray(rgb).save(src)
            t0 = time.perf_counter()
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-vf", "scale=out_color_matrix=bt601:out_range=full",
                            "-pix_fmt", "yuv444p", "-c:v", "libx265", "-preset", "medium", "-threads", str(THREADS),
                            "-x265-params", f"qp={setting}:keyint=1:log-level=error", "-f", "hevc", str(enc)],
                           check=True, capture_output=True)
            t1 = time.perf_counter()
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(enc), "-vf",
                            "scale=in_color_matrix=bt601:in_range=full", "-pix_fmt", "rgb24", str(dec)],
                           check=True, capture_output=True)
            t2 = time.perf_counter()
            out = np.asarray(Image.open(dec).convert("RGB"))
            return Result(enc.stat().st_size, out[:h, :w], t1 - t0, t2 - t1)


class Ltcodec(Codec):
    name, label = "ltcodec", "ltcodec (this project)"
    settings = [1, 2, 3, 4, 5, 6, 7, 8]
    refine = 0

    def __init__(self, model: str | None = None):
        self.model_name = model
        self._model = None

    def available(self):
        try:
            from ltcodec.zoo import load_image_model

            self._model = load_image_model(self.model_name)
        except Exception as e:  # a missing model is reported, not fatal
            return str(e)
        self.label = f"ltcodec ({self._model.name})" + (f", --refine {self.refine}" if self.refine else "")
        return None

    def model_sha256(self) -> str | None:
        return self._model.sha256 if self._model is not None else None

    def run(self, rgb, setting):
        import torch

        from ltcodec.image import decode_image, encode_image

        torch.set_num_threads(THREADS)
        t0 = time.perf_counter()
        data = encode_image(rgb, quality=setting, model=self._model, refine=self.refine)
        t1 = time.perf_counter()
        out = np.asarray(decode_image(data, model=self._model))
        t2 = time.perf_counter()
        return Result(len(data), out, t1 - t0, t2 - t1)


class LtcodecRefined(Ltcodec):
    """ltcodec's slow encode (``--refine``): run only when named, it takes ~25 s per Kodak image."""

    name = "ltcodec-refine"
    refine = 30
    default = False


class LtcodecRefinedBriefly(LtcodecRefined):
    """``--refine 10``: a third of the time (~8 s per Kodak image)."""

    name = "ltcodec-refine10"
    refine = 10


def all_codecs(model: str | None = None) -> list[Codec]:
    return [Ltcodec(model), LtcodecRefined(model), LtcodecRefinedBriefly(model), Jpeg420(), Jpeg444(), WebP(),
            Avif(), JpegXL(), Hevc444()]
