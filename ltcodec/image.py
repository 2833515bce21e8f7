"""Images in and out of .ltc: Pillow modes, alpha, orientation, metadata and rate control.

Input rules (also in formats/ltc-v1.md §6):

* EXIF orientation is applied before coding; the EXIF block is kept with its orientation reset to 1.
  The ICC profile is kept.  Both travel in skippable ancillary chunks.
* ``RGB`` is coded as is; ``L`` (grayscale) is coded as gray RGB and decoded back to ``L``; ``RGBA`` and
  ``LA`` code the colour that way and the alpha plane *losslessly* (a PNG stream in an ``ALPH`` chunk).
  ``P`` becomes ``RGBA`` if it has transparency, else ``RGB``; ``1`` becomes ``L``; ``CMYK``, ``YCbCr``,
  ``LAB`` and ``HSV`` are converted to ``RGB``.
* 16-bit grayscale (``I;16*``) is reduced to 8 bits by round(v / 257); 32-bit ``I`` and ``F`` images
  are refused (their range is not defined).
* Any width and height from 1 to 65,535, at most 2^28 pixels; padding to the transform's grid is internal.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps
from torch import Tensor

from .boxcode import CodingError
from .container import (MEDIA_AUDIO, MEDIA_IMAGE, ImageHeader, media_kind, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, ModelId, read_container,
                        write_container)
from .errors import LtcFormatError, LtcInputError
from .image_codec import ImageCodecModel, Streams
from .ratecontrol import search_quality
from .refine import prepare_refinement, quality_lambda, refine_latent
from .zoo import load_image_model, model_for_file

__all__ = ["encode_image", "decode_image", "image_info", "prepare_image", "ImageInfo", "decoded_integers"]

_KNOWN = frozenset({b"ZSTR", b"YSTR", b"YST2", b"ALPH", b"iCCP", b"eXIf"})
#: ``--bpp`` aims this far (log) under its target and accepts trials within it of that aim.
BPP_AIM = 0.002
#: Expected d log(bits)/d quality of an image model (the shipped one: 0.30–0.40 on Kodak).
BPP_SLOPE = 0.35
_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_MODES = {v: k for k, v in _CHANNELS.items()}


def prepare_image(im: Image.Image) -> tuple[Image.Image, dict]:
    """Apply orientation and the mode rules; returns the image in L, LA, RGB or RGBA and its metadata."""
    meta = {}
    try:
        im = ImageOps.exif_transpose(im)
    except Exception as e:  # damaged EXIF must not make the pixels unreadable
        raise LtcInputError(f"cannot apply EXIF orientation: {e}") from None
    if im.info.get("icc_profile"):
        meta["icc_profile"] = im.info["icc_profile"]
    exif = im.getexif()
    if len(exif):
        exif[0x0112] = 1
        meta["exif"] = exif.tobytes()
    mode = im.mode
    if mode in _CHANNELS:
        pass
    elif mode == "P" or mode == "PA":
        im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.uint32)
        im = Image.fromarray(((a + 128) // 257).astype(np.uint8), "L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        im = im.convert("RGBA" if mode in ("RGBa", "La") else "RGB")
    else:
        raise LtcInputError(f"images of mode {mode} are not supported (8-bit L/LA/RGB/RGBA, 16-bit L)")
    w, h = im.size
    if not (1 <= w <= MAX_IMAGE_SIDE and 1 <= h <= MAX_IMAGE_SIDE) or w * h > MAX_IMAGE_PIXELS:
        raise LtcInputError(f"image size {w}×{h} is outside the supported range")
    return im, meta


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise LtcInputError(f"numpy images must be uint8, got {a.dtype}")
    if a.ndim == 2:
        return Image.fromarray(a, "L")
    if a.ndim == 3 and a.shape[2] in (1, 2, 3, 4):
        return Image.fromarray(a[..., 0] if a.shape[2] == 1 else a, _MODES[a.shape[2]])
    raise LtcInputError(f"numpy images must be (H, W) or (H, W, 1–4), got shape {a.shape}")


def _words(payload: bytes) -> np.ndarray:
    if len(payload) % 4:
        raise LtcFormatError("entropy-coded chunk length is not a multiple of 4")
    return np.frombuffer(payload, dtype="<u4").astype(np.uint32)


def encode_image(image, quality: float | None = None, bpp: float | None = None,
                 model: str | ImageCodecModel | None = None, progress=None, refine: int = 0) -> bytes:
    """Encode a PIL image or a uint8 array to .ltc bytes.

    ``quality`` is 1 … 8 (fractions allowed, default 4); ``bpp`` instead searches the highest quality
    whose file is at most ``bpp`` bits per pixel (the lowest quality if even that is larger).
    ``refine`` > 0 spends that many gradient steps per tile improving the latent for this image
    (:mod:`ltcodec.refine`): a much slower encode, a smaller file at the same quality, the same decoder.
    ``progress(stage, done, total)`` is told the 1024-pixel tiles of the transform done ("analysing")
    and the refinement steps done ("refining").
    """
    if quality is not None and bpp is not None:
        raise LtcInputError("give either quality or bpp, not both")
    if not isinstance(refine, int) or isinstance(refine, bool) or refine < 0:
        raise LtcInputError(f"refine must be a whole number of steps ≥ 0, got {refine!r}")
    m = model if isinstance(model, ImageCodecModel) else load_image_model(model)
    if refine:
        prepare_refinement(m)  # before the analysis: a model that cannot refine fails at once
    im, meta = prepare_image(_to_pil(image))
    channels = _CHANNELS[im.mode]
    w, h = im.size
    rgb = np.asarray(im.convert("RGB"))
    extra = []
    if channels in (2, 4):
        buf = io.BytesIO()
        im.getchannel("A").save(buf, "PNG", optimize=True)
        extra.append((b"ALPH", buf.getvalue()))
    if "icc_profile" in meta:
        extra.append((b"iCCP", meta["icc_profile"]))
    if "exif" in meta:
        extra.append((b"eXIf", meta["exif"]))
    y = m.analysis(rgb, (lambda done, total: progress("analysing", done, total)) if progress else None)

    def refined(q: float) -> Tensor:
        if not refine:
            return y
        r = refine_latent(m, rgb, y, q, refine,
                          (lambda done, total: progress("refining", done, total)) if progress else None)
        # The search ranks its iterates by the float hyperprior's ideal bits; the file has the integer
        # one's, so it can come out worse. Judge both by their real files: never worse than no search.
        # (The refined latent's file is built last, so that the caller's build of it is the one kept.)
        plain = coded_objective(q, y)
        return r if coded_objective(q, r) < plain else y

    def coded_objective(q: float, latent: Tensor) -> float:
        """λ·MSE + bits per pixel of the real file at ``q``: what refinement lowers."""
        data = build(q, latent)
        out = np.asarray(decode_image(data, model=m).convert("RGB"), dtype=np.float64)
        mse = float(((out - rgb) ** 2).mean())
        return quality_lambda(m.config.lambdas, q) * mse + 8 * len(data) / (w * h)

    def header(q: float) -> tuple[bytes, ModelId]:
        head = ImageHeader(w, h, channels, q, m.config.lattice if m.config.lattice in
                           ("z", "a2", "d4", "e8", "bw16", "leech") else "learned")
        return head.pack(), ModelId(m.name, bytes.fromhex(m.sha256))

    last_built: list = []  # (quality, latent, file) of the last file built, the latent held, not copied

    def build(q: float, latent: Tensor) -> bytes:
        if last_built and last_built[0] == q and last_built[1] is latent:
            return last_built[2]  # refinement's check built this very file: range-code it once
        s = m.compress_latent(latent, q)
        chunks = [(b"ZSTR", s.z_words.astype("<u4").tobytes()), (b"YSTR", s.y_words.astype("<u4").tobytes())]
        if s.y2_words is not None:
            chunks.append((b"YST2", s.y2_words.astype("<u4").tobytes()))
        data = write_container(*header(q), chunks + extra)
        last_built[:] = [q, latent, data]
        return data

    if bpp is None:
        q = 4.0 if quality is None else float(quality)
        if not 1.0 <= q <= m.qualities:
            raise LtcInputError(f"quality must be between 1 and {m.qualities}, got {quality}")
        q = round(q * 256) / 256
        return build(q, refined(q))
    if not bpp > 0:
        raise LtcInputError(f"target bits per pixel must be positive, got {bpp}")
    target = bpp * w * h / 8
    # Everything but the two streams, then the streams from their ideal code lengths (each rounds up to
    # 32-bit words: 2 bytes on average): trials cost no range coding, only the final file does.
    streams = [b"ZSTR", b"YSTR"] + ([b"YST2"] if m.ctx_int is not None else [])
    frame = len(write_container(*header(1.0), [(t, b"") for t in streams] + extra))

    def highest_under(latent: Tensor, start: float) -> float:
        def log_error(q: float) -> float:  # aimed 0.2% under the target
            return math.log((frame + m.latent_bits(latent, q) / 8 + 4) / target) + BPP_AIM

        tried = search_quality(log_error, start, float(m.qualities), BPP_SLOPE, lambda e: abs(e) <= BPP_AIM, 6)
        under = [q for q, e in tried.items() if e <= BPP_AIM]
        return max(under) if under else 1.0

    q = highest_under(y, 4.0)
    latent = refined(q)
    if refine:
        # A refined latent codes smaller: search again from it (it stays a good latent at nearby
        # qualities, the gains being smooth), then refine for the quality found.
        q2 = highest_under(latent, q)
        if q2 != q:
            q, latent = q2, refined(q2)
    data = build(q, latent)
    # The estimate is within a few bytes: a file just over the target steps down (~0.3% per step).
    while len(data) > target and q > 1.0:
        q = max(1.0, q - 1 / 128)
        data = build(q, latent)
    return data


@dataclass
class ImageInfo:
    width: int
    height: int
    mode: str
    quality: float
    lattice: str
    model: str
    model_sha256: str
    bytes: int
    bpp: float
    has_icc: bool
    has_exif: bool
    version: str

    def as_dict(self) -> dict:
        return dict(self.__dict__, kind="image")


def _parse(data: bytes):
    if media_kind(data) == MEDIA_AUDIO:
        raise LtcFormatError("this .ltc file holds audio, not an image")
    c = read_container(data, _KNOWN)
    if c.media != MEDIA_IMAGE:
        raise LtcFormatError("this .ltc file holds audio, not an image")
    return c, ImageHeader.unpack(c.head)


def image_info(data: bytes) -> ImageInfo:
    c, hd = _parse(data)
    return ImageInfo(hd.width, hd.height, _MODES[hd.channels], hd.quality, hd.lattice, c.model.name,
                     c.model.hex, c.size, 8 * c.size / (hd.width * hd.height), bool(c.get(b"iCCP")),
                     bool(c.get(b"eXIf")), f"{c.version[0]}.{c.version[1]}")


def _model_for(c, model) -> ImageCodecModel:
    return model_for_file(c.model, model, "image")


def _streams(c, hd, m: ImageCodecModel) -> Streams:
    if hd.lattice != m.config.lattice and hd.lattice != "learned":
        raise LtcFormatError(f"header lattice {hd.lattice} does not match the model's {m.config.lattice}")
    lh, lw = -(-hd.height // 64) * 4, -(-hd.width // 64) * 4
    two = m.ctx_int is not None  # a checkerboard context codes the latent's two halves in two streams
    if two != bool(c.get(b"YST2")):
        raise LtcFormatError("the file's latent streams do not match its model's entropy model "
                             f"({'two' if two else 'one'} expected)")
    streams = Streams(_words(c.one(b"ZSTR")), _words(c.one(b"YSTR")), (lh, lw),
                      _words(c.one(b"YST2")) if two else None)
    max_words = 64 + 4 * (lh * lw * m.config.M + lh * lw * m.config.N)  # > 128 bits per symbol is corrupt
    y2 = streams.y2_words.size if two else 0
    if streams.y_words.size + y2 + streams.z_words.size > max_words:
        raise LtcFormatError("entropy-coded data is larger than any valid stream for this size")
    return streams


def decoded_integers(data: bytes, model: str | ImageCodecModel | None = None) -> bytes:
    """The normative integers of a file (ẑ then u, little-endian int64): equal on every machine."""
    c, hd = _parse(data)
    m = _model_for(c, model)
    try:
        z_hat, u, _ = m.decode_symbols(_streams(c, hd, m))
    except CodingError as e:
        raise LtcFormatError(str(e)) from None
    return z_hat.astype("<i8").tobytes() + u.astype("<i8").tobytes()


def decode_image(data: bytes, model: str | ImageCodecModel | None = None, progress=None) -> Image.Image:
    """Decode .ltc bytes to a PIL image in the file's mode (L, LA, RGB or RGBA), with ICC and EXIF;
    ``progress("decoding", done, total)`` is told the 1024-pixel tiles of the transform done."""
    c, hd = _parse(data)
    m = _model_for(c, model)
    streams = _streams(c, hd, m)
    try:
        y_hat = m.decompress_latent(streams, hd.quality)
    except CodingError as e:
        raise LtcFormatError(str(e)) from None
    rgb = m.synthesis(y_hat, hd.height, hd.width,
                      (lambda done, total: progress("decoding", done, total)) if progress else None)
    im = Image.fromarray(rgb, "RGB")
    if hd.channels in (1, 2):
        im = im.convert("L")
    if hd.channels in (2, 4):
        try:
            alpha = Image.open(io.BytesIO(c.one(b"ALPH")))
            alpha.load()
        except LtcFormatError:
            raise
        except Exception:
            raise LtcFormatError("alpha plane is damaged") from None
        if alpha.mode != "L" or alpha.size != (hd.width, hd.height):
            raise LtcFormatError("alpha plane has the wrong size or mode")
        im.putalpha(alpha)
    icc = c.get(b"iCCP")
    if icc:
        im.info["icc_profile"] = icc[0]
    exif = c.get(b"eXIf")
    if exif:
        im.info["exif"] = exif[0]
    return im
