"""Backbone registry, heads and shapes, one- and three-channel inputs."""

import pytest
import torch

from empssl_ray.config import ModelConfig
from empssl_ray.method.models import BACKBONES, build_backbone, build_model


@pytest.mark.parametrize(
    "name,side",
    [
        ("resnet18-cifar", 32),
        ("resnet18-tinyimagenet", 64),
        ("resnet18-imagenet", 64),
        ("resnet-narrow", 16),
    ],
)
def test_backbones_give_8x_width_features(name: str, side: int) -> None:
    net = build_backbone(name, width=8, in_channels=3)
    assert net(torch.randn(2, 3, side, side)).shape == (2, 64)


def test_resnet18_cifar_has_the_paper_stem_and_size() -> None:
    net = build_backbone("resnet18-cifar", 64, 3)
    conv = net.stem[0]
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert isinstance(net.stem[3], torch.nn.Identity)  # no max-pool
    assert 11.0e6 < sum(p.numel() for p in net.parameters()) < 11.4e6  # ResNet-18: 11.2M


def test_model_heads_and_unit_norm_projection() -> None:
    cfg = ModelConfig(
        backbone="resnet-narrow", width=8, prefeature_dim=32, hidden_dim=48, proj_dim=16
    )
    model = build_model(cfg, in_channels=1)  # Fashion-MNIST is one channel
    out = model(torch.randn(5, 1, 28, 28))
    assert out.h.shape == (5, 32) and out.z.shape == (5, 16)
    torch.testing.assert_close(out.z.norm(dim=1), torch.ones(5))
    assert (out.h >= 0).all()  # h ends with a ReLU
    assert torch.equal(
        model.eval().encode(torch.zeros(2, 1, 28, 28)), model(torch.zeros(2, 1, 28, 28)).h
    )


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="resnet18-cifar"):
        build_backbone("vgg", 8, 3)
    assert set(BACKBONES) >= {"resnet18-cifar", "resnet18-imagenet", "resnet18-tinyimagenet"}


def _convs(net: torch.nn.Module) -> list[tuple[str, torch.nn.Conv2d]]:
    return [(n, m) for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_init_is_torchvisions_resnet_init(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name, width=64 if name.startswith("resnet18") else 16, in_channels=3)
    for layer, conv in _convs(net):
        w = conv.weight.detach()
        cifar_stem = name in ("resnet18-cifar", "resnet-narrow") and layer == "stem.0"
        if cifar_stem:  # swapped in after torchvision's init: PyTorch's default
            fan_in = w[0].numel()
            assert w.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.1)
            continue
        fan_out = w.shape[0] * w[0, 0].numel()  # Kaiming normal, fan-out, ReLU gain
        assert w.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.12), layer
        assert abs(w.mean().item()) < 0.1 * (2 / fan_out) ** 0.5, layer
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_resnet18_init_statistics_match_torchvision_layer_by_layer() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ours = _convs(build_backbone("resnet18-imagenet", 64, 3))
    theirs = _convs(torchvision.models.resnet18())
    assert [c.weight.shape for _, c in ours] == [c.weight.shape for _, c in theirs]
    for (layer, a), (_, b) in zip(ours, theirs, strict=True):
        assert a.weight.std().item() == pytest.approx(b.weight.std().item(), rel=0.1), layer


@pytest.mark.parametrize(
    "name,kernel,stride,pooled",
    [
        ("resnet18-cifar", 3, 1, False),  # the reference's CIFAR model: 3x3 s1, no max-pool
        ("resnet18-tinyimagenet", 7, 2, True),  # torchvision's resnet18 unchanged
        ("resnet18-imagenet", 7, 2, True),
    ],
)
def test_each_backbone_has_the_references_stem(
    name: str, kernel: int, stride: int, pooled: bool
) -> None:
    net = build_backbone(name, 8, 3)
    conv, pool = net.stem[0], net.stem[3]
    assert conv.kernel_size == (kernel, kernel) and conv.stride == (stride, stride)
    assert conv.padding == (kernel // 2, kernel // 2)
    assert isinstance(pool, torch.nn.MaxPool2d) == pooled
    side = net.stem(torch.zeros(1, 3, 64, 64)).shape[-1]
    assert side == 64 // (4 if pooled else 1)


def test_sync_batchnorm_converts_every_norm_and_refuses_cpu_workers() -> None:
    from empssl_ray.config import PretrainConfig
    from empssl_ray.method.training import Trainer, sync_batchnorm

    cfg = ModelConfig(
        backbone="resnet-narrow",
        width=4,
        prefeature_dim=8,
        hidden_dim=8,
        proj_dim=4,
        sync_batchnorm=True,
    )
    model = sync_batchnorm(build_model(cfg, 3), torch.device("cuda"))  # conversion needs no GPU
    kinds = {type(m) for m in model.modules() if "Norm" in type(m).__name__}
    assert kinds == {torch.nn.SyncBatchNorm}
    run = PretrainConfig(model=cfg)
    run.patches.size = 16
    with pytest.raises(ValueError, match="sync_batchnorm"):
        Trainer(run, 3, 32, 1, "cpu", wrap=lambda m: m)  # several CPU workers: refused
    single = Trainer(run, 3, 32, 1, "cpu")  # one process: nothing to synchronise
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in single.model.modules())
