"""Bag-of-features: each image embedded as the mean pre-feature h of its patches.

`embed_images` is the one place that turns images into embeddings; the online kNN monitor, the
evaluation job (locally or inside Ray Data actors) and the GPU script all call it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from empssl_ray.config import PatchConfig
from empssl_ray.devices import to_device
from empssl_ray.method.colour import gray
from empssl_ray.method.patch_plan import plan_patches, render_rows, row_runs
from empssl_ray.method.patches import to_model_input


@torch.no_grad()
def embed_images(
    model: nn.Module,
    images: torch.Tensor,
    num_patches: int,
    patch_size: int,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
    patches: PatchConfig | None = None,
    bf16: bool = False,
    patches_per_forward: int = 0,
    extent: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bag-of-features: the mean pre-feature h over `num_patches` training-style patches.

    Every patch's random parameters are drawn first, then patches are rendered and encoded at
    most `patches_per_forward` at a time and summed per image: peak memory follows that chunk,
    not B x T, and the features are the all-at-once path's (up to float summation order).

    Args:
        model: an `EMPSSLModel` (anything with `.encode`), in eval mode.
        images: (B, C, H, W) uint8 on the model's device.
        num_patches: T, patches averaged per image.
        patch_size: S.
        generator: for reproducible patches (on images' device).
        channels_last: feed the model NHWC tensors.
        patches: the run's patch settings (crop scale, aspect ratio, interpolation), so that
            evaluation cuts patches as training did; None = PatchConfig's defaults. Its
            num_patches and size are not used (T and S are the arguments).
        bf16: run the model (only the model) under bf16 autocast on images' device.
        patches_per_forward: most patches per encoder forward; 0 = all B x T at once.
        extent: (B, 2) letterboxed images' sizes (data.keep_aspect), or None.

    Returns:
        (B, prefeature_dim) float32 embeddings.
    """
    cfg = patches or PatchConfig()
    aspect = (cfg.aspect_ratio[0], cfg.aspect_ratio[1])
    plan = plan_patches(
        images.shape,
        num_patches,
        patch_size,
        generator,
        cfg.crop_scale,
        cfg.interpolation,
        aspect,
        images.device,
        extent,
    )
    most = patches_per_forward if patches_per_forward > 0 else plan.rows
    sums: torch.Tensor | None = None
    for start, stop in row_runs(images.shape[0], num_patches, most):
        # Patches are cut in float32 whatever the caller's autocast: training's patches.
        cut = render_rows(images, plan, start, stop)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            h = model.encode(to_model_input(cut, channels_last)).float()  # type: ignore[operator]
        if sums is None:
            sums = h.new_zeros(images.shape[0], h.shape[1])
        sums.index_add_(0, plan.image_of(start, stop), h)
    assert sums is not None, "no images to embed"
    return sums / num_patches


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, H, W) uint8 images with the encoder's channel count: grey repeated into RGB, RGB
    turned into ITU-R 601 luma (evaluating on a dataset other than the pretraining one)."""
    if images.shape[1] == channels:
        return images
    if channels == 3 and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if channels == 1 and images.shape[1] == 3:
        return gray(images.float()).round_().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"cannot turn {images.shape[1]}-channel images into {channels} channels")


def iterate_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices covering range(n) in order."""
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


@torch.no_grad()
def embed_dataset(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    num_patches: int,
    patch_size: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: str | None = None,
    channels_last: bool = False,
    bf16: bool = False,
    out_device: torch.device | str = "cpu",
    patches: PatchConfig | None = None,
    patches_per_forward: int = 0,
    extents: np.ndarray | None = None,
) -> torch.Tensor:
    """`embed_images` over uint8 images (N, C, H, W) in batches -> (N, D) float32 on out_device.

    Images may already sit on `device` (the GPU script keeps everything there); host images
    bound for a GPU travel pinned. bf16 autocast applies on CUDA only, to the model only.
    `extents` (N, 2): letterboxed images' sizes (data.keep_aspect), or None.
    """
    from tqdm.auto import tqdm

    model.eval()
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    autocast = bf16 and device.type == "cuda"
    out = []
    for sl in tqdm(
        list(iterate_batches(len(images), batch_size)),
        desc=progress,
        disable=progress is None,
        leave=False,
    ):
        batch = to_device(torch.as_tensor(images[sl]), device)
        emb = embed_images(
            model,
            batch,
            num_patches,
            patch_size,
            generator,
            channels_last,
            patches,
            autocast,
            patches_per_forward,
            None if extents is None else torch.as_tensor(extents[sl]),
        )
        out.append(emb.to(out_device))
    return torch.cat(out)
