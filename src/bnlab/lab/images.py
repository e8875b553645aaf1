"""Image grids of digits, written as PNG (Pillow) atomically.

torchvision's make_grid/save_image would do this, but torchvision is not usable here; a grid of
single-channel 28x28 images is a reshape and a transpose.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bnlab.lab.runs import atomic_write_bytes

__all__ = ["grid", "grid_png", "save_grid"]


def grid(images: torch.Tensor, nrow: int = 10, pad: int = 2, value_range=(-1.0, 1.0)) -> np.ndarray:
    """Tile images (B, 784) or (B, H, W) into one uint8 array (rows * (H + pad), ...).

    Values are mapped from ``value_range`` to 0..255 and clipped (the notebook's ``denorm``).
    """
    imgs = images.detach().float().cpu()
    if imgs.dim() == 2:
        side = math.isqrt(imgs.shape[1])
        imgs = imgs.view(-1, side, side)
    b, h, w = imgs.shape
    lo, hi = value_range
    imgs = ((imgs - lo) / (hi - lo)).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    ncol = min(nrow, b)
    nrows = math.ceil(b / ncol)
    canvas = torch.zeros(nrows * (h + pad) + pad, ncol * (w + pad) + pad, dtype=torch.uint8)
    for k in range(b):
        r, c = divmod(k, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = imgs[k]
    return canvas.numpy()


def grid_png(images: torch.Tensor, nrow: int = 10, scale: int = 2) -> bytes:
    """A grid of images as grayscale PNG bytes, upscaled ``scale`` times (nearest)."""
    arr = grid(images, nrow=nrow)
    img = Image.fromarray(arr, mode="L")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_grid(path: str | Path, images: torch.Tensor, nrow: int = 10, scale: int = 2) -> None:
    """Write a grid of images as a grayscale PNG file, atomically."""
    atomic_write_bytes(path, grid_png(images, nrow=nrow, scale=scale))
