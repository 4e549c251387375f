"""Crops of any aspect ratio (torchvision's RandomResizedCrop boxes), resampled to S x S.

The square crops of `augment` (the paper's CIFAR setting) are copies of whole pixel rows. Crops
whose width/height ratio varies per patch (the paper's ImageNet setting: ratio from 3/4 to 4/3)
have no common shape to copy, so each is resampled straight from its image with `grid_sample`,
all patches of a chunk of images in one call and with no data-dependent control flow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BOX_CHUNK_BYTES = 256 << 20  # float pixels resampled per grid_sample call (bounds the buffer)


@dataclass
class Boxes:
    """Crop boxes of N patches in source pixels (every field (N,) float, integer-valued)."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor


def sample_boxes(
    n: int,
    height: int,
    width: int,
    scale: float,
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Boxes:
    """Boxes covering `scale` of the image area, width/height log-uniform in `ratio`.

    As torchvision's RandomResizedCrop with scale=(scale, scale): the side lengths are rounded to
    whole pixels; a box that would not fit is clamped to the image (torchvision retries, then
    falls back to a centre crop; with the paper's quarter area and 3/4..4/3 every box fits).
    """
    lo, hi = ratio
    if not 0 < lo <= hi:
        raise ValueError(f"patches.aspect_ratio must be [min, max], 0 < min <= max; got {ratio}")

    def rand() -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device)

    area = scale * height * width
    aspect = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * rand())
    box_w = torch.sqrt(area * aspect).round_().clamp_(1, width)
    box_h = torch.sqrt(area / aspect).round_().clamp_(1, height)
    top = (rand() * (height - box_h + 1)).floor_()
    left = (rand() * (width - box_w + 1)).floor_()
    return Boxes(top, left, box_h, box_w)


def resample_boxes(
    images: torch.Tensor, boxes: Boxes, num_patches: int, size: int, interpolation: str
) -> torch.Tensor:
    """Cuts and resizes every box to size x size.

    Pixel centres map as `F.interpolate(..., align_corners=False)` maps them from the crop, but
    taps at a box's edge read the image pixels just outside it (interpolate would repeat the
    edge). No antialiasing: right for EMP-SSL, which upsamples (a quarter-area crop back to full
    size); boxes larger than the output alias.

    Args:
        images: (B, C, H, W) uint8.
        boxes: B * num_patches boxes, image-major (image i's patches are rows i*n .. i*n+n-1).
        num_patches: n.
        size: S.
        interpolation: "bilinear" or "bicubic".

    Returns:
        (B * n, C, S, S) uint8.
    """
    b, c, h, w = images.shape
    frac = (torch.arange(size, device=images.device, dtype=torch.float32) + 0.5) / size  # (S,)
    # Normalised coordinates (-1 and 1 are the image's outer pixel edges) of each output pixel.
    gx = (boxes.left[:, None] + frac * boxes.width[:, None]) * (2 / w) - 1  # (N, S)
    gy = (boxes.top[:, None] + frac * boxes.height[:, None]) * (2 / h) - 1  # (N, S)
    grid = torch.stack(
        [gx[:, None, :].expand(-1, size, -1), gy[:, :, None].expand(-1, -1, size)], dim=-1
    ).view(b, num_patches * size, size, 2)  # each image's n patches stacked down the rows
    per_image = 4 * c * num_patches * size * size
    step = max(1, BOX_CHUNK_BYTES // per_image)
    out = torch.empty((b, num_patches, c, size, size), dtype=torch.uint8, device=images.device)
    for start in range(0, b, step):
        part = F.grid_sample(
            images[start : start + step].float(),
            grid[start : start + step],
            mode=interpolation,
            padding_mode="border",
            align_corners=False,
        )  # (b', C, n*S, S)
        part = part.view(-1, c, num_patches, size, size).transpose(1, 2)
        out[start : start + step] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out.view(b * num_patches, c, size, size)
