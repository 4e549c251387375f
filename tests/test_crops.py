"""Crops of any aspect ratio: torchvision's RandomResizedCrop boxes, resampled with grid_sample."""

import math

import pytest
import torch
import torch.nn.functional as F

from empssl_ray.config import PatchConfig
from empssl_ray.method import patches as A
from empssl_ray.method.crops import Boxes, resample_boxes, sample_boxes


def test_boxes_keep_the_area_and_draw_the_aspect_ratio_log_uniformly() -> None:
    boxes = sample_boxes(20_000, 64, 64, 0.25, (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    area, ratio = boxes.height * boxes.width, boxes.width / boxes.height
    assert ((area - 1024).abs() / 1024 < 0.07).all()  # a quarter of 64 x 64, whole pixels
    assert ratio.min() > 0.72 and ratio.max() < 1.39  # 3/4 .. 4/3, up to rounding
    # log-uniform: log(ratio) has mean 0 and the uniform's std on [log 3/4, log 4/3].
    assert abs(ratio.log().mean().item()) < 0.005
    assert ratio.log().std().item() == pytest.approx(2 * math.log(4 / 3) / 12**0.5, rel=0.05)
    assert (boxes.top >= 0).all() and (boxes.top + boxes.height <= 64).all()
    assert (boxes.left >= 0).all() and (boxes.left + boxes.width <= 64).all()
    assert boxes.left.max() + boxes.width[boxes.left.argmax()] == 64  # reaches the far edge
    with pytest.raises(ValueError, match="aspect_ratio"):
        sample_boxes(4, 64, 64, 0.25, (1.5, 1.0))


def test_resampling_a_box_is_interpolating_its_crop() -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g)

    def box(top: float, left: float, h: float, w: float) -> Boxes:
        return Boxes(*(torch.full((2,), float(v)) for v in (top, left, h, w)))

    # The whole image at its own size: the pixels themselves.
    assert torch.equal(resample_boxes(images, box(0, 0, 32, 32), 1, 32, "bilinear"), images)
    # A 12 x 20 box at (4, 6), upsampled to 40 x 40: interpolate's result on the crop, away
    # from the crop's edge (there grid_sample reads the image's pixels outside the box).
    out = resample_boxes(images, box(4, 6, 12, 20), 1, 40, "bicubic").int()
    crop = images[:, :, 4:16, 6:26].float()
    ref = F.interpolate(crop, size=(40, 40), mode="bicubic", align_corners=False)
    ref = ref.round().clamp(0, 255).int()
    assert (out[..., 8:-8, 8:-8] - ref[..., 8:-8, 8:-8]).abs().max() <= 1


def test_multi_patch_with_aspect_ratios_on_both_paths() -> None:
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8, generator=g)
    cfg = PatchConfig(num_patches=6, aspect_ratio=[0.75, 1.333], interpolation="bicubic")
    grouped, sync_free = (
        A.cut_patches(images, cfg, 32, torch.Generator().manual_seed(5), sync_free=s)
        for s in (False, True)
    )
    assert grouped.shape == (3, 6, 3, 32, 32) and grouped.dtype == torch.uint8
    assert torch.equal(grouped, sync_free)  # the boxes are resampled once, before both paths
    square = A.cut_patches(images, PatchConfig(num_patches=6), 32, torch.Generator().manual_seed(5))
    assert not torch.equal(grouped, square)
