"""A one-line description of the machine a result was measured on (CPU model, cores, torch)."""

from __future__ import annotations

import os

from ltcodec.training.card import cpu_name


def machine() -> str:
    cpu = cpu_name()
    try:
        import torch

        extra = f", torch {torch.__version__}"
    except ImportError:
        extra = ""
    return f"{cpu}, {os.cpu_count()} cores{extra}"
