"""A run's encoder for use outside this project: plain torchvision ResNet-18 weights, or the
whole encoder as an ONNX or TorchScript model.

Our backbone is torchvision's resnet18 with other module names (and, for CIFAR, another stem):
`stem.0` is `conv1`, `stem.1` is `bn1`, the 8 blocks of `stages` are `layer1.0` .. `layer4.1`,
a block's `shortcut` is its `downsample`. The projector g only serves the loss and is dropped;
the pre-feature head h (whose output is the representation the paper evaluates) is written
separately, as the state of `Sequential(Linear(512, D), BatchNorm1d(D), ReLU())`.

The ONNX and TorchScript models hold backbone and head of any width: float images (N, C, S, S)
in [0, 1] at the training patch size S in, features h (N, D) out; bag-of-features averages h
over an image's patches, as evaluation does.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from typing import Any

import torch
from torch import nn

from empssl_ray.config import ConfigError

FORMATS = ("torchvision", "onnx", "torchscript")

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
        raise ConfigError(
            f"model.backbone={backbone} width={width} is not torchvision's resnet18 (format="
            f"torchvision needs one of {sorted(EXPORTABLE)} at width 64): pass format=onnx or "
            "format=torchscript, which export any encoder"
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


class FeatureEncoder(nn.Module):
    """Backbone and pre-feature head, taking images as most runtimes hand them over."""

    def __init__(self, backbone: nn.Module, prefeature: nn.Module) -> None:
        super().__init__()
        self.backbone, self.prefeature = backbone, prefeature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (N, C, S, S) float in [0, 1]. Returns h, (N, prefeature_dim)."""
        return self.prefeature(self.backbone(images * 2.0 - 1.0))  # training's mean/std 0.5


def feature_encoder(state: dict[str, Any]) -> tuple[FeatureEncoder, torch.Tensor]:
    """A checkpoint's encoder in eval mode, on CPU, and an example input (2, C, S, S)."""
    from empssl_ray.config import ModelConfig
    from empssl_ray.method.models import EMPSSLModel

    cfg = ModelConfig(**{**state["config"]["model"], "channels_last": False})
    model = EMPSSLModel(cfg, int(state["in_channels"]))
    model.load_state_dict({k.removeprefix("module."): v for k, v in state["model"].items()})
    side = int(state["patch_size"])
    example = torch.rand(2, int(state["in_channels"]), side, side)
    return FeatureEncoder(model.backbone, model.prefeature).eval(), example


def write_model_file(encoder: FeatureEncoder, example: torch.Tensor, fmt: str, path: str) -> None:
    """Saves the encoder as ONNX (batch dimension dynamic) or TorchScript (traced) at a local
    path."""
    if fmt == "torchscript":
        # PyTorch deprecates TorchScript in favour of torch.export; asked for, it still loads.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(torch.jit.trace(encoder, example), path)
        return
    try:
        import onnxscript  # noqa: F401 - torch's ONNX exporter needs it
    except ImportError:
        from empssl_ray.errors import UserError

        extra = "pip install 'empssl-ray[onnx]'"
        raise UserError(f"format=onnx needs the onnx extra: {extra}") from None
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        encoder,
        (example,),
        input_names=["images"],
        output_names=["features"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    assert program is not None
    program.save(path)


def write_export(checkpoint: str, out_dir: str, fmt: str = "torchvision") -> dict[str, str]:
    """Reads a checkpoint file or folder (local or URI) and writes, into out_dir (local or
    URI), export.json and: resnet18.pt and prefeature_head.pt (torchvision), encoder.onnx
    (onnx) or encoder.pt (torchscript). Returns the locations."""
    import io
    import json

    from empssl_ray.data import storage
    from empssl_ray.runs.checkpoints import checkpoint_file, load_checkpoint

    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt} is not one of {', '.join(FORMATS)}")
    state = load_checkpoint(checkpoint)
    source = storage.resolve(checkpoint_file(checkpoint))
    notes: dict[str, Any] = {"checkpoint": source, "epoch": state.get("epoch"), "format": fmt}
    out = storage.resolve(out_dir)
    paths: dict[str, str] = {}
    if fmt == "torchvision":
        encoder, head, notes_tv = export_encoder(state["model"], state["config"]["model"])
        notes.update(notes_tv)
        for name, weights in (("resnet18.pt", encoder), ("prefeature_head.pt", head)):
            buf = io.BytesIO()
            torch.save(weights, buf)
            paths[name] = storage.join(out, name)
            storage.write_bytes(paths[name], buf.getvalue())
    else:
        model, example = feature_encoder(state)
        name = "encoder.onnx" if fmt == "onnx" else "encoder.pt"
        with tempfile.TemporaryDirectory() as tmp:
            write_model_file(model, example, fmt, os.path.join(tmp, name))
            paths[name] = storage.join(out, name)
            with open(os.path.join(tmp, name), "rb") as f:
                storage.write_bytes(paths[name], f.read())
        with torch.no_grad():
            dim = int(model(example).shape[1])
        _, channels, side, _ = example.shape
        notes.update(
            input=f"images (N, {channels}, {side}, {side}) float32 in [0, 1]"
            + (" named 'images'" if fmt == "onnx" else ""),
            output=f"features h (N, {dim}): average them over an image's patches",
            backbone=state["config"]["model"]["backbone"],
        )
    paths["export.json"] = storage.join(out, "export.json")
    storage.write_text(paths["export.json"], json.dumps(notes, indent=2))
    return paths
