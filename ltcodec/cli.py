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


def _write_output(path: str, data: bytes, force: bool) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
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
            f.write(data)
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
@click.option("--model", "model", type=str, help="model name or path (default: the shipped model)")
@click.option("-f", "--force", is_flag=True, help="overwrite OUTPUT if it exists")
def encode(input: str, output: str, quality: float | None, bpp: float | None, model: str | None,
           force: bool) -> None:
    """Encode an image (PNG, JPEG, WebP, …) to an .ltc file."""

    def body():
        from PIL import Image, UnidentifiedImageError

        from .image import encode_image

        data = _read_input(input)
        try:
            im = Image.open(io.BytesIO(data))
            im.load()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise LtcError(f"{input} is not a readable image: {e}") from None
        _write_output(output, encode_image(im, quality=quality, bpp=bpp, model=model), force)

    _run(body)


@main.command()
@click.argument("input", type=str)
@click.argument("output", type=str)
@click.option("--model", "model", type=str, help="model name or path (must match the file's model)")
@click.option("-f", "--force", is_flag=True, help="overwrite OUTPUT if it exists")
def decode(input: str, output: str, model: str | None, force: bool) -> None:
    """Decode an .ltc file (to PNG for images)."""

    def body():
        from .image import decode_image

        data = _read_input(input)
        im = decode_image(data, model=model)
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
    """Describe an .ltc file: size, model, quality, bytes, bits per pixel."""

    def body():
        from .image import image_info

        d = image_info(_read_input(input)).as_dict()
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
