"""A picture of an encoder's test embeddings in 2-D, coloured by class: what a collapsed or
a class-blind encoder looks like at a glance (one blob, or colours mixed everywhere).

UMAP (`umap-learn`, an optional extra: its import alone compiles for tens of seconds) where it is
installed, else PCA, which needs nothing beyond torch.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only where a picture is drawn: rules.py (read by every read task)
    import torch  # imports this module for its method names

MAP_METHODS = ("auto", "umap", "pca", "none")
MAX_POINTS = 2000  # a readable scatter, and UMAP's cost stays in seconds


def umap_installed() -> bool:
    """Whether umap-learn can be imported (an empty `umap` folder, left by an uninstall, is a
    namespace package without an origin: not it)."""
    spec = importlib.util.find_spec("umap")
    return spec is not None and spec.origin is not None


def map_method(asked: str) -> str:
    """The projection `eval.embedding_map=asked` gets: auto is UMAP where installed, else PCA.

    Raises:
        ConfigError: umap asked for and not installed.
    """
    installed = umap_installed()
    if asked == "umap" and not installed:
        from empssl_ray.config import ConfigError

        raise ConfigError(
            "eval.embedding_map=umap needs umap-learn: pip install 'empssl-ray[umap]' "
            "(or eval.embedding_map=pca)"
        )
    return ("umap" if installed else "pca") if asked == "auto" else asked


def project_2d(features: torch.Tensor, method: str, seed: int = 0) -> np.ndarray:
    """Features (N, D) of any float dtype -> (N, 2) coordinates by `method` (umap or pca)."""
    import torch

    x = features.float()
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_components=2, random_state=seed)
        return np.asarray(reducer.fit_transform(x.cpu().numpy()))
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)  # (D, D): principal axes as rows
    return (x @ v[:2].T).cpu().numpy()


def sample_rows(labels: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """At most `limit` row indices, drawn with `seed` (every row when there are fewer)."""
    import torch

    if len(labels) <= limit:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(len(labels), generator=generator)[:limit].sort().values


def plot_embedding_map(
    features: torch.Tensor,
    labels: torch.Tensor,
    location: str,
    method: str = "auto",
    seed: int = 0,
    title: str = "",
) -> str | None:
    """Writes the 2-D picture of (N, D) features with (N,) labels as a PNG at `location` (a
    path or URI); returns the method used, or None when `method` is none."""
    method = map_method(method)
    if method == "none":
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless: runs on cluster nodes and in CI
    import matplotlib.pyplot as plt

    from empssl_ray.data import storage

    rows = sample_rows(labels, MAX_POINTS, seed)
    points, classes = project_2d(features[rows], method, seed), labels[rows].numpy()
    fig, ax = plt.subplots(figsize=(6.0, 5.2))
    scatter = ax.scatter(points[:, 0], points[:, 1], c=classes, cmap="tab10", s=6, alpha=0.8)
    ax.legend(*scatter.legend_elements(), title="class", fontsize=7, loc="best", markerscale=0.8)
    ax.set_title(f"{title} test embeddings, {method.upper()} ({len(rows)} images)".strip())
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "map.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        with open(path, "rb") as f:
            storage.write_bytes(location, f.read())
    return method
