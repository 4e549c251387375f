"""Backbones (a small registry of ResNets), the pre-feature head h and the projector g.

As the reference's models, which are torchvision's resnet18 with changes: the CIFAR stem keeps
resolution early on (3x3 stride-1 first conv, no max-pool) because 32-pixel patches would
otherwise be 8 pixels wide after the ImageNet stem; Tiny ImageNet and ImageNet keep torchvision's
stem (7x7 stride 2, then max-pool). Weights start as torchvision initialises them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from empssl_ray.config import ModelConfig


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 conv on the shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with BasicBlocks; output is the globally pooled feature, (N, 8 * width).

    Args:
        blocks: blocks per stage (ResNet-18: 2, 2, 2, 2).
        width: channels of the first stage; doubled at each later stage.
        in_channels: image channels (1 for Fashion-MNIST).
        stem: "cifar" (3x3 s1, no pool) or "imagenet" (7x7 s2 + max-pool, torchvision's).
    """

    def __init__(self, blocks: tuple[int, ...], width: int, in_channels: int, stem: str) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"unknown stem {stem!r}: cifar or imagenet")
        stages, c_in = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(c_in, c_out, 2 if (j == 0 and i > 0) else 1))
                c_in = c_out
        conv = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        _torchvision_init(conv, *stages)
        if stem == "cifar":
            # The reference swaps this conv into an initialised torchvision resnet18, so it
            # keeps PyTorch's default init (built after _torchvision_init, which it skips).
            conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        pool = nn.Identity() if stem == "cifar" else nn.MaxPool2d(3, 2, 1)
        self.stem = nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True), pool)
        self.stages = nn.Sequential(*stages)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, C, H, W) normalised images. Returns (N, out_dim)."""
        return torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1)


def _torchvision_init(*modules: nn.Module) -> None:
    """torchvision's ResNet init: convs Kaiming-normal (fan-out, ReLU gain), BN weight 1, bias 0.

    PyTorch's default for a conv is Kaiming-uniform with a = sqrt(5), a third of the variance.
    """
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


BACKBONES: dict[str, Callable[[int, int], ResNet]] = {
    "resnet18-cifar": lambda width, c: ResNet((2, 2, 2, 2), width, c, "cifar"),
    # The reference's Tiny ImageNet model is torchvision's resnet18 unchanged: ImageNet stem.
    "resnet18-tinyimagenet": lambda width, c: ResNet((2, 2, 2, 2), width, c, "imagenet"),
    "resnet18-imagenet": lambda width, c: ResNet((2, 2, 2, 2), width, c, "imagenet"),
    # One block per stage: a quarter of the depth, for CPU tests and demos.
    "resnet-narrow": lambda width, c: ResNet((1, 1, 1, 1), width, c, "cifar"),
}


def build_backbone(name: str, width: int, in_channels: int) -> ResNet:
    """Looks a backbone up in the registry; unknown names get a one-line error listing the known."""
    if name not in BACKBONES:
        raise ValueError(f"unknown model.backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](width, in_channels)


@dataclass
class EncoderOutput:
    h: torch.Tensor  # (N, prefeature_dim): the representation that is evaluated
    z: torch.Tensor  # (N, proj_dim): unit-norm projection the loss sees


class EMPSSLModel(nn.Module):
    """Backbone f, pre-feature head h = ReLU(BN(Linear(f))), projector g, z = normalize(g(h))."""

    def __init__(self, cfg: ModelConfig, in_channels: int) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg.backbone, cfg.width, in_channels)
        self.prefeature = nn.Sequential(
            nn.Linear(self.backbone.out_dim, cfg.prefeature_dim),
            nn.BatchNorm1d(cfg.prefeature_dim),
            nn.ReLU(inplace=True),
        )
        self.projector = nn.Sequential(
            nn.Linear(cfg.prefeature_dim, cfg.hidden_dim),
            nn.BatchNorm1d(cfg.hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.hidden_dim, cfg.proj_dim),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, C, S, S) normalised patches. Returns h, (N, prefeature_dim)."""
        return self.prefeature(self.backbone(x))

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Args: x (N, C, S, S) normalised patches. Returns h and z for every patch."""
        h = self.encode(x)
        return EncoderOutput(h=h, z=F.normalize(self.projector(h), dim=-1))


def build_model(cfg: ModelConfig, in_channels: int) -> EMPSSLModel:
    """The full model for a config, in channels-last layout when asked (faster convs on GPUs)."""
    model = EMPSSLModel(cfg, in_channels)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
