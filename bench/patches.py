"""Benchmark: augmented patches per second per core, the core's batched `multi_patch` against the
usual pipeline (torchvision.transforms v1 on PIL images, one patch at a time, as the paper lists).

Ours returns uint8 and normalisation happens on the training device; to compare like with like it
is also timed followed by `to_model_input` (float, mean 0.5 / std 0.5), which is what the
reference's ToTensor + Normalize produce. Rounds are interleaved (ref, ours, ours+normalise, ...)
in one run, so that load from other work on a shared machine hits every side alike.

    .venv/bin/python bench/patches.py [--threads 1] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import io
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from empssl_ray.method.patches import multi_patch, to_model_input

GOAL = 10.0  # the speed-up multi_patch should reach over the per-patch PIL pipeline
# The two sides' normalised outputs (values in [-1, 1]) must roughly agree, or main returns 1:
MEAN_TOL = 0.25  # largest |mean ref - mean ours|
STD_TOL = 1.25  # largest ratio between the two stds, either way round
REPO = Path(__file__).resolve().parents[1]
# CIFAR-10 as Parquet beside the repository (../shared/data/cifar10); random pixels without it.
CIFAR = REPO.parent / "shared" / "data" / "cifar10" / "test" / "part-00000.parquet"


class PILGaussianBlur:
    """Blur with p, sigma ~ U(0.1, 2), via PIL (as the EMP-SSL reference code's GBlur)."""

    def __init__(self, p: float = 0.1) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() < self.p:
            return img.filter(ImageFilter.GaussianBlur(random.uniform(0.1, 2.0)))
        return img


class PILSolarize:
    """Solarize at threshold 128 with p, via PIL (as the reference code's Solarization)."""

    def __init__(self, p: float = 0.1) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img, 128) if random.random() < self.p else img


def reference_transform(size: int) -> T.Compose:
    """The paper's per-patch pipeline, PIL image -> normalised float tensor (C, S, S)."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.25, 0.25), ratio=(1.0, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.2)], p=0.8),
            T.RandomGrayscale(p=0.2),
            PILGaussianBlur(p=0.1),
            PILSolarize(p=0.1),
            T.ToTensor(),
            T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )


def load_images(count: int, side: int) -> tuple[list[Image.Image], str]:
    """`count` RGB images of side x side: CIFAR-10 test images when present (resized up for side
    > 32), else random pixels. Returns the images and where they came from."""
    if CIFAR.exists():
        import pyarrow.parquet as pq

        column = pq.read_table(CIFAR, columns=["image"]).column("image").slice(0, count)
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in column.to_pylist()]
        source = "CIFAR-10 test"
    else:
        rng = np.random.default_rng(0)
        images = [
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)
        ]
        source = "random uint8"
    if side != images[0].width:
        images = [im.resize((side, side), Image.Resampling.BICUBIC) for im in images]
    return images, source


def _time_slot(fn: Callable[[], object], inner: int) -> float:
    """Seconds per call of fn, averaged over `inner` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def bench_size(side: int, num_images: int, num_patches: int, rounds: int) -> dict[str, float | str]:
    """Times the three sides interleaved for one image size; returns patches/s of each."""
    pils, source = load_images(num_images, side)
    # (B, C, H, W) uint8, the layout the Ray pipeline hands to multi_patch.
    batch = torch.from_numpy(np.stack([np.asarray(im) for im in pils])).permute(0, 3, 1, 2)
    batch = batch.contiguous()
    tf = reference_transform(side)
    gen = torch.Generator().manual_seed(side)

    def ref() -> torch.Tensor:
        # What a Dataset + DataLoader would do: n calls per image, then collate.
        return torch.stack([torch.stack([tf(im) for _ in range(num_patches)]) for im in pils])

    def ours() -> torch.Tensor:
        return multi_patch(batch, num_patches, side, gen)

    def ours_norm() -> torch.Tensor:
        return to_model_input(multi_patch(batch, num_patches, side, gen))

    # Warm-up, and a check that both sides produce the same kind of thing.
    out_ref, out_ours = ref(), ours_norm()
    assert out_ref.numel() == out_ours.numel() and out_ours.shape[-1] == side, "shape mismatch"
    t_ref, t_ours, t_norm = [_time_slot(ref, 1)], [_time_slot(ours, 1)], [_time_slot(ours_norm, 1)]
    # Ours is far faster: repeat it within a slot to ~1/4 of a reference slot so that timer
    # resolution and one scheduler hiccup do not decide its median.
    inner = max(1, min(50, math.ceil(0.25 * t_ref[0] / t_norm[0])))
    for _ in range(rounds - 1):
        t_ref.append(_time_slot(ref, 1))
        t_ours.append(_time_slot(ours, inner))
        t_norm.append(_time_slot(ours_norm, inner))
    patches = num_images * num_patches
    ref_ps = patches / statistics.median(t_ref)
    ours_ps = patches / statistics.median(t_ours)
    norm_ps = patches / statistics.median(t_norm)
    return {
        "source": source,
        "ref": ref_ps,
        "ours": ours_ps,
        "ours_norm": norm_ps,
        # Same images, same pipeline law: the pixel statistics should roughly agree.
        "mean_ref": out_ref.mean().item(),
        "mean_ours": out_ours.mean().item(),
        "std_ref": out_ref.std().item(),
        "std_ours": out_ours.std().item(),
    }


def outputs_agree(r: Mapping[str, float | str]) -> bool:
    """Whether a `bench_size` result's two pipelines gave roughly the same pixel statistics."""
    mean_ref, mean_ours = float(r["mean_ref"]), float(r["mean_ours"])
    std_ref, std_ours = float(r["std_ref"]), float(r["std_ours"])
    if not (std_ref > 0 and std_ours > 0):
        return False
    return abs(mean_ref - mean_ours) <= MEAN_TOL and max(std_ref, std_ours) <= STD_TOL * min(
        std_ref, std_ours
    )


def main(argv: list[str] | None = None) -> int:
    """Runs both sizes, prints a table and `ratio patches ...` lines.

    Returns 1 (after printing which size) when the two pipelines' outputs do not agree
    (`outputs_agree`), else 0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--images", type=int, default=64, help="images per batch")
    parser.add_argument("--patches", type=int, default=20, help="patches per image")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="image sides")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test settings")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.images, args.patches, args.rounds = [32], 4, 2, 2
    torch.set_num_threads(args.threads)
    random.seed(0)
    torch.manual_seed(0)  # torchvision v1 transforms draw from the global generator

    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"{args.images} images x {args.patches} patches per batch, {args.rounds} rounds"
    )
    print(
        f"{'size':<8}{'ref p/s':>10}{'ours p/s':>11}{'+norm p/s':>11}"
        f"{'mean ref/ours':>16}{'std ref/ours':>15}  images"
    )
    lines, ok = [], True
    for side in args.sizes:
        r = bench_size(side, args.images, args.patches, args.rounds)
        name = f"{side}x{side}"
        print(
            f"{name:<8}{r['ref']:>10.0f}{r['ours']:>11.0f}{r['ours_norm']:>11.0f}"
            f"{r['mean_ref']:>8.3f}/{r['mean_ours']:<7.3f}{r['std_ref']:>7.3f}/"
            f"{r['std_ours']:<7.3f}  {r['source']}"
        )
        ratio = float(r["ours"]) / float(r["ref"])
        ratio_norm = float(r["ours_norm"]) / float(r["ref"])
        lines.append(f"ratio patches {name}: {ratio:.1f}x (goal >= {GOAL:.0f}x)")
        lines.append(f"ratio patches+normalise {name}: {ratio_norm:.1f}x (goal >= {GOAL:.0f}x)")
        if not outputs_agree(r):
            ok = False
            lines.append(f"outputs differ at {name}: mean or std beyond MEAN_TOL / STD_TOL")
    for line in lines:
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
