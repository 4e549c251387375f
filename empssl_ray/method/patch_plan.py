"""Patches drawn first, rendered in slices: bounded memory for any number of patches.

Evaluation at the paper's size (128 patches of 224 px for each of 256 images) would render 32,768
patches, 19 GB of float pixels, and push them through the encoder in one forward. Drawing every
random parameter first (a few numbers per patch) and rendering any run of them later gives the
same patches whatever the slicing, so a slice-at-a-time caller gets the features of the
all-at-once path and its memory is bounded by the slice. `patches.multi_patch` is the
all-at-once case of the same two calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch

from empssl_ray.method.crops import Boxes, crop_side, resample_boxes, sample_boxes
from empssl_ray.method.patches import PatchParams, render_patches, sample_patch_params


@dataclass
class PatchPlan:
    """Every random draw for `num_patches` patches of each of `num_images` images.

    Square crops (aspect ratio 1): `params` crop the images directly (side `crop`). Other aspect
    ratios: `boxes` are resampled to S x S first, then `params` (one per box) act on those.
    Rows are image-major: image i's patches are rows i*n .. i*n+n-1.
    """

    num_images: int
    num_patches: int
    size: int  # S
    interpolation: str
    params: PatchParams
    crop: int  # square crops' side in source pixels (S for the boxes path)
    boxes: Boxes | None = None

    @property
    def rows(self) -> int:
        return self.num_images * self.num_patches

    def image_of(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start,) long: the image each row of the run belongs to."""
        return torch.arange(start, stop, device=self.params.flip.device) // self.num_patches


def plan_patches(
    shape: torch.Size | tuple[int, ...],
    num_patches: int,
    size: int,
    generator: torch.Generator | None,
    crop_scale: float,
    interpolation: str,
    aspect_ratio: tuple[float, float],
    device: torch.device | str,
    extent: torch.Tensor | None = None,
) -> PatchPlan:
    """Draws the parameters of every patch of images of `shape` (B, C, H, W); see multi_patch.

    Args:
        extent: (B, 2) (height, width) of each letterboxed image's pixels, or None (the whole
            H x W). Crops are then boxes drawn on each image's own size, whatever their ratio.
    """
    b, _, h, w = shape
    if tuple(aspect_ratio) == (1.0, 1.0) and extent is None:
        crop = crop_side(h, w, crop_scale)
        params = sample_patch_params(b, num_patches, h, w, crop, generator, device)
        return PatchPlan(b, num_patches, size, interpolation, params, crop)
    ratio = (float(aspect_ratio[0]), float(aspect_ratio[1]))
    heights: int | torch.Tensor = h
    widths: int | torch.Tensor = w
    if extent is not None:  # each patch's own image's size
        sizes = extent.to(device=device, dtype=torch.float32).repeat_interleave(num_patches, 0)
        heights, widths = sizes[:, 0], sizes[:, 1]
    boxes = sample_boxes(b * num_patches, heights, widths, crop_scale, ratio, generator, device)
    # The boxes become whole S x S "images"; the same flip/colour/blur/solarize ops follow.
    params = sample_patch_params(b * num_patches, 1, size, size, size, generator, device)
    return PatchPlan(b, num_patches, size, interpolation, params, size, boxes)


def render_rows(
    images: torch.Tensor, plan: PatchPlan, start: int, stop: int, sync_free: bool | None = None
) -> torch.Tensor:
    """Rows start..stop of the plan as (stop - start, C, S, S) uint8 patches.

    A run must cover whole images or lie inside one image (what `row_runs` yields): the boxes
    path resamples per image.
    """
    n, size, interpolation = plan.num_patches, plan.size, plan.interpolation
    first, last = start // n, (stop - 1) // n
    whole = start % n == 0 and (stop % n == 0 or stop == plan.rows)
    if not whole and first != last:
        raise ValueError(f"rows {start}..{stop} straddle images: use row_runs")
    images = images[first : last + 1]  # only the run's images are copied into crop rows
    params = _take(plan.params, start, stop)
    with torch.autocast(images.device.type, enabled=False):  # float32 pixels, whatever the caller
        if plan.boxes is None:
            params.image = params.image - first
            return render_patches(images, params, plan.crop, size, interpolation, sync_free)
        boxes = Boxes(*(getattr(plan.boxes, f.name)[start:stop] for f in fields(Boxes)))
        crops = resample_boxes(images, boxes, n if whole else stop - start, size, interpolation)
        params.image = params.image - start  # each crop is its own "image", numbered from 0
        return render_patches(crops, params, size, size, interpolation, sync_free)


def row_runs(num_images: int, num_patches: int, most: int) -> Iterator[tuple[int, int]]:
    """Runs of at most `most` rows (at least one patch) covering every row in order: whole
    images while an image's patches fit in `most`, else slices of one image's patches."""
    n, most = num_patches, max(1, most)
    if n <= most:
        step = (most // n) * n
        for start in range(0, num_images * n, step):
            yield start, min(num_images * n, start + step)
        return
    for image in range(num_images):
        for first in range(0, n, most):
            yield image * n + first, image * n + min(n, first + most)


def _take(params: PatchParams, start: int, stop: int) -> PatchParams:
    return PatchParams(**{f.name: getattr(params, f.name)[start:stop] for f in fields(params)})
