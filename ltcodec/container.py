"""Reading and writing the .ltc container (specification: ``formats/ltc-v1.md``).

::

    signature (8) │ major, minor (2) │ chunk │ chunk │ … │ "END " chunk
    chunk = length u32 LE │ type (4 ASCII) │ payload (length bytes) │ CRC-32 u32 LE of type+payload

The first chunk is ``HEAD``, the second ``MODL``.  Chunk types whose first letter is upper case are
critical (a decoder that does not know one must refuse the file); lower case ones are ancillary and
skipped when unknown.  Every length is checked against the file's size and a limit *before* anything
is allocated, and every CRC is checked before a payload is parsed.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable

from .errors import LtcFormatError

__all__ = [
    "SIGNATURE", "VERSION", "MAX_CHUNK_BYTES", "MAX_IMAGE_SIDE", "MAX_IMAGE_PIXELS", "LATTICE_IDS",
    "ImageHeader", "AudioHeader", "ModelId", "Container", "read_container", "write_container", "sniff",
    "MEDIA_IMAGE", "MEDIA_AUDIO", "media_kind", "MAX_AUDIO_CHANNELS", "MAX_AUDIO_FRAMES",
]

SIGNATURE = b"\x89LTC\r\n\x1a\n"
VERSION = (1, 0)  # written for images; audio files are 1.1 (the minor version that defined them)
AUDIO_VERSION = (1, 1)
AUDIO_DETAIL_VERSION = (1, 2)  # audio files with a detail layer (§9.7)

#: Sanity limits, checked before allocating (formats/ltc-v1.md §5).
MAX_CHUNK_BYTES = 1 << 30
MAX_CHUNKS = 1 << 20
MAX_IMAGE_SIDE = 65535
MAX_IMAGE_PIXELS = 1 << 28
MAX_MODEL_NAME = 255

MEDIA_IMAGE = 1
MEDIA_AUDIO = 2
MAX_AUDIO_CHANNELS = 8
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000
MAX_AUDIO_FRAMES = 1 << 40
MAX_SEGMENT_FRAMES = 4096

#: Channel coding of audio: each channel on its own, or stereo as mid = (L+R)/2 and side = (L−R)/2.
STEREO_INDEPENDENT = 0
STEREO_MID_SIDE = 1

#: Lattice identifiers stored in headers.
LATTICE_IDS = {"z": 1, "a2": 2, "d4": 3, "e8": 4, "bw16": 5, "leech": 6, "learned": 7}
LATTICE_NAMES = {v: k for k, v in LATTICE_IDS.items()}

CODER_RANGE32 = 1  # constriction's range coder, 32-bit words, little-endian

_IMAGE_HEAD = struct.Struct("<BBBBIIHBBBBH")  # 20 bytes


@dataclass
class ImageHeader:
    width: int
    height: int
    channels: int  # 1 = L, 2 = LA, 3 = RGB, 4 = RGBA
    quality: float  # 1.0 … 8.0, stored in 1/256 steps
    lattice: str = "e8"
    bit_depth: int = 8
    coder: int = CODER_RANGE32
    precision: int = 16
    levels_per_octave: int = 8
    mean_grid: int = 16

    def pack(self) -> bytes:
        return _IMAGE_HEAD.pack(MEDIA_IMAGE, self.channels, self.bit_depth, LATTICE_IDS[self.lattice],
                                self.width, self.height, int(round(self.quality * 256)), self.coder,
                                self.precision, self.levels_per_octave, self.mean_grid, 0)

    @classmethod
    def unpack(cls, payload: bytes) -> "ImageHeader":
        if len(payload) != _IMAGE_HEAD.size:
            raise LtcFormatError(f"image header has {len(payload)} bytes, expected {_IMAGE_HEAD.size}")
        (kind, channels, depth, lattice, width, height, q, coder, precision, lpo, grid,
         reserved) = _IMAGE_HEAD.unpack(payload)
        if kind != MEDIA_IMAGE:
            raise LtcFormatError(f"not an image header (media kind {kind})")
        if channels not in (1, 2, 3, 4):
            raise LtcFormatError(f"unsupported channel count {channels}")
        if depth != 8:
            raise LtcFormatError(f"unsupported bit depth {depth}")
        if lattice not in LATTICE_NAMES:
            raise LtcFormatError(f"unknown lattice id {lattice}")
        if not (1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE):
            raise LtcFormatError(f"image size {width}×{height} is outside 1…{MAX_IMAGE_SIDE}")
        if width * height > MAX_IMAGE_PIXELS:
            raise LtcFormatError(f"image of {width * height} pixels exceeds the limit of {MAX_IMAGE_PIXELS}")
        if not 256 <= q <= 8 * 256:
            raise LtcFormatError(f"quality {q / 256} is outside 1…8")
        if coder != CODER_RANGE32 or precision != 16 or lpo != 8 or grid != 16:
            raise LtcFormatError("unsupported entropy-coder parameters")
        if reserved != 0:
            raise LtcFormatError("reserved header field is not zero")
        return cls(width, height, channels, q / 256, LATTICE_NAMES[lattice], depth, coder, precision, lpo, grid)


_AUDIO_HEAD = struct.Struct("<BBBBIQHBBBBHHI")  # 30 bytes

#: Detail steps G (§9.7) lie in DETAIL_MIN … DETAIL_MAX; the header stores the smallest as G + DETAIL_BIAS,
#: 0 meaning no detail layer.
DETAIL_MIN, DETAIL_MAX = -128, 128
DETAIL_BIAS = 1024


@dataclass
class AudioHeader:
    sample_rate: int  # of the input, restored at decode
    frames: int  # per channel, at sample_rate
    channels: int
    quality: float
    model_rate: int  # the rate the model codes at
    segment_frames: int  # latent frames per SEGM chunk
    stereo: int = STEREO_INDEPENDENT
    lattice: str = "e8"
    coder: int = CODER_RANGE32
    precision: int = 16
    levels_per_octave: int = 8
    mean_grid: int = 16
    detail: int | None = None  # the smallest detail step G of the file's segments, or None without a detail layer

    def pack(self) -> bytes:
        if self.detail is not None and not DETAIL_MIN <= self.detail <= DETAIL_MAX:
            raise ValueError(f"detail step {self.detail} is outside {DETAIL_MIN}…{DETAIL_MAX}")
        return _AUDIO_HEAD.pack(MEDIA_AUDIO, self.channels, self.stereo, LATTICE_IDS[self.lattice],
                                self.sample_rate, self.frames, int(round(self.quality * 256)), self.coder,
                                self.precision, self.levels_per_octave, self.mean_grid, self.segment_frames,
                                0 if self.detail is None else self.detail + DETAIL_BIAS, self.model_rate)

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    @classmethod
    def unpack(cls, payload: bytes) -> "AudioHeader":
        if len(payload) != _AUDIO_HEAD.size:
            raise LtcFormatError(f"audio header has {len(payload)} bytes, expected {_AUDIO_HEAD.size}")
        (kind, channels, stereo, lattice, rate, frames, q, coder, precision, lpo, grid, seg, detail,
         model_rate) = _AUDIO_HEAD.unpack(payload)
        if kind != MEDIA_AUDIO:
            raise LtcFormatError(f"not an audio header (media kind {kind})")
        if not 1 <= channels <= MAX_AUDIO_CHANNELS:
            raise LtcFormatError(f"unsupported channel count {channels}")
        if stereo not in (STEREO_INDEPENDENT, STEREO_MID_SIDE) or (stereo == STEREO_MID_SIDE and channels != 2):
            raise LtcFormatError(f"invalid channel coding {stereo} for {channels} channels")
        if lattice not in LATTICE_NAMES:
            raise LtcFormatError(f"unknown lattice id {lattice}")
        for name, r in (("sample rate", rate), ("model rate", model_rate)):
            if not MIN_SAMPLE_RATE <= r <= MAX_SAMPLE_RATE:
                raise LtcFormatError(f"{name} {r} Hz is outside {MIN_SAMPLE_RATE}…{MAX_SAMPLE_RATE}")
        if not 1 <= frames <= MAX_AUDIO_FRAMES:
            raise LtcFormatError(f"frame count {frames} is outside 1…{MAX_AUDIO_FRAMES}")
        if not 256 <= q <= 8 * 256:
            raise LtcFormatError(f"quality {q / 256} is outside 1…8")
        if coder != CODER_RANGE32 or precision != 16 or lpo != 8 or grid != 16:
            raise LtcFormatError("unsupported entropy-coder parameters")
        if not 4 <= seg <= MAX_SEGMENT_FRAMES or seg % 4:
            raise LtcFormatError(f"segment length {seg} is not a multiple of 4 in 4…{MAX_SEGMENT_FRAMES}")
        if detail and not DETAIL_MIN <= detail - DETAIL_BIAS <= DETAIL_MAX:
            raise LtcFormatError(f"detail step {detail - DETAIL_BIAS} is outside {DETAIL_MIN}…{DETAIL_MAX}")
        return cls(rate, frames, channels, q / 256, model_rate, seg, stereo, LATTICE_NAMES[lattice], coder,
                   precision, lpo, grid, detail - DETAIL_BIAS if detail else None)


@dataclass
class ModelId:
    name: str
    sha256: bytes

    def pack(self) -> bytes:
        raw = self.name.encode("utf-8")
        if not 1 <= len(raw) <= MAX_MODEL_NAME or len(self.sha256) != 32:
            raise ValueError("model name must be 1–255 bytes and the digest 32 bytes")
        return bytes([len(raw)]) + raw + self.sha256

    @classmethod
    def unpack(cls, payload: bytes) -> "ModelId":
        if not payload or len(payload) != 1 + payload[0] + 32 or payload[0] == 0:
            raise LtcFormatError("malformed model identifier")
        try:
            name = payload[1:1 + payload[0]].decode("utf-8")
        except UnicodeDecodeError:
            raise LtcFormatError("model name is not UTF-8") from None
        return cls(name, payload[1 + payload[0]:])

    @property
    def hex(self) -> str:
        return self.sha256.hex()


@dataclass
class Container:
    """A parsed file: the raw header payload, the model id and the remaining chunks in order."""

    version: tuple[int, int]
    media: int
    head: bytes
    model: ModelId
    chunks: list[tuple[bytes, bytes]] = field(default_factory=list)
    size: int = 0
    damaged: int = 0  # chunks skipped in recovery mode (see read_container's ``recover``)

    def get(self, ctype: bytes) -> list[bytes]:
        return [p for t, p in self.chunks if t == ctype]

    def one(self, ctype: bytes) -> bytes:
        found = self.get(ctype)
        if len(found) != 1:
            raise LtcFormatError(f"expected exactly one {ctype.decode()} chunk, found {len(found)}")
        return found[0]


def _chunk(ctype: bytes, payload: bytes) -> bytes:
    if len(ctype) != 4:
        raise ValueError("chunk types have 4 bytes")
    if len(payload) > MAX_CHUNK_BYTES:
        raise ValueError("chunk too large")
    return struct.pack("<I", len(payload)) + ctype + payload + struct.pack("<I", zlib.crc32(ctype + payload))


def write_container(head: bytes, model: ModelId, chunks: Iterable[tuple[bytes, bytes]],
                    version: tuple[int, int] = VERSION) -> bytes:
    parts = [SIGNATURE, bytes(version), _chunk(b"HEAD", head), _chunk(b"MODL", model.pack())]
    parts += [_chunk(t, p) for t, p in chunks]
    parts.append(_chunk(b"END ", b""))
    return b"".join(parts)


def media_kind(data: bytes) -> int | None:
    """The media kind in a file's header, peeked without parsing (None if there is no header)."""
    if len(data) > 18 and sniff(data) and data[14:18] == b"HEAD":
        return data[18]
    return None


def sniff(prefix: bytes) -> bool:
    """True if ``prefix`` starts with the .ltc signature (for format detection, e.g. by Pillow)."""
    return prefix[: len(SIGNATURE)] == SIGNATURE


def _valid_chunk_at(data: bytes, pos: int, types: frozenset[bytes]) -> bool:
    if len(data) - pos < 12 or data[pos + 4: pos + 8] not in types:
        return False
    (length,) = struct.unpack_from("<I", data, pos)
    if length > MAX_CHUNK_BYTES or length > len(data) - pos - 12:
        return False
    (crc,) = struct.unpack_from("<I", data, pos + 8 + length)
    return zlib.crc32(data[pos + 4: pos + 8 + length]) == crc


def _resync(data: bytes, pos: int, types: frozenset[bytes]) -> int | None:
    """Start of the next intact chunk of one of ``types`` (or the end chunk) after ``pos``."""
    targets = types | {b"END "}
    best = None
    for t in targets:
        at = data.find(t, pos + 1)
        while at != -1:
            if _valid_chunk_at(data, at - 4, targets):
                best = at - 4 if best is None else min(best, at - 4)
                break
            at = data.find(t, at + 1)
    return best


def read_container(data: bytes | BinaryIO, known: frozenset[bytes] = frozenset(),
                   recover: frozenset[bytes] = frozenset()) -> Container:
    """Parse and validate a whole file.  ``known`` lists the critical chunk types the caller handles.

    ``recover`` lists chunk types that are independent of each other (audio segments): with it, a
    damaged chunk after HEAD and MODL is skipped, the reader resynchronizes on the next intact chunk
    of those types, and the count of damaged chunks is returned instead of an error being raised.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = data.read()
    data = bytes(data)
    if len(data) < len(SIGNATURE) + 2:
        raise LtcFormatError("file is too short to be an .ltc file")
    if not sniff(data):
        raise LtcFormatError("not an .ltc file (bad signature)")
    major, minor = data[8], data[9]
    if major != VERSION[0]:
        raise LtcFormatError(f"unsupported .ltc version {major}.{minor} (this decoder reads {VERSION[0]}.x)")
    pos = 10
    chunks: list[tuple[bytes, bytes]] = []
    ended = False
    damaged = 0
    while pos < len(data):
        if len(chunks) >= MAX_CHUNKS:
            raise LtcFormatError("too many chunks")
        if recover and len(chunks) >= 2 and not _valid_chunk_at(data, pos, recover | {b"END "}) \
                and data[pos + 4: pos + 8] not in known - recover:
            damaged += 1
            nxt = _resync(data, pos, recover)
            if nxt is None:
                break  # nothing intact follows: what was read is kept
            pos = nxt
            continue
        if len(data) - pos < 12:
            raise LtcFormatError(f"truncated chunk header at byte {pos}")
        (length,) = struct.unpack_from("<I", data, pos)
        ctype = data[pos + 4: pos + 8]
        if not all(65 <= c <= 90 or 97 <= c <= 122 or c == 32 or 48 <= c <= 57 for c in ctype):
            raise LtcFormatError(f"invalid chunk type {ctype!r} at byte {pos}")
        if length > MAX_CHUNK_BYTES:
            raise LtcFormatError(f"chunk {ctype.decode()} of {length} bytes exceeds the limit")
        if length > len(data) - pos - 12:
            raise LtcFormatError(f"file is truncated inside chunk {ctype.decode()}")
        payload = data[pos + 8: pos + 8 + length]
        (crc,) = struct.unpack_from("<I", data, pos + 8 + length)
        if zlib.crc32(ctype + payload) != crc:
            raise LtcFormatError(f"CRC mismatch in chunk {ctype.decode()} (the file is damaged)")
        pos += 12 + length
        if ctype == b"END ":
            if length:
                raise LtcFormatError("end chunk must be empty")
            ended = True
            break
        chunks.append((ctype, payload))
    if not ended and not recover:
        raise LtcFormatError("file is truncated (no end chunk)")
    if not ended and pos >= len(data):
        damaged += 1  # the file's tail is lost
    if ended and pos != len(data):
        raise LtcFormatError(f"{len(data) - pos} bytes of trailing data after the end chunk")
    if len(chunks) < 2 or chunks[0][0] != b"HEAD" or chunks[1][0] != b"MODL":
        raise LtcFormatError("file must start with HEAD and MODL chunks")
    head = chunks[0][1]
    if not head:
        raise LtcFormatError("empty header")
    model = ModelId.unpack(chunks[1][1])
    rest = []
    for ctype, payload in chunks[2:]:
        if ctype in (b"HEAD", b"MODL"):
            raise LtcFormatError(f"duplicate {ctype.decode()} chunk")
        if 65 <= ctype[0] <= 90 and ctype not in known:
            raise LtcFormatError(f"unknown critical chunk {ctype.decode()}")
        if 65 <= ctype[0] <= 90 or ctype in known:
            rest.append((ctype, payload))
    return Container((major, minor), head[0], head, model, rest, len(data), damaged)
