"""Frozen encoders to evaluate: a checkpoint's, or a freshly initialised one (the baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from empssl_ray.config import DataConfig, ModelConfig, PatchConfig, PretrainConfig
from empssl_ray.data.datasets import open_dataset
from empssl_ray.method.models import build_model
from empssl_ray.method.patches import patch_size_for
from empssl_ray.runs.checkpoints import load_checkpoint


@dataclass
class Encoder:
    """A frozen encoder and how it was trained to see images."""

    state: dict[str, Any]  # the EMPSSLModel's state_dict
    model: ModelConfig  # its architecture
    in_channels: int  # image channels it takes
    patches: PatchConfig  # how its training cut patches (evaluation cuts them the same way)
    patch_size: int | None  # S it was trained on; None = the evaluated dataset's image size
    data_name: str  # the dataset it was pretrained on


def load_encoder(checkpoint: str) -> Encoder:
    """The encoder of a checkpoint file or folder (local or URI)."""
    state = load_checkpoint(checkpoint)
    run = state["config"]
    patches = PatchConfig(**run["patches"])
    # Checkpoints record channels and patch size; older ones: from the run's own dataset.
    channels = state.get("in_channels")
    if channels is None:
        info = open_dataset(DataConfig(**run["data"]), "train").info
        channels, patch_size = info.channels, patch_size_for(patches, info.image_size)
    else:
        patch_size = state["patch_size"]
    return Encoder(
        state["model"],
        ModelConfig(**run["model"]),
        channels,
        patches,
        patch_size,
        run["data"]["name"],
    )


def random_init_state(model_cfg: ModelConfig, in_channels: int, seed: int) -> dict[str, Any]:
    """A freshly initialised encoder's weights: the baseline every result is compared to."""
    torch.manual_seed(seed)
    return build_model(model_cfg, in_channels).state_dict()


def random_encoder(cfg: PretrainConfig, like: Encoder | None, channels: int) -> Encoder:
    """A freshly initialised encoder, shaped like `like` (or by cfg, for images of `channels`
    channels): the baseline."""
    if like is not None:
        return Encoder(
            random_init_state(like.model, like.in_channels, cfg.run.seed),
            like.model,
            like.in_channels,
            like.patches,
            like.patch_size,
            "none (random init)",
        )
    return Encoder(
        random_init_state(cfg.model, channels, cfg.run.seed),
        cfg.model,
        channels,
        cfg.patches,
        cfg.patches.size,
        "none (random init)",
    )
