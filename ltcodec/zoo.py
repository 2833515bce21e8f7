"""The model registry: shipped models by name, or any model file by path, loaded offline.

Models are looked up, in order, in the folders of ``$LTCODEC_MODELS`` (os.pathsep-separated), the
``models/`` folder of a source checkout, and ``<prefix>/share/ltcodec/models`` of an installed wheel.
A name resolves to ``<name>.safetensors``.  Files are identified by name *and* SHA-256: a decoder
refuses a model whose digest differs from the one stored in the file it decodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from pathlib import Path

from .errors import LtcModelError

__all__ = ["DEFAULT_IMAGE_MODEL", "DEFAULT_AUDIO_MODEL", "model_dirs", "find_model", "load_image_model",
           "load_audio_model", "model_for_file", "list_models", "file_sha256"]

DEFAULT_IMAGE_MODEL = "ltc-image-e8"
DEFAULT_AUDIO_MODEL = "ltc-audio-e8"

_cache: dict[tuple[str, float], object] = {}
_lock = threading.Lock()


def model_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("LTCODEC_MODELS", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parent.parent / "models")
    dirs.append(Path(sys.prefix) / "share" / "ltcodec" / "models")
    return dirs


def find_model(name_or_path: str) -> Path:
    """Resolve a model name or a path to an existing model file."""
    p = Path(name_or_path)
    if p.suffix == ".safetensors" or os.sep in name_or_path or (os.altsep and os.altsep in name_or_path):
        if p.is_file():
            return p
        raise LtcModelError(f"model file {name_or_path} does not exist")
    for d in model_dirs():
        cand = d / f"{name_or_path}.safetensors"
        if cand.is_file():
            return cand
    raise LtcModelError(f"model {name_or_path!r} is not installed (looked in {', '.join(map(str, model_dirs()))})")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load(name_or_path: str, cls):
    path = find_model(name_or_path)
    key = (str(path.resolve()), path.stat().st_mtime)
    with _lock:
        model = _cache.get(key)
        if model is None:
            model = cls.from_file(path, path.stem)
            _cache[key] = model
    if not isinstance(model, cls):
        raise LtcModelError(f"model {name_or_path!r} is not an {cls.kind} model")
    return model


def load_image_model(name_or_path: str | None = None):
    """Load (and cache) an image model; ``None`` means the default model."""
    from .image_codec import ImageCodecModel

    return _load(name_or_path or DEFAULT_IMAGE_MODEL, ImageCodecModel)


def load_audio_model(name_or_path: str | None = None):
    """Load (and cache) an audio model; ``None`` means the default model."""
    from .audio_codec import AudioCodecModel

    return _load(name_or_path or DEFAULT_AUDIO_MODEL, AudioCodecModel)


def model_for_file(model_id, model, kind: str):
    """The model that decodes a file whose MODL chunk is ``model_id``: ``model`` (an instance, a name or
    a path) or else the installed model of that name; its SHA-256 must match the file's."""
    from .audio_codec import AudioCodecModel
    from .image_codec import ImageCodecModel

    cls = ImageCodecModel if kind == "image" else AudioCodecModel
    if isinstance(model, cls):
        m = model
    else:
        try:
            m = _load(model or model_id.name, cls)
        except LtcModelError:
            if model:
                raise
            raise LtcModelError(f"this file needs model {model_id.name!r} (sha256 {model_id.hex[:12]}…), "
                                "which is not installed") from None
    if m.sha256 != model_id.hex:
        raise LtcModelError(f"this file was encoded with {model_id.name} sha256 {model_id.hex[:12]}…, "
                            f"but the model found has sha256 {m.sha256[:12]}…")
    return m


def list_models() -> list[dict]:
    """Every model file found, with its kind, path and digest."""
    seen, out = set(), []
    for d in model_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.safetensors")):
            if f.stem in seen:
                continue
            seen.add(f.stem)
            try:
                with open(f, "rb") as fh:
                    n = int.from_bytes(fh.read(8), "little")
                    meta = json.loads(fh.read(min(n, 10_000_000))).get("__metadata__", {})
            except (OSError, ValueError):
                meta = {}
            out.append({"name": f.stem, "kind": meta.get("kind", "?"), "path": str(f), "sha256": file_sha256(f)})
    return out
