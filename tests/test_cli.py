"""The command line: success paths, one-line errors with exit status 1, no partial output files."""

import json
import struct
import subprocess
import sys
import zlib

import numpy as np

from click.testing import CliRunner
from PIL import Image

from ltcodec.cli import main

from conftest import smooth_image


def _png(tmp_path, name="in.png", size=(64, 48)):
    p = tmp_path / name
    Image.fromarray(smooth_image(*size)).save(p)
    return p


def test_encode_info_decode(tmp_path):
    src = _png(tmp_path)
    r = CliRunner().invoke(main, ["encode", str(src), str(tmp_path / "a.ltc"), "--quality", "6"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["info", str(tmp_path / "a.ltc"), "--json"])
    info = json.loads(r.output)
    assert (info["width"], info["height"], info["quality"], info["model"]) == (64, 48, 6.0, "ltc-image-e8")
    assert info["bytes"] == (tmp_path / "a.ltc").stat().st_size
    r = CliRunner().invoke(main, ["decode", str(tmp_path / "a.ltc"), str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "a.png").size == (64, 48)


def test_bpp_option(tmp_path):
    src = _png(tmp_path, size=(256, 192))
    r = CliRunner().invoke(main, ["encode", str(src), str(tmp_path / "b.ltc"), "--bpp", "0.5"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b.ltc").stat().st_size * 8 / (256 * 192) <= 0.5


def test_a_target_out_of_reach_is_met_as_nearly_as_possible_with_a_note(tmp_path):
    import numpy as np
    import soundfile as sf

    src = _png(tmp_path, size=(128, 96))
    r = CliRunner().invoke(main, ["encode", str(src), str(tmp_path / "b.ltc"), "--bpp", "0.001"])
    assert r.exit_code == 0 and (tmp_path / "b.ltc").exists()
    assert "note: " in r.stderr and "not 0.001: quality 1 is the model's lowest" in r.stderr
    r = CliRunner().invoke(main, ["encode", str(src), str(tmp_path / "c.ltc"), "--bpp", "8"])
    assert r.exit_code == 0 and r.stderr == ""  # a ceiling met with room to spare is no miss
    wav = tmp_path / "a.wav"
    t = np.arange(16000) / 16000
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 300 * t), 16000)
    r = CliRunner().invoke(main, ["encode", str(wav), str(tmp_path / "a.ltc"), "--kbps", "900"])
    assert r.exit_code == 0 and (tmp_path / "a.ltc").exists()
    assert "not 900: quality 8 is the model's highest" in r.stderr


def test_stdin_and_stdout(tmp_path):
    src = _png(tmp_path)
    enc = subprocess.run([sys.executable, "-m", "ltcodec.cli", "encode", "-", "-"], input=src.read_bytes(),
                         capture_output=True, check=True).stdout
    assert enc[:4] == b"\x89LTC"
    dec = subprocess.run([sys.executable, "-m", "ltcodec.cli", "decode", "-", "-"], input=enc,
                         capture_output=True, check=True).stdout
    assert dec[:8] == b"\x89PNG\r\n\x1a\n"


def _fails(args, tmp_path):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("ltcodec: error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


def test_errors_are_one_line_and_leave_no_partial_file(tmp_path):
    bad = tmp_path / "bad.ltc"
    bad.write_bytes(b"\x89LTC\r\n\x1a\n\x01\x00garbage")
    msg = _fails(["decode", str(bad), str(tmp_path / "out.png")], tmp_path)
    assert "truncated" in msg or "invalid" in msg
    assert not (tmp_path / "out.png").exists()
    assert list(tmp_path.iterdir()) == [bad]  # no temporary file left behind either
    notimg = tmp_path / "x.txt"
    notimg.write_text("hello")
    assert _fails(["encode", str(notimg), str(tmp_path / "o.ltc")], tmp_path).endswith(
        "x.txt is not an image or sound format that Pillow or soundfile reads")
    empty = tmp_path / "e.png"
    empty.write_bytes(b"")
    assert _fails(["encode", str(empty), str(tmp_path / "o.ltc")], tmp_path).endswith("e.png is empty")
    empty.unlink()
    assert "cannot read" in _fails(["encode", str(tmp_path / "missing.png"), str(tmp_path / "o.ltc")], tmp_path)
    assert not (tmp_path / "o.ltc").exists()
    src = _png(tmp_path)
    assert "quality" in _fails(["encode", str(src), str(tmp_path / "o.ltc"), "-q", "0"], tmp_path)
    assert "not installed" in _fails(["encode", str(src), str(tmp_path / "o.ltc"), "--model", "nope"], tmp_path)


def _png_header_only(path, width, height):
    """A PNG that claims a size and holds next to no pixel data (read no further than its header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_huge_images_get_one_line_errors(tmp_path):
    # Beyond Pillow's decompression-bomb guard: refused before any pixel is allocated.
    bomb = _png_header_only(tmp_path / "bomb.png", 20_000, 20_000)
    assert "more pixels than Pillow reads" in _fails(["encode", str(bomb), str(tmp_path / "o.ltc")], tmp_path)
    # Between Pillow's warning and its limit: no warning text, only the real (truncation) error.
    big = _png_header_only(tmp_path / "big.png", 10_000, 10_000)
    assert "truncated" in _fails(["encode", str(big), str(tmp_path / "o.ltc")], tmp_path)
    assert not (tmp_path / "o.ltc").exists()


def test_existing_output_needs_force(tmp_path):
    src = _png(tmp_path)
    out = tmp_path / "o.ltc"
    out.write_bytes(b"keep me")
    assert "exists" in _fails(["encode", str(src), str(out)], tmp_path)
    assert out.read_bytes() == b"keep me"
    r = CliRunner().invoke(main, ["encode", str(src), str(out), "-f"])
    assert r.exit_code == 0 and out.read_bytes()[:4] == b"\x89LTC"


def test_models_command_lists_the_shipped_model():
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0 and "ltc-image-e8" in r.output


def test_refine_option(tmp_path):
    import numpy as np
    import soundfile as sf

    src = _png(tmp_path, size=(64, 48))
    r = CliRunner().invoke(main, ["encode", str(src), str(tmp_path / "r.ltc"), "-q", "2", "--refine", "3"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["decode", str(tmp_path / "r.ltc"), str(tmp_path / "r.png")])
    assert r.exit_code == 0 and Image.open(tmp_path / "r.png").size == (64, 48)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(1600), 16000)
    assert "--refine is for images" in _fails(["encode", str(wav), str(tmp_path / "a.ltc"), "--refine", "3"], tmp_path)
    r = CliRunner().invoke(main, ["encode", str(src), str(tmp_path / "n.ltc"), "--refine", "-1"])
    assert r.exit_code != 0 and not (tmp_path / "n.ltc").exists()


def test_a_multi_frame_image_codes_its_first_frame_with_a_note(tmp_path):
    frames = [Image.new("RGB", (24, 16), (60 * i, 20, 200 - 60 * i)) for i in range(3)]
    src = tmp_path / "anim.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:])
    r = CliRunner().invoke(main, ["encode", str(src), str(tmp_path / "a.ltc")])
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == f"ltcodec: note: {src} holds 3 frames; the first is coded"
    first = np.asarray(Image.open(src).convert("RGB"), dtype=float)
    got = np.asarray(Image.open(tmp_path / "a.ltc").convert("RGB"), dtype=float)
    assert np.abs(got.mean((0, 1)) - first.mean((0, 1))).max() < 20  # the first frame's colour, not the last's
    single = tmp_path / "one.png"
    frames[0].save(single)
    assert CliRunner().invoke(main, ["encode", str(single), str(tmp_path / "b.ltc")]).stderr == ""
