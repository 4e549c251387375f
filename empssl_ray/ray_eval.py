"""Evaluation on Ray: bag-of-features over whole splits as batch inference, then probe and kNN.

Embedding is `evaluate.embed_images` inside an actor pool; the linear probe and kNN run on the
driver, where the (N, D) features end up.
"""

from __future__ import annotations

import os
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
from empssl_ray.evaluate import embed_images, evaluate_features
from empssl_ray.models import build_model
from empssl_ray.ray_data import read_images


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
        self.generator = torch.Generator(device=self.device).manual_seed(seed + os.getpid())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = torch.from_numpy(np.ascontiguousarray(np.stack(list(batch["image"]))))
        emb = embed_images(self.model, images.to(self.device), self.cfg.num_patches,
                           self.patch_size, self.generator, patches=self.patches)
        return {"embedding": emb.cpu().numpy(), "label": np.asarray(batch["label"])}


def embed_split(
    state: dict[str, Any], model_cfg: ModelConfig, data: DataConfig, split: str,
    patches: PatchConfig, cfg: EvalConfig, ray_cfg: RayConfig, seed: int, progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeds a whole split on Ray. Returns features (N, D) float32 and labels (N,) int64."""
    ds, info, rows = read_images(data, split, read_cpus=ray_cfg.read_cpus)
    ds = ds.map_batches(
        Embedder,
        fn_constructor_args=(state, model_cfg, info.channels, cfg, patches.size or info.image_size,
                             seed, patches),
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


def random_init_state(model_cfg: ModelConfig, in_channels: int, seed: int) -> dict[str, Any]:
    """A freshly initialised encoder's weights: the baseline every result is compared to."""
    torch.manual_seed(seed)
    return build_model(model_cfg, in_channels).state_dict()


def evaluate_encoder(
    state: dict[str, Any], model_cfg: ModelConfig, data: DataConfig, patches: PatchConfig,
    cfg: EvalConfig, ray_cfg: RayConfig, seed: int = 0, progress: bool = True,
) -> dict[str, float]:
    """Bag-of-features on train and test on Ray, then linear probe (last epoch) and kNN."""
    train = embed_split(state, model_cfg, data, "train", patches, cfg, ray_cfg, seed, progress)
    test = embed_split(state, model_cfg, data, "test", patches, cfg, ray_cfg, seed + 1, progress)
    metrics = evaluate_features(*train, *test, cfg, seed, progress)
    metrics["eval_patches"] = cfg.num_patches
    return metrics


def evaluate_checkpoint(cfg: PretrainConfig, checkpoint: str | None,
                        with_random_init: bool = False) -> dict[str, dict[str, float]]:
    """What both jobs report: the checkpoint's encoder and/or a random-init one, same protocol.

    Args:
        cfg: data, patches, eval and Ray settings of the evaluation.
        checkpoint: checkpoint file or folder (local or URI); None evaluates random init only.
        with_random_init: also evaluate a random-init encoder of the same architecture.

    Returns:
        {"pretrained": metrics, "random init": metrics}, each row present when asked for.
    """
    from empssl_ray.checkpoints import load_encoder_state
    from empssl_ray.datasets import open_dataset

    model_cfg, states = cfg.model, {}
    if checkpoint is not None:
        state, run_cfg = load_encoder_state(checkpoint)
        model_cfg = ModelConfig(**run_cfg["model"])  # the architecture it was trained with
        states["pretrained"] = state
    if checkpoint is None or with_random_init:
        channels = open_dataset(cfg.data, "train").info.channels
        states["random init"] = random_init_state(model_cfg, channels, cfg.run.seed)
    return {name: evaluate_encoder(state, model_cfg, cfg.data, cfg.patches, cfg.eval, cfg.ray,
                                   cfg.run.seed, cfg.run.progress)
            for name, state in states.items()}
