"""A one-line description of the machine a result was measured on (CPU model, cores, torch)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        extra = f", torch {torch.__version__}"
    except ImportError:
        extra = ""
    return f"{cpu}, {os.cpu_count()} cores{extra}"
