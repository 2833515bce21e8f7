"""The container: every malformed, truncated, oversized or unknown file raises LtcFormatError."""

import struct
import zlib

import pytest

from ltcodec.container import (SIGNATURE, ImageHeader, ModelId, read_container, write_container)
from ltcodec.errors import LtcFormatError

MODEL = ModelId("ltc-image-e8", bytes(range(32)))
KNOWN = frozenset({b"ZSTR", b"YSTR"})


def _file(**kw):
    head = ImageHeader(kw.get("width", 40), kw.get("height", 30), 3, 4.0).pack()
    return write_container(head, MODEL, [(b"ZSTR", b"\x01\x02\x03\x04"), (b"YSTR", b"abcdefgh"),
                                         (b"tEXt", b"skippable")])


def test_round_trip_keeps_critical_chunks_and_skips_unknown_ancillary_ones():
    c = read_container(_file(), KNOWN)
    assert c.version == (1, 0) and c.media == 1
    assert c.model == MODEL
    assert [t for t, _ in c.chunks] == [b"ZSTR", b"YSTR"]
    hd = ImageHeader.unpack(c.head)
    assert (hd.width, hd.height, hd.channels, hd.quality, hd.lattice) == (40, 30, 3, 4.0, "e8")


def test_header_bytes_are_exactly_as_specified():
    head = ImageHeader(768, 512, 4, 2.5, "leech").pack()
    assert head == bytes([1, 4, 8, 6]) + struct.pack("<IIH", 768, 512, 640) + bytes([1, 16, 8, 16, 0, 0])
    data = write_container(head, MODEL, [])
    assert data[:10] == SIGNATURE + b"\x01\x00"
    assert data[10:14] == struct.pack("<I", 20) and data[14:18] == b"HEAD"
    assert data[-12:] == struct.pack("<I", 0) + b"END " + struct.pack("<I", zlib.crc32(b"END "))


def test_every_truncation_is_an_error():
    data = _file()
    for n in range(len(data)):
        with pytest.raises(LtcFormatError):
            read_container(data[:n], KNOWN)


def test_every_single_bit_flip_is_detected():
    data = bytearray(_file())
    for pos in range(len(data)):
        if pos == 9:
            continue  # the minor version: any minor is readable by design (formats/ltc-v1.md §1)
        for bit in (0, 5):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            try:
                c = read_container(bytes(bad), KNOWN)
            except LtcFormatError:
                continue
            pytest.fail(f"flip at byte {pos} bit {bit} went undetected: {c}")


def test_wrong_signature_version_and_unknown_critical_chunk():
    data = _file()
    with pytest.raises(LtcFormatError, match="signature"):
        read_container(b"\x89PNG\r\n\x1a\n" + data[8:])
    with pytest.raises(LtcFormatError, match="version 2"):
        read_container(data[:8] + b"\x02\x00" + data[10:])
    head = ImageHeader(4, 4, 3, 1.0).pack()
    with pytest.raises(LtcFormatError, match="unknown critical chunk QQQQ"):
        read_container(write_container(head, MODEL, [(b"QQQQ", b"")]), KNOWN)


def test_oversized_length_is_refused_before_reading():
    data = bytearray(_file())
    struct.pack_into("<I", data, 10, 0xFFFFFFF0)
    with pytest.raises(LtcFormatError, match="exceeds the limit"):
        read_container(bytes(data))
    struct.pack_into("<I", data, 10, 5000)
    with pytest.raises(LtcFormatError, match="truncated"):
        read_container(bytes(data))


def test_trailing_data_and_missing_end():
    data = _file()
    with pytest.raises(LtcFormatError, match="trailing"):
        read_container(data + b"x", KNOWN)
    with pytest.raises(LtcFormatError, match="no end chunk"):
        read_container(data[:-12], KNOWN)


@pytest.mark.parametrize("field,value,message", [
    ("width", 0, "image size"), ("height", 70000, "image size"), ("channels", 5, "channel"),
])
def test_header_values_are_validated(field, value, message):
    kw = dict(width=10, height=10, channels=3, quality=4.0)
    kw[field] = value
    head = ImageHeader(**kw)
    raw = struct.pack("<BBBBIIHBBBBH", 1, head.channels, 8, 4, head.width, head.height, 1024, 1, 16, 8, 16, 0)
    with pytest.raises(LtcFormatError, match=message):
        ImageHeader.unpack(raw)


def test_pixel_limit_and_quality_range():
    raw = struct.pack("<BBBBIIHBBBBH", 1, 3, 8, 4, 65535, 65535, 1024, 1, 16, 8, 16, 0)
    with pytest.raises(LtcFormatError, match="exceeds the limit"):
        ImageHeader.unpack(raw)
    raw = struct.pack("<BBBBIIHBBBBH", 1, 3, 8, 4, 10, 10, 9 * 256, 1, 16, 8, 16, 0)
    with pytest.raises(LtcFormatError, match="quality"):
        ImageHeader.unpack(raw)


def test_model_id_validation():
    assert ModelId.unpack(MODEL.pack()) == MODEL
    with pytest.raises(LtcFormatError):
        ModelId.unpack(b"\x05abc")
    with pytest.raises(LtcFormatError):
        ModelId.unpack(b"")


def test_recovery_skips_a_chunk_with_a_damaged_length():
    from ltcodec.container import AudioHeader

    head = AudioHeader(16000, 100, 1, 4.0, 24000, 300).pack()
    segs = [(b"SEGM", bytes([k]) * (20 + k)) for k in range(4)]
    data = bytearray(write_container(head, MODEL, segs, (1, 1)))
    second = data.find(b"SEGM", data.find(b"SEGM") + 1) - 4
    data[second: second + 4] = b"\xff\xff\xff\x7f"  # the length field of segment 1
    with pytest.raises(LtcFormatError):
        read_container(bytes(data), frozenset({b"SEGM"}))
    c = read_container(bytes(data), frozenset({b"SEGM"}), recover=frozenset({b"SEGM"}))
    assert [p[0] for p in c.get(b"SEGM")] == [0, 2, 3]
    assert c.damaged == 1
