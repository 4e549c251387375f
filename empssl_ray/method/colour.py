"""Per-pixel patch ops on float patches in [0, 1]: colour jitter, grayscale, Gaussian blur.

Every op takes a batch of patches x (M, C, S, S) and per-patch parameters (M,) and returns new
patches. The jitter comes in two forms: `jitter_in_order` for patches that share one op order
(the grouped CPU path), and `jitter_blended` for patches of any orders at once with no host-side
grouping, so nothing waits for the device (the GPU path).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from empssl_ray.devices import device_constant

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's grayscale
_HUE_CENTRES = (3.0, 5.0, 1.0)  # h6 (hue in sixths of a turn) where r, g, b are lowest


def unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1], NCHW: the inverse of `quantise`.

    One pass changes layout and dtype; NCHW keeps every op after it on contiguous planes.
    """
    return x.to(torch.float32, memory_format=torch.contiguous_format).mul_(1 / 255)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] -> uint8, rounding to the nearest level (in place on x first)."""
    return x.mul_(255).round_().to(torch.uint8)


def gray(x: torch.Tensor) -> torch.Tensor:
    """(M, 3, H, W) -> (M, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Scales pixels by f (M,). f = 1 returns x exactly."""
    return (x * f[:, None, None, None]).clamp_(0, 1)


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blends with the patch's mean luma by f (M,). f = 1 returns x exactly."""
    mean = (gray(x) if x.shape[1] == 3 else x).mean(dim=(1, 2, 3), keepdim=True)
    f = f[:, None, None, None]
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blends with the luma image by f (M,). f = 1 returns x exactly."""
    f = f[:, None, None, None]
    return (f * x + (1 - f) * gray(x)).clamp_(0, 1)


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotates hue by `shift` (M,) turns: RGB -> HSV, h += shift, HSV -> RGB, branch-free.

    Hue h6 is in sixths of a turn, in [0, 6). HSV -> RGB is, for channel k, v - chroma *
    clamp(2 - d_k, 0, 1), with d_k the circular distance from h6 to the hue where channel k is
    lowest (3, 5 and 1 for r, g, b). Branches become lerps with 0/1 weights: torch.where has no
    vectorised CPU kernel. A zero shift is not exactly the identity (float round trip).
    """
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    # Grey pixels (delta 0) get hue 0 instead of NaN; their output ignores the hue anyway.
    inv = delta.clamp_min(1e-12).reciprocal_()
    r, g, b = x.unbind(1)
    hue6 = torch.lerp((r - g).mul_(inv).add_(4), (b - r).mul_(inv).add_(2), (g == maxc).float())
    hue6 = torch.lerp(hue6, (g - b).mul_(inv), (r == maxc).float())  # red wins ties, as HSV does
    hue6 = torch.remainder(hue6.add_(6 * shift[:, None, None]), 6)
    centres = device_constant(_HUE_CENTRES, x.device).view(1, 3, 1, 1)
    dist = (hue6[:, None] - centres).abs_()
    dist = torch.minimum(dist, 6 - dist)  # circular distance, in sixths of a turn
    return dist.neg_().add_(2).clamp_(0, 1).mul_(delta[:, None]).neg_().add_(maxc[:, None])


JITTER_OPS = (brightness, contrast, saturation, hue)  # op k's factor is column k of `factors`


def jitter_in_order(x: torch.Tensor, ops: list[int], factors: torch.Tensor) -> torch.Tensor:
    """ColorJitter on patches sharing one op order. Args: x (M, C, S, S), factors (M, 4)."""
    for op in ops:
        if op < 2 or x.shape[1] == 3:  # saturation and hue leave one channel unchanged
            x = JITTER_OPS[op](x, factors[:, op])
    return x


def jitter_blended(
    x: torch.Tensor, order: torch.Tensor, factors: torch.Tensor, on: torch.Tensor
) -> torch.Tensor:
    """ColorJitter on patches of any op orders, with no data-dependent control flow.

    At each of the 4 slots every op runs on every patch: brightness, contrast and saturation
    with factor 1 (exactly the identity) where the patch's slot holds another op or it has no
    jitter, hue blended in with `torch.where` (a zero shift is not exact). Four times the
    arithmetic of the grouped path, none of its host-side grouping: the GPU path.

    Args:
        x: (M, C, S, S) float patches in [0, 1].
        order: (M, 4) long, a permutation of the 4 ops per patch.
        factors: (M, 4) float: brightness, contrast, saturation factors; hue shift in turns.
        on: (M,) bool, jitter applied at all.

    Returns:
        (M, C, S, S) float.
    """
    ones = torch.ones_like(factors[:, 0])
    for slot in range(4):
        here = order[:, slot]
        for op in range(4 if x.shape[1] == 3 else 2):
            active = on & (here == op)
            if op < 3:
                x = JITTER_OPS[op](x, torch.where(active, factors[:, op], ones))
            else:
                x = torch.where(active[:, None, None, None], hue(x, factors[:, 3]), x)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with a per-patch sigma. Args: x (M, C, S, S), sigma (M,).

    The kernel covers +-3 sigma of the widest blur (`max_sigma`), reflected at the borders.
    """
    m, c, s, _ = x.shape
    radius = min(math.ceil(3 * max_sigma), s - 1)
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
