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

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from empssl_ray.config import PatchConfig
from empssl_ray.devices import device_constant
from empssl_ray.method.colour import (
    gaussian_blur,
    gray,
    jitter_blended,
    jitter_in_order,
    quantise,
    unit_float,
)
from empssl_ray.method.crops import (
    crop_and_flip,
    crop_rows,
)

P_FLIP, P_JITTER, P_GRAY, P_BLUR, P_SOLARIZE = 0.5, 0.8, 0.2, 0.1, 0.1
JITTER = (0.4, 0.4, 0.4, 0.2)  # brightness, contrast, saturation, hue
SIGMA = (0.1, 2.0)  # Gaussian blur sigma range, pixels
SOLARIZE_AT = 128  # uint8 level at and above which solarize inverts
CHUNK_BYTES = 2 << 20  # float pixels rendered at a time on CPU (cache-sized)
_NO_JITTER = 256  # sort key of patches without colour jitter (after the 24 op orders)


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


def patch_size_for(patches: PatchConfig, image_size: int) -> int:
    """S: the configured patch size, else the dataset's image side (the paper's choice)."""
    return patches.size or image_size


def patch_seed(seed: int, *stream: int | str) -> int:
    """Seed of one patch generator: a trainer rank from a step on, an actor of a pool, ...

    A hash, not arithmetic like seed * 1000 + rank: every (seed, *stream) gets its own sequence,
    so a rank reseeded at a resume never replays another rank's or its own earlier patches, and
    no actor repeats a trainer's.

    Args:
        seed: the run's seed (run.seed).
        stream: what tells this generator apart, e.g. (rank, step) or ("cutter", pid).
    """
    key = ":".join(str(part) for part in (seed, *stream))
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed takes up to 2**64 - 1; keep 63


def multi_patch(
    images: torch.Tensor,
    num_patches: int,
    size: int,
    generator: torch.Generator | None = None,
    crop_scale: float = 0.25,
    interpolation: str = "bilinear",
    sync_free: bool | None = None,
    aspect_ratio: tuple[float, float] = (1.0, 1.0),
    extent: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cuts `num_patches` independently augmented patches from every image.

    Args:
        images: (B, C, H, W) uint8, C in {1, 3}, on CPU or GPU.
        num_patches: n, patches per image.
        size: S, output side in pixels.
        generator: a torch.Generator on images' device, for reproducible patches.
        crop_scale: fraction of the image area each crop covers.
        interpolation: "bilinear" or "bicubic" resize of the crop to S.
        sync_free: the path that never waits for the device (see `render_patches`); None picks
            it on any device but the CPU. Tests force either path on the CPU.
        aspect_ratio: (min, max) width/height of the crops, drawn log-uniformly per patch;
            (1, 1) cuts square crops as row copies, anything else resamples boxes
            (`crops`), after which the same flip/colour/blur/solarize ops follow.
        extent: (B, 2) (height, width) of each letterboxed image's pixels (data.keep_aspect);
            crops are drawn on each image's own size. None: every image fills H x W.

    Returns:
        (B, n, C, S, S) uint8.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"multi_patch expects uint8 (B, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    from empssl_ray.method.patch_plan import plan_patches, render_rows  # it builds on this module

    b, c = images.shape[:2]
    ratio = (aspect_ratio[0], aspect_ratio[1])
    plan = plan_patches(
        images.shape,
        num_patches,
        size,
        generator,
        crop_scale,
        interpolation,
        ratio,
        images.device,
        extent,
    )
    x = render_rows(images, plan, 0, plan.rows, sync_free)
    return x.view(b, num_patches, c, size, size)


def cut_patches(
    images: torch.Tensor,
    cfg: PatchConfig,
    size: int,
    generator: torch.Generator | None = None,
    num_patches: int | None = None,
    sync_free: bool | None = None,
    extent: torch.Tensor | None = None,
) -> torch.Tensor:
    """`multi_patch` with a run's patch settings: training and evaluation cut patches alike.

    Args:
        images: (B, C, H, W) uint8.
        cfg: crop scale, aspect ratio, interpolation (and n, unless `num_patches` is given).
        size: S (the run's resolved patch size).
        generator: on images' device.
        num_patches: n; None = cfg.num_patches (evaluation passes its own T).
        sync_free: see `multi_patch`.
        extent: (B, 2) letterboxed images' sizes (the rows' `extent`), or None.

    Returns:
        (B, n, C, S, S) uint8.
    """
    return multi_patch(
        images,
        num_patches or cfg.num_patches,
        size,
        generator,
        cfg.crop_scale,
        cfg.interpolation,
        sync_free,
        (cfg.aspect_ratio[0], cfg.aspect_ratio[1]),
        extent,
    )


def to_model_input(patches: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 patches (..., C, S, S) -> float (N, C, S, S) normalised with mean 0.5, std 0.5.

    Runs on the training device after transfer, so the wire carries 1 byte per value.
    """
    x = patches.reshape(-1, *patches.shape[-3:]).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


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

    device = torch.device(device)
    lo = device_constant((1 - JITTER[0], 1 - JITTER[1], 1 - JITTER[2], -JITTER[3]), device)
    hi = device_constant((1 + JITTER[0], 1 + JITTER[1], 1 + JITTER[2], JITTER[3]), device)
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
    images: torch.Tensor,
    params: PatchParams,
    crop: int,
    size: int,
    interpolation: str = "bilinear",
    sync_free: bool | None = None,
) -> torch.Tensor:
    """Applies drawn parameters. Args: images (B, C, H, W) uint8. Returns (N, C, S, S) uint8.

    Two paths, picked by `sync_free` (None: sync-free on any device but the CPU):

    - grouped (CPU): patches are processed sorted by their jitter op order (24 permutations,
      plus "no jitter"), so every jitter op runs on a contiguous slice, and in chunks of about
      CHUNK_BYTES of float pixels: a chunk stays in cache across the dozen passes of colour
      jitter, and its buffers are small enough for the allocator to reuse, where one 60 MB
      buffer per pass is fresh memory and pays a page fault per 4 KiB. The group sizes and the
      masked subsets are read on the host: free on a CPU, a stall on a GPU.
    - sync-free (GPU): every op runs on all patches at once, masks blended with `torch.where`
      (see `colour.jitter_blended`), resizing in float: nothing waits for the device.

    The same parameters give the same patches on both paths up to the resize: identical with
    no resize; float resizing rounds once where the CPU's uint8 kernel rounds (and clamps) after
    each of its two passes, so bilinear 2x upsampling moves about a quarter of the values by one
    grey level and none by more; bicubic's overshoots, clamped between the uint8 passes, move a
    few values by up to 6 levels on photo-like images (tests/test_augment.py holds both).
    """
    if sync_free is None:
        sync_free = images.device.type != "cpu"
    rows = crop_rows(images, crop)
    n, c = params.image.numel(), images.shape[1]
    if sync_free:
        every = torch.arange(n, device=images.device)
        return _render(rows, images.shape, params, every, None, crop, size, interpolation)
    weights = device_constant((64, 16, 4, 1), params.order.device, torch.int64)
    order_code = (params.order * weights).sum(1)
    group = torch.where(params.jitter, order_code, torch.full_like(order_code, _NO_JITTER))
    perm = group.argsort()
    rendered = torch.empty((n, c, size, size), dtype=torch.uint8, device=images.device)
    side = min(crop, size)
    step = max(1, CHUNK_BYTES // (4 * c * side * side))
    for start in range(0, n, step):
        idx = perm[start : start + step]
        rendered[start : start + step] = _render(
            rows, images.shape, params, idx, group[idx], crop, size, interpolation
        )
    return rendered.index_select(0, perm.argsort())  # back to the caller's order


def _render(
    rows: torch.Tensor,
    shape: torch.Size,
    params: PatchParams,
    idx: torch.Tensor,
    group: torch.Tensor | None,
    crop: int,
    size: int,
    interpolation: str,
) -> torch.Tensor:
    """Renders patches `idx` from `crop_rows` of images of `shape`; returns (M, C, S, S) uint8.

    `group` holds the jitter groups of `idx` (sorted) on the grouped path, None on the
    sync-free path. Colour jitter and grayscale are per-pixel maps, so they run at the smaller
    of the crop and the output side: before an upsampling resize, after a downsampling one.
    EMP-SSL upsamples (a quarter-area crop back to full size), so this is 4x fewer pixels for
    the costliest ops. Running them before a bilinear upsample changes pixels only where a
    non-linear map (clamp, hue) meets an edge: on CIFAR-10 test images, 0.54 grey levels on
    average, less than the choice of bilinear over bicubic resizing changes (2.7).
    tests/test_augment_reference.py holds every op to torchvision's at full resolution, and
    this reordering to under one level. Blur and solarize keep their place after the resize:
    their sigma and threshold are defined on the output patch.
    """
    blend = group is None
    x = crop_and_flip(rows, shape, params, idx, crop)  # (M, C, crop, crop) uint8, channels-last
    if crop > size:
        x = _resize(x, size, interpolation, in_float=blend)
    x = unit_float(x)
    if blend:
        x = jitter_blended(x, params.order[idx], params.factors[idx], params.jitter[idx])
    else:
        _jitter_groups(x, group, params.factors[idx])  # type: ignore[arg-type]
    if x.shape[1] == 3:
        _apply_to(x, params.gray[idx], lambda p, i: gray(p).expand_as(p), blend)
    x = quantise(x)
    if crop < size:
        x = x.contiguous(memory_format=torch.channels_last)
        x = _resize(x, size, interpolation, in_float=blend)
    x = x.contiguous()  # NCHW: the subsets below and the caller's copy move whole patches
    sigma = params.sigma[idx]
    _apply_to(
        x,
        params.blur[idx],
        lambda p, i: quantise(gaussian_blur(unit_float(p), sigma[i], SIGMA[1])),
        blend,
    )
    solarize = lambda p, i: torch.where(p >= SOLARIZE_AT, 255 - p, p)  # noqa: E731
    _apply_to(x, params.solarize[idx], solarize, blend)
    return x


def _jitter_groups(x: torch.Tensor, group: torch.Tensor, factors: torch.Tensor) -> None:
    """Jitters sorted patches x (M, C, S, S) in place, one op order per contiguous group."""
    codes, counts = torch.unique_consecutive(group, return_counts=True)
    start = 0
    for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
        if code != _NO_JITTER:
            ops = [(code >> shift) & 3 for shift in (6, 4, 2, 0)]
            part = x[start : start + count]
            part.copy_(jitter_in_order(part, ops, factors[start : start + count]))
        start += count


def _resize(x: torch.Tensor, size: int, interpolation: str, in_float: bool) -> torch.Tensor:
    """(M, C, s, s) uint8 -> (M, C, size, size) uint8, antialiased when shrinking.

    uint8 channels-last has a vectorised CPU kernel (3-5x faster than float NCHW) and rounds like
    PIL's resize; CUDA has no uint8 kernel, so it resizes in float there (and `in_float` asks
    for that path anywhere).
    """
    src = x.float() if in_float or x.device.type != "cpu" else x
    out = F.interpolate(
        src,
        size=(size, size),
        mode=interpolation,
        align_corners=False,
        antialias=x.shape[-1] > size,
    )
    return out if out.dtype == torch.uint8 else out.round_().clamp_(0, 255).to(torch.uint8)


def _apply_to(x: torch.Tensor, mask: torch.Tensor, fn, blend: bool) -> None:
    """x[mask] = fn(x[mask], indices) in place.

    The grouped path touches only the selected patches (the subset's size is read on the host);
    `blend` runs fn on every patch and keeps the selected ones with `torch.where`.
    """
    if blend:
        every = torch.arange(len(x), device=x.device)
        x.copy_(torch.where(mask[:, None, None, None], fn(x, every), x))
        return
    idx = mask.nonzero().squeeze(1)
    if idx.numel():
        x.index_copy_(0, idx, fn(x.index_select(0, idx), idx))
