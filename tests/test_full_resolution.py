"""Full-resolution patches (data.keep_aspect): prepared images keep their shape and the pixels a
224 px quarter-area crop needs, and crops are drawn on each image's own size as the reference's
RandomResizedCrop(224, scale=(0.25, 0.25), ratio=(3/4, 4/3)) draws them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from empssl_ray.config import DataConfig, PatchConfig
from empssl_ray.data.datasets import DatasetError, open_dataset
from empssl_ray.data.datasets.images import letterbox
from empssl_ray.data.prepare import prepare
from empssl_ray.data.read_plan import load_pieces
from empssl_ray.method.crops import Boxes, resample_boxes
from empssl_ray.method.patch_plan import plan_patches
from empssl_ray.method.patches import cut_patches

CANVAS = 640  # the ImageNet presets' data.image_size
RATIO = (3 / 4, 4 / 3)
# (width, height) of the folder's images: larger than the canvas both ways, and one smaller.
SIZES = {"wide": (900, 600), "tall": (500, 700), "small": (300, 200)}


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth RGB image (H, W, 3) uint8 with detail at every scale, unlike noise or flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    waves = [np.sin(x / rng.uniform(3, 40) + y / rng.uniform(3, 40)) for _ in range(3)]
    return (127.5 + 127 * np.stack(waves, -1)).astype(np.uint8)


def stretched(patches: torch.Tensor) -> int:
    """Patches (..., C, S, S) uint8 whose every column, or every row, is one value: crops of
    the letterbox's repeated edge beyond an image, never of the waves inside it."""
    x = patches.reshape(-1, *patches.shape[-3:]).int()
    flat_y = (x.amax(-2) - x.amin(-2)).amax((-2, -1)) <= 1
    flat_x = (x.amax(-1) - x.amin(-1)).amax((-2, -1)) <= 1
    return int((flat_y | flat_x).sum())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("folder")
    originals = {}
    for split in ("train", "test"):
        for k, (name, (w, h)) in enumerate(SIZES.items()):
            folder = root / split / f"class{k % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            originals[name] = photo(w, h, k)
            Image.fromarray(originals[name]).save(folder / f"{name}.png")
    out = str(tmp_path_factory.mktemp("parquet"))
    source = DataConfig(name="imagefolder", root=str(root), image_size=CANVAS, keep_aspect=True)
    prepare(source, out, progress=False)
    return out, originals


def read_back(out: str, split: str) -> dict[str, np.ndarray]:
    cfg = DataConfig(name="parquet", root=out, image_size=CANVAS, keep_aspect=True)
    dataset = open_dataset(cfg, split)
    rows, _ = load_pieces([(0, 0, len(dataset), 0)], dataset, None)
    return rows


def test_prepared_images_keep_their_shape_and_the_resolution_crops_need(prepared) -> None:
    out, originals = prepared
    rows = read_back(out, "test")  # test rows keep the folder's (sorted) order
    extents = {tuple(e) for e in rows["extent"].tolist()}
    # Scaled down only where the longer side exceeds the canvas; aspect kept to a pixel.
    assert extents == {(427, 640), (640, 457), (200, 300)}
    by_height = sorted(SIZES.values(), key=lambda size: size[1])
    for (h, w), (ow, oh) in zip(sorted(extents), by_height, strict=True):
        assert abs(w / h - ow / oh) < 2 / min(h, w)
    # A quarter-area crop keeps at least 224 real pixels across for every image that needed
    # scaling (the reference's crops of ImageNet's ~500x375 originals have about 220).
    for h, w in extents:
        if max(h, w) == CANVAS:
            assert math.sqrt(0.25 * h * w) >= 224 * 0.95
    # The small image is stored as it was (lossless, never enlarged), letterboxed by its edges.
    small = next(i for i, e in enumerate(rows["extent"].tolist()) if e == [200, 300])
    image = rows["image"][small].transpose(1, 2, 0)
    assert np.array_equal(image[:200, :300], originals["small"])
    assert np.array_equal(image, letterbox(originals["small"], CANVAS))


def test_crops_are_drawn_on_each_image_like_the_reference_transform() -> None:
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    draws = 4000
    for h, w in ((427, 640), (640, 457)):
        extent = torch.tensor([[h, w]])
        plan = plan_patches(
            (1, 3, CANVAS, CANVAS),
            draws,
            224,
            torch.Generator().manual_seed(1),
            0.25,
            "bicubic",
            RATIO,
            "cpu",
            extent,
        )
        boxes = plan.boxes
        assert boxes is not None
        assert (boxes.top + boxes.height <= h).all() and (boxes.left + boxes.width <= w).all()
        ours = stats(boxes.height, boxes.width, boxes.top, boxes.left, h, w)
        image = torch.zeros(3, h, w)
        ref = [RandomResizedCrop.get_params(image, [0.25, 0.25], list(RATIO)) for _ in range(draws)]
        top, left, bh, bw = (torch.tensor(v, dtype=torch.float32) for v in zip(*ref, strict=True))
        theirs = stats(bh, bw, top, left, h, w)
        for key in ours:
            # Means within 4 standard errors of the difference of two samples of `draws`.
            tolerance = 4 * math.sqrt(2 / draws) * max(ours[key][1], theirs[key][1], 1e-3)
            assert abs(ours[key][0] - theirs[key][0]) < tolerance, (key, ours, theirs)
            assert ours[key][1] == pytest.approx(theirs[key][1], rel=0.1, abs=2e-3), key


def stats(bh, bw, top, left, h: int, w: int) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of a crop's area fraction, log aspect and centre."""
    values = {
        "area": bh * bw / (h * w),
        "log_aspect": torch.log(bw / bh),
        "centre_y": (top + bh / 2) / h,
        "centre_x": (left + bw / 2) / w,
    }
    return {k: (v.mean().item(), v.std().item()) for k, v in values.items()}


def test_a_crop_of_a_letterboxed_image_is_the_crop_of_the_image_alone() -> None:
    image = torch.from_numpy(photo(500, 350, 7)).permute(2, 0, 1)[None].contiguous()
    canvas = torch.from_numpy(letterbox(photo(500, 350, 7), CANVAS)).permute(2, 0, 1)[None]
    plan = plan_patches(
        canvas.shape,
        64,
        224,
        torch.Generator().manual_seed(2),
        0.25,
        "bicubic",
        RATIO,
        "cpu",
        torch.tensor([[350, 500]]),
    )
    boxes: Boxes = plan.boxes  # type: ignore[assignment]
    alone = resample_boxes(image, boxes, 64, 224, "bicubic")
    boxed = resample_boxes(canvas.contiguous(), boxes, 64, 224, "bicubic")
    # Same source pixels, including the edge taps (the letterbox repeats the edge as the
    # border does); float coordinates normalised by different sides differ in the last bits.
    assert (alone.int() - boxed.int()).abs().max().item() <= 1


def test_the_training_stream_cuts_patches_from_each_image_s_own_extent(prepared) -> None:
    out, _ = prepared
    rows = read_back(out, "train")
    images = torch.from_numpy(rows["image"])
    patches = cut_patches(
        images,
        PatchConfig(num_patches=4, size=224, interpolation="bicubic", aspect_ratio=list(RATIO)),
        224,
        torch.Generator().manual_seed(0),
        extent=torch.from_numpy(rows["extent"]),
    )
    assert patches.shape == (3, 4, 3, 224, 224) and patches.dtype == torch.uint8


def test_the_trainer_cuts_inside_each_image_and_not_on_its_canvas(prepared) -> None:
    from empssl_ray.config import ModelConfig, PretrainConfig
    from empssl_ray.method.training import Trainer

    out, _ = prepared
    rows = read_back(out, "train")
    cfg = PretrainConfig()
    cfg.model = ModelConfig(
        backbone="resnet-narrow", width=4, prefeature_dim=32, hidden_dim=32, proj_dim=16
    )
    cfg.patches.num_patches, cfg.patches.size, cfg.patches.aspect_ratio = 24, 32, list(RATIO)
    cfg.optim.batch_size = 3
    batch = {"image": torch.from_numpy(rows["image"]), "extent": torch.from_numpy(rows["extent"])}
    trainer = Trainer(cfg, in_channels=3, image_size=CANVAS, steps_total=1)
    passed: list[torch.Tensor | None] = []
    cut = trainer.patches_from_images

    def recording(images: torch.Tensor, extent: torch.Tensor | None = None) -> torch.Tensor:
        passed.append(extent)
        return cut(images, extent)

    trainer.patches_from_images = recording  # type: ignore[method-assign]
    trainer.run_epoch([batch])
    assert len(passed) == 1 and passed[0] is not None  # the batch's own extent, passed on
    assert torch.equal(passed[0], batch["extent"])
    assert trainer.fixed_patches is not None and stretched(trainer.fixed_patches) == 0
    # On the canvas, boxes of the small image's letterbox land beyond it (the check can fail).
    canvas = cut_patches(batch["image"], cfg.patches, 32, torch.Generator().manual_seed(0))
    assert stretched(canvas) > 0


def test_keep_aspect_needs_a_canvas_and_a_format_that_decodes_images() -> None:
    with pytest.raises(DatasetError, match="data.keep_aspect=true needs"):
        open_dataset(DataConfig(name="imagefolder", root="/nowhere", keep_aspect=True), "train")
    with pytest.raises(DatasetError, match="data.keep_aspect=true needs"):
        open_dataset(DataConfig(name="cifar10", image_size=64, keep_aspect=True), "train")


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("on_trainer", [False, True])
def test_the_ray_stream_carries_each_image_s_extent_to_where_patches_are_cut(
    prepared, on_trainer: bool
) -> None:
    from empssl_ray.config import RayConfig
    from empssl_ray.on_ray.stream import patch_stream

    out, _ = prepared
    cfg = DataConfig(name="parquet", root=out, image_size=CANVAS, keep_aspect=True)
    ray_cfg = RayConfig(
        aug_max_actors=1,
        aug_cpus_per_actor=0.5,
        read_cpus=0.25,
        aug_batch_size=2,
        patches_on_trainer=on_trainer,
    )
    patches = PatchConfig(
        num_patches=16, size=32, interpolation="bicubic", aspect_ratio=[0.75, 1.3333333]
    )
    ds, info, rows = patch_stream(open_dataset(cfg, "train"), patches, ray_cfg, 0, carry=("id",))
    assert info.keep_aspect and rows == 3
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    ids = np.concatenate([b["id"] for b in batches])
    assert sorted(ids.tolist()) == [0, 1, 2]
    if on_trainer:  # the trainer cuts: the extent travels with the image
        extents = {
            int(i): tuple(e) for b in batches for i, e in zip(b["id"], b["extent"], strict=True)
        }
        expected = read_back(out, "train")
        assert extents == {
            int(i): tuple(e) for i, e in zip(expected["id"], expected["extent"], strict=True)
        }
    else:  # the actors cut inside each image: no crop of the letterbox's edge
        assert all(b["patches"].shape[1:] == (16, 3, 32, 32) for b in batches)
        assert sum(stretched(torch.from_numpy(b["patches"])) for b in batches) == 0


@pytest.mark.usefixtures("ray_session")
def test_a_run_trains_and_evaluates_on_full_resolution_images(prepared, tmp_path) -> None:
    """Patches cut on the trainer (the ImageNet presets' choice) from the extent each row
    carries, then bag-of-features evaluation from the same rows."""
    import json

    from empssl_ray.launch import compose
    from jobs.pretrain import main

    out, _ = prepared
    cfg = compose(
        "pretrain",
        [
            "experiment=smoke",
            "data=parquet",
            f"data.root={out}",
            f"data.image_size={CANVAS}",
            "data.keep_aspect=true",
            f"run.storage_path={tmp_path}",
            "run.name=full-resolution",
            "run.progress=false",
            "ray.num_workers=1",
            "ray.patches_on_trainer=true",
            "optim.epochs=1",
            "optim.batch_size=3",
            "patches.num_patches=2",
            "patches.size=32",
            "patches.interpolation=bicubic",
            "patches.aspect_ratio=[0.75,1.3333333]",
            "eval.monitor_test=0",
            "eval.num_patches=2",
            "eval.probe_batch_size=3",
        ],
    )
    main(cfg)
    summary = json.loads((tmp_path / "full-resolution" / "summary.json").read_text())
    assert summary["final"]["steps"] == 1 and summary["final"]["epoch"] == 1, summary
    evaluated = summary["eval"]["pretrained"]
    assert (evaluated["num_train"], evaluated["num_test"], evaluated["eval_patches"]) == (3, 3, 2)
