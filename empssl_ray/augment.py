"""Multi-patch augmentation as batched tensor ops (CPU or GPU), one random draw per patch.

EMP-SSL needs 20-200 patches per image, so the usual one-PIL-image-at-a-time pipeline is the
bottleneck. Here all patches of a batch go through each step together: the crop is a gather
(every crop has the same side), colour jitter runs op by op on the patches whose random order puts
that op in that slot, and blur is one grouped convolution. Patches leave as uint8: four times
fewer bytes to ship than float32; `to_model_input` normalises on the training device.

Pipeline per patch (paper): RandomResizedCrop(scale=(a, a), ratio=1) -> flip(0.5) ->
ColorJitter(0.4, 0.4, 0.4, 0.2) with p=0.8 in random op order -> grayscale(0.2) ->
Gaussian blur(0.1, sigma ~ U(0.1, 2)) -> solarize(0.1, threshold 128/255).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

P_FLIP, P_JITTER, P_GRAY, P_BLUR, P_SOLARIZE = 0.5, 0.8, 0.2, 0.1, 0.1
JITTER = (0.4, 0.4, 0.4, 0.2)  # brightness, contrast, saturation, hue
SIGMA = (0.1, 2.0)  # Gaussian blur sigma range, pixels
SOLARIZE_AT = 128 / 255
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's grayscale


@dataclass
class PatchParams:
    """Random parameters of N patches (every field has N rows)."""

    image: torch.Tensor  # (N,) long: index of the source image
    top: torch.Tensor  # (N,) long: crop's first row
    left: torch.Tensor  # (N,) long: crop's first column
    flip: torch.Tensor  # (N,) bool
    jitter: torch.Tensor  # (N,) bool: colour jitter applied at all
    factors: torch.Tensor  # (N, 4) float: brightness, contrast, saturation factors; hue shift
    order: torch.Tensor  # (N, 4) long: a permutation of the 4 jitter ops per patch
    gray: torch.Tensor  # (N,) bool
    blur: torch.Tensor  # (N,) bool
    sigma: torch.Tensor  # (N,) float: blur sigma in pixels
    solarize: torch.Tensor  # (N,) bool


def crop_side(height: int, width: int, scale: float) -> int:
    """Side of the square crop covering `scale` of the image area (never larger than the image)."""
    return max(1, min(height, width, round(math.sqrt(scale * height * width))))


def sample_patch_params(
    num_images: int,
    num_patches: int,
    height: int,
    width: int,
    crop: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> PatchParams:
    """Draws independent parameters for num_images * num_patches patches (image-major order)."""
    n = num_images * num_patches

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    lo = torch.tensor([1 - JITTER[0], 1 - JITTER[1], 1 - JITTER[2], -JITTER[3]], device=device)
    hi = torch.tensor([1 + JITTER[0], 1 + JITTER[1], 1 + JITTER[2], JITTER[3]], device=device)
    return PatchParams(
        image=torch.arange(num_images, device=device).repeat_interleave(num_patches),
        top=(rand(n) * (height - crop + 1)).long(),
        left=(rand(n) * (width - crop + 1)).long(),
        flip=rand(n) < P_FLIP,
        jitter=rand(n) < P_JITTER,
        factors=lo + (hi - lo) * rand(n, 4),
        order=rand(n, 4).argsort(dim=1),
        gray=rand(n) < P_GRAY,
        blur=rand(n) < P_BLUR,
        sigma=SIGMA[0] + (SIGMA[1] - SIGMA[0]) * rand(n),
        solarize=rand(n) < P_SOLARIZE,
    )


def render_patches(
    images: torch.Tensor, params: PatchParams, crop: int, size: int, interpolation: str = "bilinear"
) -> torch.Tensor:
    """Applies drawn parameters. Args: images (B, C, H, W) uint8. Returns (N, C, S, S) uint8.

    Patches are processed sorted by their jitter op order (24 permutations, plus "no jitter"), so
    every jitter op runs on a contiguous slice instead of a scattered subset; the result is put
    back in the caller's order at the end.
    """
    order_code = (params.order * torch.tensor([64, 16, 4, 1], device=params.order.device)).sum(1)
    group = torch.where(params.jitter, order_code, torch.full_like(order_code, 256))
    perm = group.argsort()
    x = _crop_and_flip(images, params, perm, crop)  # (N, C, crop, crop) uint8, channels-last
    if crop != size:
        # uint8 channels-last has a vectorised CPU kernel (3-5x faster than float NCHW) and rounds
        # like PIL's resize; CUDA has no uint8 kernel, so it resizes in float there.
        src = x if x.device.type == "cpu" else x.float()
        x = F.interpolate(
            src, size=(size, size), mode=interpolation, align_corners=False, antialias=crop > size
        )
    x = x.contiguous().float().div_(255)  # NCHW in uint8 first: the layout change moves 1 byte
    codes, counts = torch.unique_consecutive(group[perm], return_counts=True)
    start = 0
    for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
        if code != 256:
            ops = [(code >> shift) & 3 for shift in (6, 4, 2, 0)]
            x[start : start + count] = _jitter(
                x[start : start + count], ops, params.factors[perm[start : start + count]]
            )
        start += count
    gray, blur, solarize, sigma = (
        t[perm] for t in (params.gray, params.blur, params.solarize, params.sigma)
    )
    if x.shape[1] == 3:
        _apply_to(x, gray, lambda p, i: _gray(p).expand_as(p))
    _apply_to(x, blur, lambda p, i: _gaussian_blur(p, sigma[i]))
    _apply_to(x, solarize, lambda p, i: torch.where(p >= SOLARIZE_AT, 1 - p, p))
    # Quantise before restoring the caller's order: the gather then moves 1 byte per value, not 4.
    return x.mul_(255).round_().to(torch.uint8)[perm.argsort()]


def _crop_and_flip(
    images: torch.Tensor, params: PatchParams, perm: torch.Tensor, crop: int
) -> torch.Tensor:
    """Gathers the crops in `perm` order, flipped ones read right to left (a flip for free).

    Returns (N, C, crop, crop) uint8 in channels-last layout.
    """
    hwc = images.permute(0, 2, 3, 1)  # gather whole pixels (all channels) at once
    offs = torch.arange(crop, device=images.device)
    flip = params.flip[perm, None]
    rows = (params.top[perm, None] + offs)[:, :, None]  # (N, crop, 1)
    cols = params.left[perm, None] + torch.where(flip, crop - 1 - offs, offs)  # (N, crop)
    x = hwc[params.image[perm, None, None], rows, cols[:, None, :]]  # (N, crop, crop, C)
    return x.permute(0, 3, 1, 2)


def multi_patch(
    images: torch.Tensor,
    num_patches: int,
    size: int,
    generator: torch.Generator | None = None,
    crop_scale: float = 0.25,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Cuts `num_patches` independently augmented patches from every image.

    Args:
        images: (B, C, H, W) uint8, C in {1, 3}, on CPU or GPU.
        num_patches: n, patches per image.
        size: S, output side in pixels.
        generator: a torch.Generator on images' device, for reproducible patches.
        crop_scale: fraction of the image area each crop covers.
        interpolation: "bilinear" or "bicubic" resize of the crop to S.

    Returns:
        (B, n, C, S, S) uint8.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"multi_patch expects uint8 (B, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    b, c, h, w = images.shape
    crop = crop_side(h, w, crop_scale)
    params = sample_patch_params(b, num_patches, h, w, crop, generator, images.device)
    x = render_patches(images, params, crop, size, interpolation)
    return x.view(b, num_patches, c, size, size)


def to_model_input(patches: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 patches (..., C, S, S) -> float (N, C, S, S) normalised with mean 0.5, std 0.5.

    Runs on the training device after transfer, so the wire carries 1 byte per value.
    """
    x = patches.reshape(-1, *patches.shape[-3:]).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _apply_to(x: torch.Tensor, mask: torch.Tensor, fn) -> None:  # type: ignore[no-untyped-def]
    """x[mask] = fn(x[mask], indices) in place, touching only the selected patches."""
    idx = mask.nonzero().squeeze(1)
    if idx.numel():
        x.index_copy_(0, idx, fn(x.index_select(0, idx), idx))


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _jitter(x: torch.Tensor, ops: list[int], factors: torch.Tensor) -> torch.Tensor:
    """ColorJitter on patches sharing one op order. Args: x (M, C, S, S), factors (M, 4)."""
    for op in ops:
        if op < 2 or x.shape[1] == 3:  # saturation and hue leave one channel unchanged
            x = _JITTER_OPS[op](x, factors[:, op])
    return x


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f[:, None, None, None]).clamp_(0, 1)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = (_gray(x) if x.shape[1] == 3 else x).mean(dim=(1, 2, 3), keepdim=True)
    f = f[:, None, None, None]
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f[:, None, None, None]
    return (f * x + (1 - f) * _gray(x)).clamp_(0, 1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotates hue by `shift` turns: RGB -> HSV, h += shift, HSV -> RGB, in few passes."""
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    # Grey pixels (delta 0) get hue 0 instead of NaN; their output ignores the hue anyway.
    inv = delta.clamp_min(1e-12).reciprocal_()
    r, g, b = x.unbind(1)
    hue6 = torch.where(
        r == maxc, (g - b) * inv, torch.where(g == maxc, (b - r) * inv + 2, (r - g) * inv + 4)
    )
    hue6 += 6 * shift[:, None, None]
    # HSV -> RGB without branches: channel k is v - chroma * clamp(min(t, 4 - t), 0, 1),
    # t = (n_k + hue6) mod 6 with n = 5, 3, 1 for r, g, b.
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device)[None, :, None, None]
    t = torch.remainder(hue6[:, None] + n, 6)
    return maxc[:, None] - delta[:, None] * torch.minimum(t, 4 - t).clamp_(0, 1)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-patch sigma. Args: x (M, C, S, S), sigma (M,)."""
    m, c, s, _ = x.shape
    radius = min(math.ceil(3 * SIGMA[1]), s - 1)  # covers +-3 sigma of the widest blur
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (M*C, k)
    flat = x.reshape(1, m * c, s, s)
    flat = F.conv2d(
        F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=m * c
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=m * c
    )
    return flat.view(m, c, s, s)
