"""Every row of the paper's table has a preset that composes and carries the reference's values."""

from pathlib import Path

import pytest

from empssl_ray.launch import CONF_DIR, compose

PAPER_DIR = Path(CONF_DIR) / "experiment" / "paper"

# The paper's table (../shared/emp-ssl.md), written out here: row -> (data, epochs, patches,
# figure in percent).
TABLE = {
    "cifar10-1ep-20p": ("cifar10", 1, 20, 80.6),
    "cifar10-1ep-200p": ("cifar10", 1, 200, 82.6),
    "cifar10-10ep-20p": ("cifar10", 10, 20, 90.7),
    "cifar10-10ep-200p": ("cifar10", 10, 200, 91.5),
    "cifar10-30ep-20p": ("cifar10", 30, 20, 93.1),
    "cifar10-30ep-200p": ("cifar10", 30, 200, 93.4),
    "cifar100-1ep-20p": ("cifar100", 1, 20, 55.1),
    "cifar100-1ep-200p": ("cifar100", 1, 200, 57.7),
    "cifar100-10ep-20p": ("cifar100", 10, 20, 67.8),
    "cifar100-10ep-200p": ("cifar100", 10, 200, 70.1),
    "tinyimagenet-10ep-200p": ("imagefolder", 10, 200, 51.5),
    "imagenet100-10ep-200p": ("imagefolder", 10, 200, 78.9),
}


def test_one_preset_per_row_and_no_other() -> None:
    assert sorted(p.stem for p in PAPER_DIR.glob("*.yaml")) == sorted(TABLE)


@pytest.mark.parametrize("row", sorted(TABLE))
def test_preset_composes_with_the_reference_settings(row: str) -> None:
    data, epochs, patches, figure = TABLE[row]
    overrides = [f"experiment=paper/{row}"]
    if data == "imagefolder":
        overrides.append("data.root=/tmp/images")  # required: where the user keeps them
    cfg = compose("pretrain", overrides)
    assert (cfg.data.name, cfg.optim.epochs, cfg.patches.num_patches) == (data, epochs, patches)
    # Model, loss and optimiser as the reference's.
    assert cfg.model.backbone.startswith("resnet18-") and cfg.model.width == 64
    assert (cfg.model.prefeature_dim, cfg.model.hidden_dim, cfg.model.proj_dim) == (
        4096,
        4096,
        1024,
    )
    assert (cfg.loss.invariance_weight, cfg.loss.tcr_weight, cfg.loss.eps) == (200.0, 1.0, 0.2)
    o = cfg.optim
    assert (o.batch_size, o.lr, o.momentum, o.weight_decay, o.lars_eta, o.warmup_steps) == (
        100,
        0.3,
        0.9,
        1e-4,
        0.005,
        0,
    )
    assert o.bf16 is False  # float32, explicit in every GPU recipe
    assert cfg.patches.crop_scale == 0.25
    e = cfg.eval
    assert (e.num_patches, e.probe_epochs, e.probe_lr, e.probe_weight_decay) == (
        128,
        100,
        0.03,
        5e-5,
    )
    assert (e.probe_batch_size, e.probe_standardize, e.knn_k, e.knn_temperature) == (
        100,
        False,
        20,
        0.07,
    )
    # GPU resources that split the 100 images evenly; batch norm over all of them.
    assert cfg.ray.use_gpu and cfg.optim.batch_size % cfg.ray.num_workers == 0
    assert cfg.model.sync_batchnorm == (cfg.ray.num_workers > 1)
    if data == "imagefolder":  # the reference's ImageNet crops and torchvision's stem
        assert cfg.patches.interpolation == "bicubic"
        assert cfg.patches.aspect_ratio == pytest.approx([0.75, 4 / 3], rel=1e-6)
        assert cfg.model.backbone in ("resnet18-tinyimagenet", "resnet18-imagenet")
    else:
        assert cfg.patches.interpolation == "bilinear" and cfg.patches.aspect_ratio == [1, 1]
        assert cfg.model.backbone == "resnet18-cifar"
    assert f"Paper figure: {figure}%" in (PAPER_DIR / f"{row}.yaml").read_text()
