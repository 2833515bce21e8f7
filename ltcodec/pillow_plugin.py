"""Pillow plugin: once ``ltcodec`` is imported, ``Image.open("photo.ltc")`` and ``im.save("x.ltc")`` work.

Save options (``im.save(path, "LTC", quality=5)``): ``quality`` 1 … 8 or ``bpp``, and ``model``.
"""

from __future__ import annotations

from PIL import Image, ImageFile

from .container import sniff

__all__ = ["LtcImageFile"]


def _accept(prefix: bytes) -> bool:
    return sniff(prefix)


class LtcImageFile(ImageFile.ImageFile):
    format = "LTC"
    format_description = "ltcodec lattice transform coded image"

    def _open(self) -> None:
        from .image import image_info

        data = self.fp.read()
        info = image_info(data)  # validates the whole container before Pillow sees a size
        self._ltc_data = data
        self._mode = info.mode
        self._size = (info.width, info.height)
        self.info["ltc_quality"] = info.quality
        self.info["ltc_model"] = info.model
        self.tile = [ImageFile._Tile("raw", (0, 0, info.width, info.height), 0, (info.mode, 0, 1))]

    def load(self):
        data = getattr(self, "_ltc_data", None)
        if data is not None:
            from .image import decode_image

            im = decode_image(data)
            im.load()
            self.im = im.im
            self.info.update({k: v for k, v in im.info.items() if k in ("icc_profile", "exif")})
            self._ltc_data = None
            self.tile = []
            self.readonly = 0
        return Image.Image.load(self)


def _save(im: Image.Image, fp, filename) -> None:
    from .image import encode_image

    opts = im.encoderinfo
    fp.write(encode_image(im, quality=opts.get("quality"), bpp=opts.get("bpp"), model=opts.get("model"),
                          refine=opts.get("refine", 0)))


Image.register_open(LtcImageFile.format, LtcImageFile, _accept)
Image.register_save(LtcImageFile.format, _save)
Image.register_extension(LtcImageFile.format, ".ltc")
Image.register_mime(LtcImageFile.format, "image/x-ltc")
