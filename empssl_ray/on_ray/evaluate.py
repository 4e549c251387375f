"""Evaluation on Ray: bag-of-features over whole splits as batch inference, then probe and kNN.

Embedding is `evaluation.features.embed_images` inside an actor pool whose actors write float16
Parquet shards; the linear probe and kNN run in one task on a worker that reads them back
(`evaluation.shards`). The driver holds metrics only.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import numpy as np
import ray
import torch

from empssl_ray.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    PatchConfig,
    PretrainConfig,
    RayConfig,
)
from empssl_ray.data import storage
from empssl_ray.data.datasets import ImageDataset, Splits, open_splits
from empssl_ray.devices import device_for_reserved_gpus
from empssl_ray.evaluation.encoders import Encoder, load_encoder, random_encoder
from empssl_ray.evaluation.features import embed_images, match_channels
from empssl_ray.evaluation.shards import embedding_files, evaluate_shards, shard_rows
from empssl_ray.method.models import build_model
from empssl_ray.method.patches import patch_seed, patch_size_for
from empssl_ray.on_ray.progress import post
from empssl_ray.on_ray.read import read_images
from empssl_ray.on_ray.stream import BATCHES_PER_BLOCK, extent_of
from empssl_ray.rules import check_split_sizes


class Embedder:
    """Actor body: uint8 images -> bag-of-features embeddings with a frozen encoder."""

    def __init__(
        self,
        state: dict[str, Any],
        model_cfg: ModelConfig,
        in_channels: int,
        cfg: EvalConfig,
        patch_size: int,
        seed: int,
        patches: PatchConfig | None = None,
        board: Any = None,
        stage: str = "",
    ) -> None:
        cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        torch.set_num_threads(cpus)
        # The GPU Ray reserved, if any: a CPU-reserved actor on a GPU node stays off the GPU.
        self.device = device_for_reserved_gpus(ray.get_gpu_ids(), torch.cuda.is_available())
        self.model = build_model(model_cfg, in_channels).to(self.device)
        self.model.load_state_dict(state)
        self.model.eval()
        self.cfg, self.patch_size, self.patches = cfg, patch_size, patches  # training's cuts
        self.in_channels = in_channels
        self.board, self.stage = board, stage  # where progress goes: the driver's console
        self.generator = torch.Generator(device=self.device).manual_seed(
            patch_seed(seed, "embed", os.getpid())
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = torch.from_numpy(np.ascontiguousarray(np.stack(list(batch["image"]))))
        images = match_channels(images, self.in_channels)  # another dataset's (transfer)
        emb = embed_images(
            self.model,
            images.to(self.device),
            self.cfg.num_patches,
            self.patch_size,
            self.generator,
            patches=self.patches,
            patches_per_forward=self.cfg.patches_per_forward,
            extent=extent_of(batch),  # plan_patches moves it to the device
        )
        post(self.board, {"kind": "rows", "name": self.stage, "rows": len(images)})
        # float16 halves the shards; the probe and kNN compute in float32.
        return {
            "embedding": emb.cpu().numpy().astype(np.float16),
            "label": np.asarray(batch["label"]),
            "id": np.asarray(batch["id"]),  # the split's order, whatever order shards come in
        }


def embed_split(
    encoder: Encoder,
    dataset: ImageDataset,
    cfg: EvalConfig,
    ray_cfg: RayConfig,
    seed: int,
    location: str,
    board: Any = None,
    stage: str = "",
) -> None:
    """Embeds a whole split on the workers, written as float16 Parquet shards at `location`
    (a folder or URI) by the workers themselves: nothing passes through the driver.

    Runs as a task (see `evaluate_encoder`), so Ray Data's own logs stay in the worker logs.

    Args:
        dataset: the opened split.
        board: an `on_ray.progress.ProgressBoard` for the driver's bars, or None.
        stage: the name its progress shows under, e.g. "embed train (pretrained)".
    """
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours are on the driver
    # Blocks of 16 embedding batches: one shard each, and work for every actor of the pool.
    ds, info, rows = read_images(
        dataset, read_cpus=ray_cfg.read_cpus, block_rows=cfg.batch_size * BATCHES_PER_BLOCK
    )
    post(board, {"kind": "stage", "name": stage, "total": rows})
    ds = ds.map_batches(
        Embedder,
        fn_constructor_args=(
            encoder.state,
            encoder.model,
            encoder.in_channels,
            cfg,
            encoder.patch_size or patch_size_for(encoder.patches, info.image_size),
            seed,
            encoder.patches,
            board,
            stage,
        ),
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, ray_cfg.aug_max_actors)),
        num_cpus=ray_cfg.aug_cpus_per_actor,
        num_gpus=1 if ray_cfg.use_gpu else 0,
        resources=(ray_cfg.trainer_resources if ray_cfg.use_gpu else ray_cfg.aug_resources) or None,
    )
    storage.remove_tree(location)  # a re-evaluation replaces the shards, never adds to them
    ds.write_parquet(storage.resolve(location))
    written = sum(shard_rows(f) for f in embedding_files(location))  # bad images skipped
    post(board, {"kind": "done", "name": stage, "rows": written})


def evaluate_encoder(
    encoder: Encoder,
    splits: Splits,
    cfg: EvalConfig,
    ray_cfg: RayConfig,
    features: str,
    seed: int = 0,
    board: Any = None,
    label: str = "encoder",
    picture: str | None = None,
) -> dict[str, float]:
    """Bag-of-features of train and test on the workers into `features` (a folder or URI),
    then the linear probe (last epoch) and kNN in one task on a worker: the driver holds none
    of the (N, D) features, only the metrics.

    Args:
        board: a `on_ray.progress.ProgressBoard` for the driver's bars, or None.
        label: the encoder's name on the console, e.g. "pretrained".
        picture: where the test embeddings' 2-D picture goes (a PNG path or URI), or None.
    """
    # Tasks, not the driver, run the embedding and the probe. "DEFAULT": out of a Tune trial's
    # placement group (jobs/reproduce.py), whose bundles only hold the trial function's share.
    # The embedding task only coordinates (no CPU of its own): its actors hold the CPUs.
    embed = ray.remote(embed_split).options(num_cpus=0, scheduling_strategy="DEFAULT")
    for split, split_seed in (("train", seed), ("test", seed + 1)):
        ray.get(
            embed.remote(
                encoder,
                splits[split],
                cfg,
                ray_cfg,
                split_seed,
                storage.join(features, split),
                board,
                f"embed {split} ({label})",
            )
        )
    fit = ray.remote(evaluate_shards).options(
        num_cpus=ray_cfg.cpus_per_worker,
        num_gpus=1 if ray_cfg.use_gpu else 0,
        resources=ray_cfg.trainer_resources or None,
        scheduling_strategy="DEFAULT",
    )
    post(board, {"kind": "note", "text": f"linear probe and kNN ({label}) ..."})
    metrics = ray.get(fit.remote(features, cfg, seed, picture, label))
    metrics["eval_patches"] = cfg.num_patches
    return metrics


def evaluate_checkpoint(
    cfg: PretrainConfig,
    checkpoint: str | None,
    features: str,
    with_random_init: bool = False,
    eval_data: DataConfig | None = None,
    board: Any = None,
    splits: Splits | None = None,
) -> dict[str, Any]:
    """What both jobs report: the checkpoint's encoder and/or a random-init one, same protocol.

    Args:
        cfg: data, eval and Ray settings of the evaluation (patches: for random init only; a
            checkpoint's encoder is evaluated with the patch settings it was trained with).
        checkpoint: checkpoint file or folder (local or URI); None evaluates random init only.
        features: folder or URI where each encoder's embeddings go (`<features>/<name>/`).
        with_random_init: also evaluate a random-init encoder of the same architecture.
        eval_data: evaluate on this dataset instead of cfg.data (transfer: channels and image
            size may differ from the pretraining data's).
        board: an `on_ray.progress.ProgressBoard` for the driver's bars, or None.
        splits: `cfg.data`'s splits when the caller opened them already (`pretrain` did).

    Returns:
        {"pretrain_data": name, "eval_data": name, "pretrained": metrics, "random init":
        metrics}, each metrics row present when asked for.
    """
    data = eval_data or cfg.data
    if splits is None or eval_data is not None:
        splits = open_splits(data)
    # Before any encoder is embedded, not after.
    check_split_sizes(cfg, len(splits.train), len(splits.test), trains=False)
    trained = load_encoder(checkpoint) if checkpoint is not None else None
    encoders = {"pretrained": trained} if trained is not None else {}
    if trained is None or with_random_init:
        encoders["random init"] = random_encoder(cfg, trained, splits.train.info.channels)
    results: dict[str, Any] = {
        "pretrain_data": trained.data_name if trained is not None else "none (random init)",
        "eval_data": data.name,
    }
    for name, encoder in encoders.items():
        slug = name.replace(" ", "-")
        # Beside curves.png: `features` is <run dir>/features.
        picture = storage.join(posixpath.dirname(features.rstrip("/")), f"embeddings-{slug}.png")
        results[name] = evaluate_encoder(
            encoder,
            splits,
            cfg.eval,
            cfg.ray,
            storage.join(features, slug),
            cfg.run.seed,
            board,
            name,
            picture,
        )
    return results
