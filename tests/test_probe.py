"""The linear probe against the reference's protocol written out here, on fixed features."""

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from empssl_ray.config import EvalConfig
from empssl_ray.evaluation.probe import evaluate_features, label_subset, linear_probe


def reference_probe(train_x, train_y, test_x, test_y, epochs, lr, batch, weight_decay, seed):
    """The reference's loop: SGD (momentum 0.9) on raw features, shuffled batches with the last
    partial one dropped, cosine over epochs stepped once per epoch; last epoch's accuracy."""
    return reference_curve(train_x, train_y, test_x, test_y, epochs, lr, batch, weight_decay, seed)[
        -1
    ]


def reference_curve(train_x, train_y, test_x, test_y, epochs, lr, batch, weight_decay, seed):
    """`reference_probe`'s test accuracy after every epoch (its code prints best and last)."""
    torch.manual_seed(seed)
    clf = nn.Linear(train_x.shape[1], int(train_y.max()) + 1)
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    curve: list[float] = []
    for _ in range(epochs):
        perm = torch.randperm(len(train_x))
        for k in range(len(train_x) // batch):
            idx = perm[k * batch : (k + 1) * batch]
            loss = F.cross_entropy(clf(train_x[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            curve.append((clf(test_x).argmax(1) == test_y).float().mean().item())
    return curve


def overlapping_features(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes whose clusters overlap (accuracy well under 100%), off-centre, unscaled."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centres = torch.randn(4, 24, generator=torch.Generator().manual_seed(99))
    return 3.0 + 2.0 * (centres[y] + 3.0 * torch.randn(n, 24, generator=g)), y


def test_probe_follows_the_reference_protocol() -> None:
    (xtr, ytr), (xte, yte) = overlapping_features(350, 0), overlapping_features(200, 1)
    cfg = EvalConfig(probe_epochs=12)  # the reference's lr 0.03, wd 5e-5, batch 100, raw
    ours = evaluate_features(xtr, ytr, xte, yte, cfg, seed=7)
    expected = reference_probe(xtr, ytr, xte, yte, 12, 0.03, 100, 5e-5, seed=7)
    assert ours["probe_acc"] == pytest.approx(expected, abs=1e-6)
    assert 0.4 < expected < 0.95  # neither trivial nor chance: protocol changes show


def test_each_protocol_knob_reaches_the_probe() -> None:
    (xtr, ytr), (xte, yte) = overlapping_features(350, 0), overlapping_features(200, 1)
    base: dict[str, Any] = dict(epochs=12, lr=0.03, seed=7)
    runs = {
        "reference": linear_probe(xtr, ytr, xte, yte, **base),
        "standardised": linear_probe(xtr, ytr, xte, yte, standardize=True, **base),
        "batch 64": linear_probe(xtr, ytr, xte, yte, batch_size=64, **base),
        "wd 5e-1": linear_probe(xtr, ytr, xte, yte, weight_decay=0.5, **base),
    }
    accs = {k: v["probe_acc"] for k, v in runs.items()}
    assert len({round(a, 6) for a in accs.values()}) == len(accs), accs
    # Training accuracy counts the 300 images of the full batches only (50 are dropped).
    assert runs["reference"]["probe_train_acc"] * 300 == pytest.approx(
        round(runs["reference"]["probe_train_acc"] * 300)
    )


def test_reference_protocol_is_the_default() -> None:
    cfg = EvalConfig()
    assert (cfg.probe_weight_decay, cfg.probe_batch_size, cfg.probe_standardize) == (
        5e-5,
        100,
        False,
    )
    assert (cfg.num_patches, cfg.probe_epochs, cfg.probe_lr) == (128, 100, 0.03)


def test_evaluate_features_reports_probe_and_knn() -> None:
    (xtr, ytr), (xte, yte) = overlapping_features(250, 0), overlapping_features(100, 1)
    metrics = evaluate_features(xtr, ytr, xte, yte, EvalConfig(probe_epochs=3))
    assert set(metrics) >= {"probe_acc", "probe_train_acc", "knn_acc", "num_train", "num_test"}
    assert (metrics["num_train"], metrics["num_test"]) == (250, 100)


def test_label_subsets_are_class_balanced_and_the_same_for_every_encoder() -> None:
    """1% and 10% of a split whose classes differ in size: each class gives its own fraction,
    drawn from the labels and the seed only (the features of any encoder play no part)."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate((1000, 500, 2000, 40))])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    for fraction, per_class in ((0.01, [10, 5, 20, 1]), (0.1, [100, 50, 200, 4])):
        rows = label_subset(labels, fraction, seed=3)
        assert torch.bincount(labels[rows]).tolist() == per_class
        assert len(set(rows.tolist())) == len(rows)
        assert torch.equal(rows, label_subset(labels, fraction, seed=3))  # a rerun: the same
    assert not torch.equal(label_subset(labels, 0.1, seed=3), label_subset(labels, 0.1, seed=4))


def test_label_fraction_probes_are_reported_beside_the_full_one() -> None:
    (xtr, ytr), (xte, yte) = overlapping_features(1000, 0), overlapping_features(200, 1)
    cfg = EvalConfig(probe_epochs=5, label_fractions=[0.01, 0.1])
    metrics = evaluate_features(xtr, ytr, xte, yte, cfg)
    # 10 labelled images (1%) train a probe too (its batch: all of them)
    assert {"probe_1pct_acc", "probe_10pct_acc", "probe_acc"} <= set(metrics)
    rows = label_subset(ytr, 0.1, seed=0)
    alone = linear_probe(xtr[rows], ytr[rows], xte, yte, epochs=5, seed=0)
    assert metrics["probe_10pct_acc"] == alone["probe_acc"]
    assert "probe_1pct_acc" not in evaluate_features(
        xtr, ytr, xte, yte, EvalConfig(probe_epochs=1, label_fractions=[])
    )


def test_probe_batch_larger_than_the_data_is_a_clear_error() -> None:
    (xtr, ytr), (xte, yte) = overlapping_features(50, 0), overlapping_features(20, 1)
    with pytest.raises(ValueError, match="probe_batch_size"):
        linear_probe(xtr, ytr, xte, yte, epochs=1, batch_size=100)


def test_probe_reports_its_best_epoch_beside_the_last() -> None:
    (xtr, ytr), (xte, yte) = overlapping_features(350, 0), overlapping_features(200, 1)
    curve = reference_curve(xtr, ytr, xte, yte, 12, 0.03, 100, 5e-5, 7)
    ours = linear_probe(xtr, ytr, xte, yte, epochs=12, lr=0.03, batch_size=100, seed=7)
    assert ours["probe_acc"] == pytest.approx(curve[-1], abs=1e-6)
    assert ours["probe_best_acc"] == pytest.approx(max(curve), abs=1e-6)
    assert curve[ours["probe_best_epoch"] - 1] == max(curve)


def test_embeddings_are_read_in_the_split_order_whatever_the_shard_order(tmp_path) -> None:
    """Ray writes shards in any order: read by row id, the label subsets are the same rows
    for every encoder."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from empssl_ray.evaluation.shards import read_embeddings

    for name, ids in (("a.parquet", [4, 5, 0]), ("b.parquet", [3, 1, 2])):
        emb = np.array(ids, dtype=np.float16)[:, None].repeat(2, 1)
        table = {"embedding": list(emb), "label": np.array(ids) % 2, "id": np.array(ids)}
        pq.write_table(pa.table(table), tmp_path / name)
    features, labels = read_embeddings(str(tmp_path))
    assert features[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]
