"""Multi-patch augmentation: shapes, per-op rates, and what each op does to pixels."""

import math

import pytest
import torch

from empssl_ray.method import patches as A
from empssl_ray.method.crops import crop_side


def _images(b: int = 8, c: int = 3, side: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, side, side), dtype=torch.uint8, generator=g)


def _plain_params(n: int, crop: int = 16) -> A.PatchParams:
    """Parameters with every random op switched off (crop at the origin, no flip)."""

    def off() -> torch.Tensor:  # a fresh mask each: tests switch single ops on
        return torch.zeros(n, dtype=torch.bool)

    zeros = torch.zeros(n, dtype=torch.long)
    return A.PatchParams(
        image=torch.arange(n),
        top=zeros,
        left=zeros.clone(),
        flip=off(),
        jitter=off(),
        factors=torch.ones(n, 4),
        order=torch.arange(4).repeat(n, 1),
        gray=off(),
        blur=off(),
        sigma=torch.ones(n),
        solarize=off(),
    )


@pytest.mark.parametrize("c,side,size", [(3, 32, 32), (1, 28, 16), (3, 64, 64)])
def test_shapes_dtypes_and_determinism(c: int, side: int, size: int) -> None:
    x = _images(4, c, side)
    out = A.multi_patch(x, 5, size, torch.Generator().manual_seed(1))
    assert out.shape == (4, 5, c, size, size) and out.dtype == torch.uint8
    again = A.multi_patch(x, 5, size, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert not torch.equal(out[:, 0], out[:, 1])  # patches of one image differ


def test_rates_of_random_ops_match_probabilities() -> None:
    n_img, n_patch = 200, 100  # 20,000 draws: a 4-sigma band of a rate p is 4 * sqrt(p(1-p)/N)
    p = A.sample_patch_params(n_img, n_patch, 32, 32, 16, torch.Generator().manual_seed(0))
    total = n_img * n_patch
    for mask, prob in [
        (p.flip, 0.5),
        (p.jitter, 0.8),
        (p.gray, 0.2),
        (p.blur, 0.1),
        (p.solarize, 0.1),
    ]:
        band = 4 * math.sqrt(prob * (1 - prob) / total)
        assert abs(mask.float().mean().item() - prob) < band
    assert p.sigma.min() >= 0.1 and p.sigma.max() <= 2.0
    assert (p.factors[:, :3] >= 0.6).all() and (p.factors[:, :3] <= 1.4).all()
    assert (p.factors[:, 3].abs() <= 0.2).all()
    assert (p.order.sort(dim=1).values == torch.arange(4)).all()  # each row a permutation
    # Crops stay inside the image and reach both edges.
    assert p.top.min() == 0 and p.top.max() == 16 and p.left.max() == 16


def test_grayscale_rate_end_to_end() -> None:
    # A saturated colour image: only the grayscale op can make all three channels equal.
    x = torch.zeros(50, 3, 32, 32, dtype=torch.uint8)
    x[:, 0], x[:, 1], x[:, 2] = 200, 40, 90
    out = A.multi_patch(x, 100, 32, torch.Generator().manual_seed(3)).flatten(0, 1).int()
    gray = ((out[:, 0] == out[:, 1]) & (out[:, 1] == out[:, 2])).flatten(1).all(1).float().mean()
    assert abs(gray.item() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 5000)


def test_crop_covers_a_quarter_of_the_area() -> None:
    assert crop_side(32, 32, 0.25) == 16 and crop_side(64, 64, 0.25) == 32
    assert crop_side(28, 28, 0.25) == 14
    # With every other op off, a 16x16 crop at the origin rendered at size 16 (no resize) is
    # exactly the image's top-left 16x16 corner, a quarter of its area.
    x = _images(3)
    out = A.render_patches(x, _plain_params(3), crop=16, size=16)
    assert torch.equal(out, x[:, :, :16, :16])


def test_flip_mirrors_the_crop() -> None:
    x = _images(4)
    params = _plain_params(4)
    plain = A.render_patches(x, params, crop=16, size=32)
    params.flip[:] = True
    assert torch.equal(A.render_patches(x, params, crop=16, size=32), plain.flip(-1))


def test_solarize_inverts_bright_pixels() -> None:
    x = _images(4)
    params = _plain_params(4)
    params.solarize[:] = True
    out = A.render_patches(x, params, crop=16, size=16).int()
    src = x[:, :, :16, :16].int()
    assert torch.equal(out, torch.where(src >= 128, 255 - src, src))


def test_jitter_brightness_and_hue_identity() -> None:
    x = _images(4)
    params = _plain_params(4)
    params.jitter[:] = True
    params.factors[:, 3] = 0.0  # zero hue shift: HSV round trip must give the input back
    assert (A.render_patches(x, params, 16, 16).int() - x[:, :, :16, :16].int()).abs().max() <= 1
    params.factors[:, 0] = 0.5  # half brightness
    out = A.render_patches(x, params, 16, 16).int()
    assert (out - (x[:, :, :16, :16].float() * 0.5).round().int()).abs().max() <= 1
    params.factors[:, 0] = 1.0
    params.factors[:, 3] = 0.5  # half a turn: a pure red pixel becomes cyan
    red = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    red[:, 0] = 255
    out = A.render_patches(red, params, 16, 16)
    assert (out[:, 0] == 0).all() and (out[:, 1] == 255).all() and (out[:, 2] == 255).all()


def test_blur_smooths_and_keeps_mean() -> None:
    x = _images(4)
    params = _plain_params(4)
    params.blur[:] = True
    params.sigma[:] = 2.0
    out = A.render_patches(x, params, 16, 16).float()
    src = x[:, :, :16, :16].float()
    assert out.std() < 0.5 * src.std()
    assert abs(out.mean() - src.mean()) < 3


def test_to_model_input_normalises_to_unit_range() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 1, 2).expand(2, 3, 1, 1, 2)
    out = A.to_model_input(x)
    assert out.shape == (6, 1, 1, 2) and out.min() == -1 and out.max() == 1


def test_rejects_float_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        A.multi_patch(torch.rand(2, 3, 32, 32), 2, 32)


def test_chunking_does_not_change_the_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    # CPUs render in cache-sized chunks, GPUs in one: the same patches either way. Chunks of 7
    # patches cut across the jitter-order groups, as the default chunks do on bigger batches.
    x = _images(16)
    params = A.sample_patch_params(16, 10, 32, 32, 16, torch.Generator().manual_seed(0))
    monkeypatch.setattr(A, "CHUNK_BYTES", 7 * 4 * 3 * 16 * 16)
    chunked = A.render_patches(x, params, 16, 32)
    monkeypatch.setattr(A, "CHUNK_BYTES", 1 << 40)
    assert torch.equal(A.render_patches(x, params, 16, 32), chunked)


def _smooth(b: int, seed: int) -> torch.Tensor:
    """Photo-like images: random colours every 8 pixels, bicubic in between."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(b, 3, 4, 4, generator=g) * 255
    big = torch.nn.functional.interpolate(small, size=(32, 32), mode="bicubic")
    return big.clamp(0, 255).round().byte()


@pytest.mark.parametrize("images", [_images(16), _smooth(16, 1)], ids=["noise", "smooth"])
def test_grouped_and_sync_free_paths_differ_only_by_the_resize(images: torch.Tensor) -> None:
    def both(size: int, interpolation: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
        grouped, sync_free = (
            A.multi_patch(
                images,
                20,
                size,
                torch.Generator().manual_seed(4),
                interpolation=interpolation,
                sync_free=free,
            )
            for free in (False, True)
        )
        return grouped, sync_free

    grouped, sync_free = both(16)  # crop side 16 == output side: no resize at all
    assert grouped.shape == sync_free.shape == (16, 20, 3, 16, 16)
    assert grouped.dtype == sync_free.dtype == torch.uint8
    assert torch.equal(grouped, sync_free)
    grouped, sync_free = both(32)  # bilinear 2x upsampling: float vs uint8 rounding
    diff = (grouped.int() - sync_free.int()).abs().float()
    assert diff.max() <= 1 and 0 < diff.mean() < 0.35
    grouped, sync_free = both(32, "bicubic")  # overshoots clamped between the uint8 passes
    diff = (grouped.int() - sync_free.int()).abs().float()
    assert diff.mean() < 0.6
