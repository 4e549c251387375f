"""Backbone registry, heads and shapes, one- and three-channel inputs."""

import pytest
import torch

from empssl_ray.config import ModelConfig
from empssl_ray.models import BACKBONES, build_backbone, build_model


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
