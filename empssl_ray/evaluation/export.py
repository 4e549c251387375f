"""A run's encoder as plain torchvision ResNet-18 weights, for use outside this project.

Our backbone is torchvision's resnet18 with other module names (and, for CIFAR, another stem):
`stem.0` is `conv1`, `stem.1` is `bn1`, the 8 blocks of `stages` are `layer1.0` .. `layer4.1`,
a block's `shortcut` is its `downsample`. The projector g only serves the loss and is dropped;
the pre-feature head h (whose output is the representation the paper evaluates) is written
separately, as the state of `Sequential(Linear(512, D), BatchNorm1d(D), ReLU())`.
"""

from __future__ import annotations

import re
from typing import Any

import torch

EXPORTABLE = {
    "resnet18-cifar": "cifar",
    "resnet18-imagenet": "imagenet",
    "resnet18-tinyimagenet": "imagenet",
}  # backbone -> stem
STEM_NOTES = {
    "cifar": "CIFAR stem: set model.conv1 = torch.nn.Conv2d(C, 64, 3, 1, 1, bias=False) and "
    "model.maxpool = torch.nn.Identity() before loading",
    "imagenet": "torchvision's own stem (7x7 stride 2, max-pool): loads as is",
}


def _torchvision_key(key: str) -> str | None:
    """Our backbone's state key -> torchvision resnet18's, or None for keys not in it."""
    if not key.startswith("backbone."):
        return None
    key = key.removeprefix("backbone.")
    key = re.sub(r"^stem\.0\.", "conv1.", key)
    key = re.sub(r"^stem\.1\.", "bn1.", key)
    block = re.match(r"^stages\.(\d+)\.(.*)$", key)
    if block:
        k, rest = int(block.group(1)), block.group(2)
        key = f"layer{k // 2 + 1}.{k % 2}.{rest.replace('shortcut.', 'downsample.')}"
    return key


def export_encoder(
    model_state: dict[str, torch.Tensor], model_cfg: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Splits a checkpoint's model state into torchvision weights, the head h, and notes.

    Args:
        model_state: `EMPSSLModel.state_dict()` (a DDP "module." prefix is stripped).
        model_cfg: the run's `ModelConfig` as a dict.

    Returns:
        (resnet18 state_dict without `fc`, pre-feature head state_dict, notes for export.json).
    """
    backbone, width = model_cfg["backbone"], model_cfg["width"]
    if backbone not in EXPORTABLE or width != 64:
        raise ValueError(
            f"model.backbone={backbone} width={width} is not torchvision's "
            f"resnet18: export needs one of {sorted(EXPORTABLE)} at width 64"
        )
    state = {k.removeprefix("module."): v for k, v in model_state.items()}
    renamed = {_torchvision_key(k): v for k, v in state.items()}
    encoder = {k: v for k, v in renamed.items() if k is not None}
    head = {
        k.removeprefix("prefeature."): v for k, v in state.items() if k.startswith("prefeature.")
    }
    stem = EXPORTABLE[backbone]
    in_channels = int(state["backbone.stem.0.weight"].shape[1])
    notes = {
        "backbone": backbone,
        "stem": stem,
        "stem_note": STEM_NOTES[stem],
        "in_channels": in_channels,  # torchvision's conv1 takes 3: replace it for other counts
        "feature_dim": 512,
        "prefeature_dim": int(head["0.weight"].shape[0]),
        "head": "Sequential(Linear(512, prefeature_dim), BatchNorm1d(prefeature_dim), ReLU())",
        "fc": "none: set model.fc = torch.nn.Identity() to get the 512-d features",
        "input": "float in [-1, 1]: pixels / 127.5 - 1 (mean 0.5, std 0.5 per channel)",
    }
    return encoder, head, notes


def write_export(checkpoint: str, out_dir: str) -> dict[str, str]:
    """Reads a checkpoint file or folder (local or URI) and writes resnet18.pt,
    prefeature_head.pt and export.json into out_dir (local or URI). Returns the locations."""
    import io
    import json

    from empssl_ray.data import storage
    from empssl_ray.runs.checkpoints import checkpoint_file, load_checkpoint

    state = load_checkpoint(checkpoint)
    encoder, head, notes = export_encoder(state["model"], state["config"]["model"])
    paths = {
        name: storage.join(storage.resolve(out_dir), name)
        for name in ("resnet18.pt", "prefeature_head.pt", "export.json")
    }
    for name, weights in (("resnet18.pt", encoder), ("prefeature_head.pt", head)):
        buf = io.BytesIO()
        torch.save(weights, buf)
        storage.write_bytes(paths[name], buf.getvalue())
    source = storage.resolve(checkpoint_file(checkpoint))
    storage.write_text(
        paths["export.json"],
        json.dumps({"checkpoint": source, "epoch": state.get("epoch"), **notes}, indent=2),
    )
    return paths
