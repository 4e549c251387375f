"""The 2-D picture of test embeddings: PCA by default, UMAP where installed, a PNG anywhere."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest
import torch

from empssl_ray.config import ConfigError
from empssl_ray.evaluation import embedding_map
from empssl_ray.evaluation.embedding_map import plot_embedding_map, project_2d

PNG = b"\x89PNG\r\n\x1a\n"


def clusters(n: int, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes, far apart along two directions, noise in the rest."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=g)
    centres = torch.zeros(3, dim)
    centres[1, 0], centres[2, 1] = 20.0, 20.0
    return centres[labels] + torch.randn(n, dim, generator=g), labels


def test_pca_keeps_the_two_directions_that_separate_the_classes() -> None:
    x, y = clusters(300)
    points = torch.from_numpy(project_2d(x.half(), "pca"))
    assert points.shape == (300, 2)
    means = torch.stack([points[y == c].mean(0) for c in range(3)])
    spread = max(float(points[y == c].std(0).max()) for c in range(3))
    assert float(torch.cdist(means, means).triu(1).max()) > 5 * spread  # classes stay apart


def test_auto_is_pca_without_umap_and_umap_asked_without_it_is_a_config_error(
    monkeypatch,
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert embedding_map.map_method("auto") == "pca"
    empty = importlib.machinery.ModuleSpec("umap", None, is_package=True)  # a leftover folder
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: empty)
    assert embedding_map.map_method("auto") == "pca"
    assert embedding_map.map_method("none") == "none"
    with pytest.raises(ConfigError, match="umap-learn"):
        embedding_map.map_method("umap")


def test_the_picture_is_a_png_where_asked(tmp_path: Path) -> None:
    x, y = clusters(3000)  # more than it draws: a sample of MAX_POINTS
    assert plot_embedding_map(x, y, str(tmp_path / "map.png"), "pca", title="pretrained") == "pca"
    assert (tmp_path / "map.png").read_bytes().startswith(PNG)
    assert plot_embedding_map(x, y, str(tmp_path / "none.png"), "none") is None
    assert not (tmp_path / "none.png").exists()


@pytest.mark.slow  # umap-learn compiles for about 30 s at import (2 cores)
def test_umap_draws_the_picture_where_installed(tmp_path: Path) -> None:
    pytest.importorskip("umap")
    x, y = clusters(200)
    assert plot_embedding_map(x, y, str(tmp_path / "map.png"), "auto") == "umap"
    assert (tmp_path / "map.png").read_bytes().startswith(PNG)
