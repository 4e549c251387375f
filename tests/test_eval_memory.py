"""Evaluation's memory is bounded by `eval.patches_per_forward`, not by batch x patches, and the
chunked features are the all-at-once path's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from empssl_ray.config import ModelConfig, PatchConfig
from empssl_ray.evaluation.features import embed_images
from empssl_ray.method.models import build_model
from empssl_ray.method.patch_plan import row_runs

REPO = Path(__file__).resolve().parents[1]
# Peak resident memory of one embedding in a fresh process (its own counters, ru_maxrss), in
# MiB above what the model and the images already held: argv = side, T, B, chunk, width.
PEAK_SCRIPT = """
import resource, sys
import torch
from empssl_ray.config import ModelConfig
from empssl_ray.evaluation.features import embed_images
from empssl_ray.method.models import build_model

torch.set_num_threads(2)
side, t, b, chunk, width = (int(a) for a in sys.argv[1:6])
cfg = ModelConfig(backbone="resnet18-imagenet", width=width, prefeature_dim=8 * width,
                  hidden_dim=16, proj_dim=8)
model = build_model(cfg, 3).eval()
images = torch.randint(0, 256, (b, 3, side, side), dtype=torch.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
emb = embed_images(model, images, t, side, torch.Generator().manual_seed(0),
                   patches_per_forward=chunk)
assert emb.shape == (b, 8 * width) and torch.isfinite(emb).all()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def peak_growth_mib(side: int, patches: int, images: int, chunk: int, width: int = 4) -> int:
    args = [str(v) for v in (side, patches, images, chunk, width)]
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return int(out.stdout.split()[-1])


def chunk_bound_mib(chunk: int, side: int) -> float:
    """What a chunk may cost: its float pixels a few times over (rendering buffers, the model
    input, the first activations at reduced width) and 100 MiB of allocator slack."""
    return 6 * chunk * 3 * side * side * 4 / 2**20 + 100


@pytest.mark.parametrize("patches,most", [(5, 1), (5, 3), (5, 5), (5, 12), (5, 40), (4, 100)])
def test_row_runs_cover_each_row_once_in_whole_images_or_inside_one(patches, most) -> None:
    runs = list(row_runs(6, patches, most))
    assert [r for start, stop in runs for r in range(start, stop)] == list(range(6 * patches))
    for start, stop in runs:
        assert 0 < stop - start <= max(most, 1)
        whole = start % patches == 0 and stop % patches == 0
        assert whole or start // patches == (stop - 1) // patches


@pytest.mark.parametrize(
    "cfg",
    [PatchConfig(), PatchConfig(aspect_ratio=[0.75, 1.333], interpolation="bicubic")],
    ids=["square", "boxes"],
)
@pytest.mark.parametrize("most", [1, 3, 5, 12, 0])
def test_chunked_features_are_the_all_at_once_features(cfg: PatchConfig, most: int) -> None:
    model_cfg = ModelConfig(
        backbone="resnet-narrow", width=4, prefeature_dim=8, hidden_dim=8, proj_dim=4
    )
    model = build_model(model_cfg, 3).eval()
    images = torch.randint(
        0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )

    def embed(chunk: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(7)
        return embed_images(model, images, 5, 16, gen, patches=cfg, patches_per_forward=chunk)

    torch.testing.assert_close(embed(most), embed(30), rtol=1e-5, atol=1e-6)


def test_peak_memory_follows_the_chunk_not_the_batch() -> None:
    """224 px patches, 128 per image, 256 per forward: 8 images and 32 images (1,024 and 4,096
    patches; all at once they would need 0.6 and 2.4 GB of float pixels alone) peak alike."""
    small, large = peak_growth_mib(224, 128, 8, 256), peak_growth_mib(224, 128, 32, 256)
    bound = chunk_bound_mib(256, 224)
    assert small < bound and large < bound, (small, large, bound)
    assert large < small + 100, (small, large)  # 4x the images, not 4x the memory


@pytest.mark.slow
def test_paper_size_evaluation_batch_fits_in_a_chunk_bound() -> None:
    """The ImageNet-100 evaluation batch: 256 images x 128 patches of 224 px (32,768 patches,
    19 GB of float pixels at once) through a reduced-width ResNet-18, 512 patches a forward."""
    growth = peak_growth_mib(224, 128, 256, 512)
    assert growth < chunk_bound_mib(512, 224), growth
