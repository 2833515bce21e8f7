"""The ``ltcodec`` command: encode, decode, info, models.

Errors are one line on stderr and exit status 1; an output file is written to a temporary name beside
it and renamed only when complete, so a failed run never leaves a partial file.  ``-`` means standard
input or output.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import click

from .errors import LtcError

__all__ = ["main"]


def _fail(message: str) -> None:
    click.echo(f"ltcodec: error: {message}", err=True)
    sys.exit(1)


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise LtcError(f"cannot read {path}: {e.strerror}") from None


def _write_output(path: str, data, force: bool) -> None:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` atomically."""
    write = data if callable(data) else (lambda f: f.write(data))
    if path == "-":
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    out = Path(path)
    if out.exists() and not force:
        raise LtcError(f"{path} exists (use -f to overwrite)")
    directory = out.parent if str(out.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=directory)
    except OSError as e:
        raise LtcError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, out)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise LtcError(f"cannot write {path}: {e.strerror}") from None
        raise


def _is_ltc(data: bytes) -> bool:
    from .container import sniff

    return sniff(data)


def _note_missed_target(got: float, asked: float, unit: str, quality: float) -> None:
    """One line on standard error when a size target is beyond the model's qualities (the file is still
    written: it is the nearest the model can do)."""
    if abs(got - asked) <= 0.1 * asked:
        return
    why = ("quality 8 is the model's highest" if quality >= 8 else
           "quality 1 is the model's lowest" if quality <= 1 else "the nearest quality found")
    click.echo(f"ltcodec: note: {got:.3g} {unit}, not {asked:g}: {why}", err=True)


#: Audio shorter than this (seconds), or an image of fewer 1024-pixel tiles, is done before a progress
#: bar would be worth drawing; refinement steps (about a second each on a photo) always are.
PROGRESS_MIN = {"s": 30.0, "tiles": 8, "steps": 1}
#: Stages counted in their own unit rather than the bar's.
STAGE_UNITS = {"refining": "steps"}


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


class _ProgressBar:
    """A ``progress(stage, done, total)`` callback drawing one tqdm bar per stage on standard error,
    only when that is a terminal and the work (in ``unit``: seconds of audio or image tiles) is long
    enough to wait for."""

    def __init__(self, enabled: bool, unit: str = "s"):
        self.enabled = enabled and _stderr_is_terminal()
        self.unit = unit
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, done: float, total: float | None) -> None:
        unit = STAGE_UNITS.get(stage, self.unit)
        if not self.enabled or (total is not None and total < PROGRESS_MIN[unit]):
            return
        if stage != self.stage:
            from tqdm import tqdm

            self.close()
            self.stage = stage
            self.bar = tqdm(total=round(total, 1) if total else None, desc=stage, unit=self.unit, file=sys.stderr,
                            leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} "
                            + unit + " [{elapsed}<{remaining}]" if total else None)
        self.bar.update(round(done, 1) - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _run(fn):
    """Run a command body, turning every expected failure into a one-line error."""
    try:
        fn()
    except LtcError as e:
        _fail(str(e))
    except MemoryError:
        _fail("out of memory")
    except KeyboardInterrupt:
        _fail("interrupted")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ltcodec")
def main() -> None:
    """ltcodec: a learned image and audio codec built on lattice quantization (.ltc files)."""


@main.command()
@click.argument("input", type=str)
@click.argument("output", type=str)
@click.option("-q", "--quality", type=float, help="quality 1 (smallest) … 8 (best); default 4")
@click.option("--bpp", type=float, help="target bits per pixel (images): highest quality that fits")
@click.option("--kbps", type=float, help="target bitrate in kbit/s, all channels together (audio)")
@click.option("--refine", type=click.IntRange(min=0), default=0, show_default=True,
              help="images: gradient steps improving the latent for this image (10: ~7 s for a 0.4-megapixel "
                   "photo, 3% fewer bits with the shipped model; decoding is unchanged)")
@click.option("--model", "model", type=str, help="model name or path (default: the shipped model)")
@click.option("-f", "--force", is_flag=True, help="overwrite OUTPUT if it exists")
@click.option("--no-progress", is_flag=True, help="no progress bar (shown on a terminal for long audio and large images)")
def encode(input: str, output: str, quality: float | None, bpp: float | None, kbps: float | None,
           refine: int, model: str | None, force: bool, no_progress: bool) -> None:
    """Encode an image (PNG, JPEG, WebP, …) or audio (WAV, FLAC, Ogg, …) to an .ltc file."""

    def body():
        from .audio import looks_like_audio

        if input == "-":
            data = _read_input(input)
            source, prefix = io.BytesIO(data), data[:4]
        else:
            source = input
            try:
                with open(input, "rb") as f:
                    prefix = f.read(4)
            except OSError as e:
                raise LtcError(f"cannot read {input}: {e.strerror}") from None
        if looks_like_audio(input, prefix):
            from .audio import encode_audio_file

            if bpp is not None:
                raise LtcError("--bpp is for images; use --kbps or --quality for audio")
            if refine:
                raise LtcError("--refine is for images")
            with _ProgressBar(not no_progress) as bar:
                blob = encode_audio_file(source, quality=quality, kbps=kbps, model=model, progress=bar)
            _write_output(output, blob, force)
            if kbps is not None:
                from .audio import audio_info

                info = audio_info(blob)
                _note_missed_target(info.kbps, kbps, "kbit/s", info.quality)
            return
        from PIL import Image, UnidentifiedImageError

        from .image import encode_image

        if kbps is not None:
            raise LtcError("--kbps is for audio; use --bpp or --quality for images")
        data = source.getvalue() if input == "-" else _read_input(input)
        try:
            with warnings.catch_warnings():
                # Pillow warns from 89 megapixels on: a large photo, not an attack, and within our limits.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
                im.load()
        except Image.DecompressionBombError:
            raise LtcError(f"{input} has more pixels than Pillow reads ({2 * Image.MAX_IMAGE_PIXELS:,}, "
                           f"its guard against decompression bombs)") from None
        except UnidentifiedImageError:
            what = "is empty" if not data else "is not an image or sound format that Pillow or soundfile reads"
            raise LtcError(f"{input} {what}") from None
        except (OSError, ValueError) as e:
            raise LtcError(f"{input} is not a readable image or audio file: {e}") from None
        frames = getattr(im, "n_frames", 1)
        if frames > 1:  # an animation, a multi-page TIFF, a camera's MPO with its preview
            click.echo(f"ltcodec: note: {input} holds {frames} frames; the first is coded", err=True)
        with _ProgressBar(not no_progress, "tiles") as bar:
            blob = encode_image(im, quality=quality, bpp=bpp, model=model, progress=bar, refine=refine)
        _write_output(output, blob, force)
        if bpp is not None:
            from .image import image_info

            info = image_info(blob)
            if info.bpp > bpp:  # --bpp is a ceiling: only the lowest quality can exceed it
                _note_missed_target(info.bpp, bpp, "bpp", info.quality)

    _run(body)


@main.command()
@click.argument("input", type=str)
@click.argument("output", type=str)
@click.option("--model", "model", type=str, help="model name or path (must match the file's model)")
@click.option("-f", "--force", is_flag=True, help="overwrite OUTPUT if it exists")
@click.option("--float", "float_output", is_flag=True, help="audio: write 32-bit float WAV (default 16-bit PCM)")
@click.option("--conceal", is_flag=True, help="audio: decode a damaged file, with silence where segments are lost")
@click.option("--no-progress", is_flag=True, help="no progress bar (shown on a terminal for long audio and large images)")
def decode(input: str, output: str, model: str | None, force: bool, float_output: bool, conceal: bool,
           no_progress: bool) -> None:
    """Decode an .ltc file: images to PNG, audio to WAV."""

    def body():
        from .container import MEDIA_AUDIO, media_kind

        data = _read_input(input)
        if media_kind(data) == MEDIA_AUDIO:
            from .audio import decode_audio_file, _parse

            _parse(data, conceal)  # every format error before OUTPUT is touched
            with _ProgressBar(not no_progress) as bar:
                _write_output(output, lambda f: decode_audio_file(data, f, float_output, model, conceal, bar),
                              force)
            return
        from .image import decode_image

        with _ProgressBar(not no_progress, "tiles") as bar:
            im = decode_image(data, model=model, progress=bar)
        buf = io.BytesIO()
        params = {}
        if "icc_profile" in im.info:
            params["icc_profile"] = im.info["icc_profile"]
        if "exif" in im.info:
            params["exif"] = im.info["exif"]
        im.save(buf, "PNG", **params)
        _write_output(output, buf.getvalue(), force)

    _run(body)


@main.command()
@click.argument("input", type=str)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def info(input: str, as_json: bool) -> None:
    """Describe an .ltc file: size or duration, model, quality, bytes, bits per pixel or kbps."""

    def body():
        from .container import MEDIA_AUDIO, media_kind

        data = _read_input(input)
        if media_kind(data) == MEDIA_AUDIO:
            from .audio import audio_info

            d = audio_info(data).as_dict()
            if as_json:
                click.echo(json.dumps(d))
                return
            click.echo(f"{input}: audio {d['duration']:.3f} s, {d['sample_rate']} Hz, {d['channels']} channel"
                       f"{'s' if d['channels'] > 1 else ''} ({d['channel_coding']}), quality {d['quality']:g}, "
                       f"lattice {d['lattice']}")
            click.echo(f"  model {d['model']} (sha256 {d['model_sha256'][:16]}…, codes at {d['model_rate']} Hz), "
                       f"format {d['version']}")
            segments = f"{d['segments']} segment" + ("" if d["segments"] == 1 else "s")
            layer = "" if d["detail_step"] is None else f", with a detail layer (step {d['detail_step']})"
            click.echo(f"  {d['bytes']} bytes in {segments}, {d['kbps']:.2f} kbit/s{layer}")
            return
        from .image import image_info

        d = image_info(data).as_dict()
        if as_json:
            click.echo(json.dumps(d))
            return
        click.echo(f"{input}: {d['kind']} {d['width']}×{d['height']} {d['mode']}, quality {d['quality']:g}, "
                   f"lattice {d['lattice']}")
        click.echo(f"  model {d['model']} (sha256 {d['model_sha256'][:16]}…), format {d['version']}")
        click.echo(f"  {d['bytes']} bytes, {d['bpp']:.4f} bits per pixel"
                   + (", ICC profile" if d["has_icc"] else "") + (", EXIF" if d["has_exif"] else ""))

    _run(body)


@main.command()
def models() -> None:
    """List the installed models."""

    def body():
        from .zoo import list_models

        found = list_models()
        if not found:
            raise LtcError("no models installed")
        for m in found:
            click.echo(f"{m['name']:24s} {m['kind']:6s} {m['sha256'][:16]}  {m['path']}")

    _run(body)


if __name__ == "__main__":  # pragma: no cover
    main()
