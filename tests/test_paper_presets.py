"""Every row of the paper's table has a preset that composes and carries the reference's values."""

from pathlib import Path

import pytest

from empssl_ray.launch import CONF_DIR, compose
from empssl_ray.paper import FIGURES

PAPER_DIR = Path(CONF_DIR) / "experiment" / "paper"

# Each row's dataset as the presets read it (the paper's table itself: empssl_ray/paper.py).
DATA = {"CIFAR-10": "cifar10", "CIFAR-100": "cifar100"}


def test_one_preset_per_row_and_no_other() -> None:
    assert sorted(p.stem for p in PAPER_DIR.glob("*.yaml")) == sorted(FIGURES)
    assert all(30 < row.probe_acc < 100 for row in FIGURES.values())
    # Every figure of the paper's tables (../shared/emp-ssl.md) has its row.
    table = {
        (r.dataset, r.epochs, r.patches, r.schedule_epochs): r.probe_acc for r in FIGURES.values()
    }
    assert table == {
        ("CIFAR-10", 1, 20, 1): 84.2, ("CIFAR-100", 1, 20, 1): 58.5,
        ("Tiny ImageNet", 1, 20, 1): 38.1, ("ImageNet-100", 1, 20, 1): 58.5,
        ("CIFAR-10", 1, 200, 30): 82.6, ("CIFAR-10", 10, 20, 30): 90.7,
        ("CIFAR-10", 10, 200, 30): 91.5, ("CIFAR-10", 30, 20, 30): 93.1,
        ("CIFAR-10", 30, 200, 30): 93.4, ("CIFAR-100", 1, 200, 30): 57.7,
        ("CIFAR-100", 10, 20, 30): 67.8, ("CIFAR-100", 10, 200, 30): 70.1,
        ("CIFAR-100", 30, 20, 30): 72.4, ("CIFAR-100", 30, 200, 30): 73.3,
        ("Tiny ImageNet", 10, 200, 30): 51.5, ("ImageNet-100", 10, 200, 30): 78.9,
    }  # fmt: skip


@pytest.mark.parametrize("row", sorted(FIGURES))
def test_preset_composes_with_the_reference_settings(row: str) -> None:
    paper = FIGURES[row]
    data, epochs, patches = DATA.get(paper.dataset, "imagefolder"), paper.epochs, paper.patches
    overrides = [f"experiment=paper/{row}"]
    if data == "imagefolder":
        overrides.append("data.root=/tmp/images")  # required: where the user keeps them
    cfg = compose("pretrain", overrides)
    assert (cfg.data.name, cfg.optim.epochs, cfg.patches.num_patches) == (data, epochs, patches)
    # The schedule the figure was read under: like for like.
    assert (cfg.optim.schedule_epochs or cfg.optim.epochs) == paper.schedule_epochs
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
        # Tiny ImageNet at the reference's 224 px (torchvision's stem), or native 64 px with the
        # CIFAR stem in the rows named so; ImageNet-100 at 224 px.
        native = row.endswith("-64px")
        assert cfg.patches.size == (64 if native else 224)
        assert cfg.model.backbone == ("resnet18-cifar" if native else "resnet18-imagenet")
        assert native == ("at 64 px" in paper.note)
    else:
        assert cfg.patches.interpolation == "bilinear" and cfg.patches.aspect_ratio == [1, 1]
        assert cfg.model.backbone == "resnet18-cifar"
    assert cfg.run.name == f"paper-{row}"
