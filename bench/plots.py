"""The PSNR–bpp figure shared by the image reports."""

from __future__ import annotations

from pathlib import Path


def psnr_bpp_axes(size: tuple[float, float]):
    """A figure and axes for PSNR (RGB) against bits per pixel, drawn off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB, RGB)")
    ax.grid(alpha=0.3)
    return fig, ax


def save(fig, ax, title: str, path: Path, legend_size: int = 8) -> None:
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
