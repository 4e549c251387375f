"""kNN and linear probe reach ~100% on separable features; bag-of-features shapes."""

import torch

from empssl_ray.config import ModelConfig
from empssl_ray.evaluate import embed_dataset, embed_images, knn_accuracy, linear_probe
from empssl_ray.models import build_model


def _clusters(n_per: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(5, 20) * 6
    y = torch.arange(5).repeat_interleave(n_per)
    return centers[y] + torch.randn(len(y), 20, generator=g), y


def test_probe_and_knn_separate_clusters() -> None:
    (xtr, ytr), (xte, yte) = _clusters(60, 0), _clusters(20, 1)
    assert knn_accuracy(xtr, ytr, xte, yte) > 0.98
    result = linear_probe(xtr, ytr, xte, yte, epochs=20, lr=0.1, batch_size=64)
    assert result["probe_acc"] > 0.98 and result["probe_train_acc"] > 0.95


def test_probe_and_knn_are_at_chance_on_random_labels() -> None:
    (xtr, _), (xte, _) = _clusters(60, 0), _clusters(20, 1)
    g = torch.Generator().manual_seed(2)
    ytr, yte = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (100,), generator=g)
    assert knn_accuracy(xtr, ytr, xte, yte) < 0.45
    assert linear_probe(xtr, ytr, xte, yte, epochs=10)["probe_acc"] < 0.45


def test_bag_of_features_averages_patch_embeddings() -> None:
    cfg = ModelConfig(backbone="resnet-narrow", width=4, prefeature_dim=8, hidden_dim=8, proj_dim=4)
    model = build_model(cfg, 3).eval()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    emb = embed_images(
        model, images, num_patches=3, patch_size=16, generator=torch.Generator().manual_seed(0)
    )
    assert emb.shape == (6, 8)
    all_at_once = embed_dataset(model, images.numpy(), 3, 16, batch_size=4)
    assert all_at_once.shape == (6, 8) and torch.isfinite(all_at_once).all()
