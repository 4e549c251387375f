"""Evaluation on Ray: bag-of-features over whole splits as batch inference, then probe and kNN.

Embedding is `evaluate.embed_images` inside an actor pool whose actors write float16 Parquet
shards; the linear probe and kNN run in one task on a worker that reads them back. The driver
holds metrics only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from empssl_ray import storage
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
from empssl_ray.ray_console import post
from empssl_ray.ray_data import BATCHES_PER_BLOCK
from empssl_ray.ray_read import read_images


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
        self.generator = torch.Generator(device=self.device).manual_seed(seed + os.getpid())

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
        )
        post(self.board, {"kind": "rows", "name": self.stage, "rows": len(images)})
        # float16 halves the shards; the probe and kNN compute in float32.
        return {
            "embedding": emb.cpu().numpy().astype(np.float16),
            "label": np.asarray(batch["label"]),
        }


def embed_split(
    encoder: Encoder,
    data: DataConfig,
    split: str,
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
        board: a `ray_console.ProgressBoard` for the driver's bars, or None.
        stage: the name its progress shows under, e.g. "embed train (pretrained)".
    """
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours are on the driver
    # Blocks of 16 embedding batches: one shard each, and work for every actor of the pool.
    ds, info, rows = read_images(
        data, split, read_cpus=ray_cfg.read_cpus, block_rows=cfg.batch_size * BATCHES_PER_BLOCK
    )
    post(board, {"kind": "stage", "name": stage, "total": rows})
    ds = ds.map_batches(
        Embedder,
        fn_constructor_args=(
            encoder.state,
            encoder.model,
            encoder.in_channels,
            cfg,
            encoder.patch_size or info.image_size,
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


def embedding_files(folder: str) -> list[str]:
    """The shards `embed_split` wrote into a folder, in file order."""
    return [e.location for e in storage.list_dir(folder) if e.name.endswith(".parquet")]


def shard_rows(location: str) -> int:
    """Rows of one shard, from its footer."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(location)
    with fs.open_input_file(path) as f:
        return int(pq.read_metadata(f).num_rows)


def read_embeddings_file(location: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One shard: (n, D) float16 features and (n,) int64 labels."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(location)
    with fs.open_input_file(path) as f:
        table = pq.read_table(f)
    # Ray's tensor column type (registered by importing ray) turns into an (n, D) array.
    feats = table.column("embedding").combine_chunks().to_numpy()
    return torch.from_numpy(feats), torch.from_numpy(table.column("label").to_numpy())


def read_embeddings(folder: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every shard of a folder, concatenated: (N, D) float16 and (N,) int64."""
    parts = [read_embeddings_file(f) for f in embedding_files(folder)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def probe_and_knn(features: str, cfg: EvalConfig, seed: int) -> dict[str, float]:
    """Task body, on a worker: probe and kNN on the shards under `features` (train/, test/).

    Memory on that worker: the training features (N x D x 2 bytes, float16) and the test ones;
    the kNN turns its bank into float32 a chunk at a time (a running top-k per test image).
    """
    train = read_embeddings(storage.join(features, "train"))
    test = read_embeddings(storage.join(features, "test"))
    return evaluate_features(*train, *test, cfg, seed)


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


def random_encoder(cfg: PretrainConfig, like: Encoder | None, data: DataConfig) -> Encoder:
    """A freshly initialised encoder, shaped like `like` (or by cfg for `data`): the baseline."""
    from empssl_ray.datasets import open_dataset

    if like is not None:
        return Encoder(
            random_init_state(like.model, like.in_channels, cfg.run.seed),
            like.model,
            like.in_channels,
            like.patches,
            like.patch_size,
            "none (random init)",
        )
    channels = open_dataset(data, "train").info.channels
    return Encoder(
        random_init_state(cfg.model, channels, cfg.run.seed),
        cfg.model,
        channels,
        cfg.patches,
        cfg.patches.size,
        "none (random init)",
    )


def evaluate_encoder(
    encoder: Encoder,
    data: DataConfig,
    cfg: EvalConfig,
    ray_cfg: RayConfig,
    features: str,
    seed: int = 0,
    board: Any = None,
    label: str = "encoder",
) -> dict[str, float]:
    """Bag-of-features of train and test on the workers into `features` (a folder or URI),
    then the linear probe (last epoch) and kNN in one task on a worker: the driver holds none
    of the (N, D) features, only the metrics.

    Args:
        board: a `ray_console.ProgressBoard` for the driver's bars, or None.
        label: the encoder's name on the console, e.g. "pretrained".
    """
    # Tasks, not the driver, run the embedding and the probe. "DEFAULT": out of a Tune trial's
    # placement group (jobs/reproduce.py), whose bundles only hold the trial function's share.
    # The embedding task only coordinates (no CPU of its own): its actors hold the CPUs.
    embed = ray.remote(embed_split).options(num_cpus=0, scheduling_strategy="DEFAULT")
    for split, split_seed in (("train", seed), ("test", seed + 1)):
        ray.get(
            embed.remote(
                encoder,
                data,
                split,
                cfg,
                ray_cfg,
                split_seed,
                storage.join(features, split),
                board,
                f"embed {split} ({label})",
            )
        )
    fit = ray.remote(probe_and_knn).options(
        num_cpus=ray_cfg.cpus_per_worker,
        num_gpus=1 if ray_cfg.use_gpu else 0,
        resources=ray_cfg.trainer_resources or None,
        scheduling_strategy="DEFAULT",
    )
    post(board, {"kind": "note", "text": f"linear probe and kNN ({label}) ..."})
    metrics = ray.get(fit.remote(features, cfg, seed))
    metrics["eval_patches"] = cfg.num_patches
    return metrics


def evaluate_checkpoint(
    cfg: PretrainConfig,
    checkpoint: str | None,
    features: str,
    with_random_init: bool = False,
    eval_data: DataConfig | None = None,
    board: Any = None,
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
        board: a `ray_console.ProgressBoard` for the driver's bars, or None.

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
        "eval_data": data.name,
    }
    for name, encoder in encoders.items():
        folder = storage.join(features, name.replace(" ", "-"))
        results[name] = evaluate_encoder(
            encoder, data, cfg.eval, cfg.ray, folder, cfg.run.seed, board, name
        )
    return results
