"""Crops: square ones as copies of whole pixel rows, boxes of any aspect ratio resampled.

Square crops (the paper's CIFAR setting) all have one shape: each is `crop` row copies out of
one overlapping view of the images. Crops whose width/height ratio varies per patch (the paper's
ImageNet setting: ratio from 3/4 to 4/3, torchvision's RandomResizedCrop boxes) have no common
shape to copy, so each is resampled straight from its image with `grid_sample`, all patches of a
chunk of images in one call and with no data-dependent control flow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

BOX_CHUNK_BYTES = 256 << 20  # float pixels resampled per grid_sample call (bounds the buffer)


class Placement(Protocol):
    """Where N square crops sit: what `crop_and_flip` reads of `patches.PatchParams`."""

    image: torch.Tensor  # (N,) long: index of the source image
    top: torch.Tensor  # (N,) long: crop's first row
    left: torch.Tensor  # (N,) long: crop's first column
    flip: torch.Tensor  # (N,) bool


def crop_side(height: int, width: int, scale: float) -> int:
    """Side of the square crop covering `scale` of the image area (never larger than the image)."""
    return max(1, min(height, width, round(math.sqrt(scale * height * width))))


def crop_rows(images: torch.Tensor, crop: int) -> torch.Tensor:
    """Every run of `crop` pixels in the images and their mirror images, as one overlapping view.

    Args: images (B, C, H, W) uint8. Returns (2*B*H*W - crop + 1, crop*C) uint8: row k holds the
    `crop` whole pixels (channels interleaved) from flat pixel k on. A crop is then `crop` rows
    of this view, which `index_select` copies with one memcpy each: 6x faster than gathering
    single bytes.
    """
    c = images.shape[1]
    both = torch.cat([images, images.flip(-1)])  # flipped crops read the mirror image
    flat = both.permute(0, 2, 3, 1).contiguous().view(-1)
    return flat.as_strided((flat.numel() // c - crop + 1, crop * c), (c, 1))


def crop_and_flip(
    rows: torch.Tensor, shape: torch.Size, params: Placement, idx: torch.Tensor, crop: int
) -> torch.Tensor:
    """Copies the crops of patches `idx` out of `crop_rows` of images of `shape` (B, C, H, W).

    Returns (M, C, crop, crop) uint8 in channels-last layout.
    """
    b, c, h, w = shape
    flip = params.flip[idx]
    image = params.image[idx] + b * flip  # the mirror of image i is image b + i
    left = torch.where(flip, w - crop - params.left[idx], params.left[idx])
    offs = torch.arange(crop, device=rows.device) * w
    first = ((image * h + params.top[idx]) * w + left)[:, None] + offs  # (M, crop) flat pixels
    x = rows.index_select(0, first.view(-1)).view(-1, crop, crop, c)
    return x.permute(0, 3, 1, 2)


@dataclass
class Boxes:
    """Crop boxes of N patches in source pixels (every field (N,) float, integer-valued)."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor


def sample_boxes(
    n: int,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: float,
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Boxes:
    """Boxes covering `scale` of the image area, width/height log-uniform in `ratio`.

    As torchvision's RandomResizedCrop with scale=(scale, scale): the side lengths are rounded to
    whole pixels; a box that would not fit is clamped to the image (torchvision retries, then
    falls back to a centre crop; with the paper's quarter area and 3/4..4/3 every box fits).

    Args:
        height, width: the image's size, or each box's image's size as (n,) float tensors
            (letterboxed images of their own sizes, all at their canvas's top left).
    """
    lo, hi = ratio
    if not 0 < lo <= hi:
        raise ValueError(f"patches.aspect_ratio must be [min, max], 0 < min <= max; got {ratio}")

    def rand() -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device)

    area = scale * height * width
    aspect = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * rand())
    box_w = torch.minimum(torch.sqrt(area * aspect).round_().clamp_(min=1), _as(width, aspect))
    box_h = torch.minimum(torch.sqrt(area / aspect).round_().clamp_(min=1), _as(height, aspect))
    top = (rand() * (height - box_h + 1)).floor_()
    left = (rand() * (width - box_w + 1)).floor_()
    return Boxes(top, left, box_h, box_w)


def _as(side: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return side.to(like) if isinstance(side, torch.Tensor) else torch.full_like(like, side)


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
