"""Evaluation on Ray: bag-of-features over whole splits as batch inference, then probe and kNN.

Embedding is `evaluate.embed_images` inside an actor pool; the linear probe and kNN run on the
driver, where the (N, D) features end up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from empssl_ray.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    PatchConfig,
    PretrainConfig,
    RayConfig,
)
from empssl_ray.devices import device_for_reserved_gpus
from empssl_ray.evaluate import embed_images, evaluate_features, match_channels
from empssl_ray.models import build_model
from empssl_ray.ray_read import read_images


class Embedder:
    """Actor body: uint8 images -> bag-of-features embeddings with a frozen encoder."""

    def __init__(self, state: dict[str, Any], model_cfg: ModelConfig, in_channels: int,
                 cfg: EvalConfig, patch_size: int, seed: int,
                 patches: PatchConfig | None = None) -> None:
        cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        torch.set_num_threads(cpus)
        # The GPU Ray reserved, if any: a CPU-reserved actor on a GPU node stays off the GPU.
        self.device = device_for_reserved_gpus(ray.get_gpu_ids(), torch.cuda.is_available())
        self.model = build_model(model_cfg, in_channels).to(self.device)
        self.model.load_state_dict(state)
        self.model.eval()
        self.cfg, self.patch_size, self.patches = cfg, patch_size, patches  # training's cuts
        self.in_channels = in_channels
        self.generator = torch.Generator(device=self.device).manual_seed(seed + os.getpid())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = torch.from_numpy(np.ascontiguousarray(np.stack(list(batch["image"]))))
        images = match_channels(images, self.in_channels)  # another dataset's (transfer)
        emb = embed_images(self.model, images.to(self.device), self.cfg.num_patches,
                           self.patch_size, self.generator, patches=self.patches)
        return {"embedding": emb.cpu().numpy(), "label": np.asarray(batch["label"])}


def embed_split(
    encoder: Encoder, data: DataConfig, split: str, cfg: EvalConfig, ray_cfg: RayConfig,
    seed: int, progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeds a whole split on Ray. Returns features (N, D) float32 and labels (N,) int64."""
    ds, info, rows = read_images(data, split, read_cpus=ray_cfg.read_cpus)
    ds = ds.map_batches(
        Embedder,
        fn_constructor_args=(encoder.state, encoder.model, encoder.in_channels, cfg,
                             encoder.patch_size or info.image_size, seed, encoder.patches),
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, ray_cfg.aug_max_actors)),
        num_cpus=ray_cfg.aug_cpus_per_actor,
        num_gpus=1 if ray_cfg.use_gpu else 0,
        resources=(ray_cfg.trainer_resources if ray_cfg.use_gpu else ray_cfg.aug_resources) or None,
    )
    feats, labels = [], []
    with tqdm(total=rows, desc=f"embedding {split}", unit="img", disable=not progress) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            # Batches are read-only views of the object store: torch wants its own copy.
            feats.append(torch.tensor(batch["embedding"]))
            labels.append(torch.tensor(batch["label"]))
            bar.update(len(batch["label"]))
    return torch.cat(feats), torch.cat(labels)


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
    from empssl_ray.checkpoints import load_checkpoint
    from empssl_ray.datasets import open_dataset

    state = load_checkpoint(checkpoint)
    run = state["config"]
    patches = PatchConfig(**run["patches"])
    # Checkpoints record channels and patch size; older ones: from the run's own dataset.
    channels = state.get("in_channels")
    if channels is None:
        info = open_dataset(DataConfig(**run["data"]), "train").info
        channels, patch_size = info.channels, patches.size or info.image_size
    else:
        patch_size = state["patch_size"]
    return Encoder(state["model"], ModelConfig(**run["model"]), channels, patches, patch_size,
                   run["data"]["name"])


def random_init_state(model_cfg: ModelConfig, in_channels: int, seed: int) -> dict[str, Any]:
    """A freshly initialised encoder's weights: the baseline every result is compared to."""
    torch.manual_seed(seed)
    return build_model(model_cfg, in_channels).state_dict()


def random_encoder(cfg: PretrainConfig, like: Encoder | None, data: DataConfig) -> Encoder:
    """A freshly initialised encoder, shaped like `like` (or by cfg for `data`): the baseline."""
    from empssl_ray.datasets import open_dataset

    if like is not None:
        return Encoder(random_init_state(like.model, like.in_channels, cfg.run.seed), like.model,
                       like.in_channels, like.patches, like.patch_size, "none (random init)")
    channels = open_dataset(data, "train").info.channels
    return Encoder(random_init_state(cfg.model, channels, cfg.run.seed), cfg.model, channels,
                   cfg.patches, cfg.patches.size, "none (random init)")


def evaluate_encoder(encoder: Encoder, data: DataConfig, cfg: EvalConfig, ray_cfg: RayConfig,
                     seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Bag-of-features on train and test on Ray, then linear probe (last epoch) and kNN."""
    train = embed_split(encoder, data, "train", cfg, ray_cfg, seed, progress)
    test = embed_split(encoder, data, "test", cfg, ray_cfg, seed + 1, progress)
    metrics = evaluate_features(*train, *test, cfg, seed, progress)
    metrics["eval_patches"] = cfg.num_patches
    return metrics


def evaluate_checkpoint(cfg: PretrainConfig, checkpoint: str | None,
                        with_random_init: bool = False,
                        eval_data: DataConfig | None = None) -> dict[str, Any]:
    """What both jobs report: the checkpoint's encoder and/or a random-init one, same protocol.

    Args:
        cfg: data, eval and Ray settings of the evaluation (patches: for random init only; a
            checkpoint's encoder is evaluated with the patch settings it was trained with).
        checkpoint: checkpoint file or folder (local or URI); None evaluates random init only.
        with_random_init: also evaluate a random-init encoder of the same architecture.
        eval_data: evaluate on this dataset instead of cfg.data (transfer: channels and image
            size may differ from the pretraining data's).

    Returns:
        {"pretrain_data": name, "eval_data": name, "pretrained": metrics, "random init":
        metrics}, each metrics row present when asked for.
    """
    data = eval_data or cfg.data
    trained = load_encoder(checkpoint) if checkpoint is not None else None
    encoders = {"pretrained": trained} if trained is not None else {}
    if trained is None or with_random_init:
        encoders["random init"] = random_encoder(cfg, trained, data)
    results: dict[str, Any] = {
        "pretrain_data": trained.data_name if trained is not None else "none (random init)",
        "eval_data": data.name}
    for name, encoder in encoders.items():
        results[name] = evaluate_encoder(encoder, data, cfg.eval, cfg.ray, cfg.run.seed,
                                         cfg.run.progress)
    return results
