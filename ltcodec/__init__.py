"""ltcodec: a learned image and audio codec built on lattice transform coding.

    >>> import ltcodec
    >>> data = ltcodec.encode_image(Image.open("photo.png"), quality=5)   # .ltc bytes
    >>> im = ltcodec.decode_image(data)                                   # a PIL image
    >>> Image.open("photo.ltc")                                           # the Pillow plugin
    >>> data = ltcodec.encode_audio(samples, 48000, kbps=24)              # soundfile's (data, rate)
    >>> samples, rate = ltcodec.decode_audio(data)

Heavy modules (torch) load on first use, so importing ltcodec is cheap and registers the plugin.
"""

from __future__ import annotations

from . import pillow_plugin as _pillow_plugin  # noqa: F401  (registers the LTC format with Pillow)
from .errors import LtcError, LtcFormatError, LtcInputError, LtcModelError

__version__ = "0.1.0"

__all__ = ["encode_image", "decode_image", "image_info", "encode_audio", "decode_audio", "audio_info",
           "encode_audio_file", "decode_audio_file", "LtcError", "LtcFormatError", "LtcInputError",
           "LtcModelError", "__version__"]

_LAZY = {"encode_image": "image", "decode_image": "image", "image_info": "image",
         "encode_audio": "audio", "decode_audio": "audio", "audio_info": "audio",
         "encode_audio_file": "audio", "decode_audio_file": "audio"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ltcodec' has no attribute {name!r}")
