"""Embedding shards: the float16 Parquet files bag-of-features evaluation writes and reads.

`on_ray.evaluate` has actors write one shard per block under `<features>/<split>/`; the probe
and kNN read them back here, on one worker, without Ray.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from empssl_ray.config import EvalConfig
from empssl_ray.data import storage
from empssl_ray.evaluation.embedding_map import plot_embedding_map
from empssl_ray.evaluation.probe import evaluate_features


def embedding_files(folder: str) -> list[str]:
    """The shards `embed_split` wrote into a folder, in file order."""
    return [e.location for e in storage.list_dir(folder) if e.name.endswith(".parquet")]


def shard_rows(location: str) -> int:
    """Rows of one shard, from its footer."""
    fs, path = storage.filesystem(location)
    with fs.open_input_file(path) as f:
        return int(pq.read_metadata(f).num_rows)


def read_embeddings_file(location: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One shard: (n, D) float16 features, (n,) int64 labels and (n,) row ids (in the split)."""
    fs, path = storage.filesystem(location)
    with fs.open_input_file(path) as f:
        table = pq.read_table(f)
    column = table.column("embedding").combine_chunks()
    # Ray Data writes (n, D) arrays as its tensor extension type, stored as a list per row;
    # read without Ray (this module's case), or with it, the rows are that storage.
    if isinstance(column, pa.ExtensionArray):
        column = column.storage
    flat = (
        column.flatten().to_numpy()
        if pa.types.is_list(column.type)
        or pa.types.is_large_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
        else column.to_numpy()
    )
    feats = np.array(flat, copy=True).reshape(len(column), -1)  # Arrow's buffers are read-only
    labels = torch.from_numpy(table.column("label").to_numpy())
    ids = table.column("id").to_numpy() if "id" in table.column_names else np.zeros(len(labels))
    return torch.from_numpy(feats), labels, torch.from_numpy(np.asarray(ids, dtype=np.int64))


def read_embeddings(folder: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every shard of a folder in the split's row order: (N, D) float16 and (N,) int64. The
    order makes the probe's label subsets (`eval.label_fractions`) the same rows for every
    encoder evaluated."""
    parts = [read_embeddings_file(f) for f in embedding_files(folder)]
    order = torch.cat([p[2] for p in parts]).argsort(stable=True)
    return torch.cat([p[0] for p in parts])[order], torch.cat([p[1] for p in parts])[order]


def evaluate_shards(
    features: str, cfg: EvalConfig, seed: int, picture: str | None, title: str
) -> dict[str, float]:
    """Probe and kNN on the shards under `features` (train/, test/): a Ray task's body; and
    the test embeddings' 2-D picture at `picture` (a PNG path or URI), when given.

    Memory on that worker: the training features (N x D x 2 bytes, float16) and the test ones;
    the kNN turns its bank into float32 a chunk at a time (a running top-k per test image).
    """
    train = read_embeddings(storage.join(features, "train"))
    test = read_embeddings(storage.join(features, "test"))
    if picture is not None:
        plot_embedding_map(*test, picture, cfg.embedding_map, seed, title)
    return evaluate_features(*train, *test, cfg, seed)
