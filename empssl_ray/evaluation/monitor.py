"""Online kNN monitor: a cheap accuracy signal at every epoch's end (Tune early-stops on it)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from empssl_ray.config import EvalConfig, PatchConfig
from empssl_ray.data.datasets import ImageDataset, Splits
from empssl_ray.evaluation.features import embed_dataset
from empssl_ray.evaluation.probe import knn_accuracy


def sample_split(
    dataset: ImageDataset, n: int, seed: int = 0, per_chunk: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """About n images spread over random chunks of a split (test sets are often class-sorted).

    Loads only ceil(n / per_chunk) chunks, so it stays cheap on ImageNet-sized data.

    Returns:
        images uint8 (m, C, H, W), labels int64 (m,), m <= n, and the letterboxed images'
        extents (m, 2) where the dataset keeps aspect ratios, else None.
    """
    rng = np.random.default_rng(seed)
    k = min(len(dataset.chunks), max(1, math.ceil(n / per_chunk)))
    images, labels = [], []
    extents: list[np.ndarray] = []
    for i in sorted(rng.choice(len(dataset.chunks), size=k, replace=False)):
        x, y, _, extent = dataset.load_chunk_extents(dataset.chunks[i])
        pick = rng.choice(len(x), size=min(len(x), math.ceil(n / k)), replace=False)
        images.append(x[pick])
        labels.append(y[pick])
        if extent is not None:
            extents.append(extent[pick])
    kept = np.concatenate(extents)[:n] if extents else None
    return np.concatenate(images)[:n], np.concatenate(labels)[:n], kept


class KnnMonitor:
    """Holds a small labelled bank and query set; `__call__` scores an encoder on them."""

    def __init__(
        self,
        splits: Splits,
        cfg: EvalConfig,
        patch_size: int,
        seed: int = 0,
        patches: PatchConfig | None = None,
    ) -> None:
        self.cfg, self.patch_size, self.seed = cfg, patch_size, seed
        self.patches = patches  # the run's patch settings: cut as training cuts
        self.train = sample_split(splits.train, cfg.monitor_train, seed)
        self.test = sample_split(splits.test, cfg.monitor_test, seed + 1)

    def __call__(self, model: nn.Module, device: torch.device | str) -> float:
        """Weighted kNN accuracy of bag-of-features (monitor_patches per image) in [0, 1]."""
        was_training = model.training
        feats = [
            embed_dataset(
                model,
                x,
                self.cfg.monitor_patches,
                self.patch_size,
                self.cfg.batch_size,
                device,
                self.seed,
                patches=self.patches,
                patches_per_forward=self.cfg.patches_per_forward,
                extents=extents,
            )
            for x, _, extents in (self.train, self.test)
        ]
        model.train(was_training)
        return knn_accuracy(
            feats[0],
            torch.as_tensor(self.train[1]),
            feats[1],
            torch.as_tensor(self.test[1]),
            self.cfg.knn_k,
            self.cfg.knn_temperature,
        )
