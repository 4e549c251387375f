"""Scores of frozen features: the linear probe (the reference's protocol) and a weighted kNN.

Both take (N, D) features of any dtype and compute in float32 a batch at a time, on whatever
device the features are on, so the same code serves a CPU task reading float16 shards and the
GPU script keeping everything on the device.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from empssl_ray.config import ConfigError, EvalConfig
from empssl_ray.evaluation.features import iterate_batches


@torch.no_grad()
def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 1024,
    bank_chunk: int = 16_384,
) -> float:
    """Weighted kNN on cosine similarity; neighbours vote with weight exp(sim / temperature).

    Args:
        train_x: (N, D) memory bank features (float16 or float32); train_y: (N,) int labels.
        test_x: (M, D) query features; test_y: (M,) int labels.
        bank_chunk: bank rows turned into float32 at once (memory: bank_chunk x D x 4 bytes).

    Returns:
        Top-1 accuracy in [0, 1].
    """
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    bank = ((train_x[sl], train_y[sl]) for sl in iterate_batches(len(train_x), bank_chunk))
    return knn_accuracy_streamed(bank, test_x, test_y, num_classes, k, temperature, batch_size)


@torch.no_grad()
def knn_accuracy_streamed(
    bank: Iterable[tuple[torch.Tensor, torch.Tensor]],
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 1024,
) -> float:
    """`knn_accuracy` with the memory bank read chunk by chunk: a running top-k per query, so
    memory is one chunk plus (M, k), whatever the bank's size.

    Args:
        bank: chunks (n_i, D) features and (n_i,) labels of the memory bank, any number of them.
        test_x: (M, D) queries; test_y: (M,) labels.
    """
    queries = F.normalize(test_x.float(), dim=1)
    m = len(queries)
    top_sim = torch.empty(m, 0, device=queries.device)
    top_lab = torch.empty(m, 0, dtype=torch.long, device=queries.device)
    for chunk_x, chunk_y in bank:
        keys = F.normalize(chunk_x.float().to(queries.device), dim=1)
        labels = chunk_y.long().to(queries.device)
        sims, labs = [], []
        for sl in iterate_batches(m, batch_size):
            sim = torch.cat([top_sim[sl], queries[sl] @ keys.T], dim=1)  # (m', k + n_i)
            lab = torch.cat([top_lab[sl], labels.expand(len(sim), -1)], dim=1)
            best, idx = sim.topk(min(k, sim.shape[1]), dim=1)
            sims.append(best)
            labs.append(lab.gather(1, idx))
        top_sim, top_lab = torch.cat(sims), torch.cat(labs)
    votes = torch.zeros(m, num_classes, device=queries.device)
    votes.scatter_add_(1, top_lab, (top_sim / temperature).exp())
    return int((votes.argmax(1) == test_y.to(queries.device)).sum()) / m


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = 100,
    lr: float = 0.03,
    batch_size: int = 100,
    weight_decay: float = 5e-5,
    standardize: bool = False,
    seed: int = 0,
    progress: str | None = None,
) -> dict[str, float]:
    """Linear classifier on frozen features; reports the LAST epoch's test accuracy.

    The reference's protocol: SGD with momentum 0.9, batches of `batch_size` in a fresh random
    order each epoch with the last partial batch dropped, cosine from `lr` to 0 stepped once per
    epoch, raw features. Reporting the best epoch would pick a model by its test score.

    Args:
        train_x: (N, D) float16 or float32; train_y: (N,); test_x: (M, D); test_y: (M,).
        standardize: first scale features to zero mean, unit std with the training set's
            statistics (not the reference's; one learning rate then fits encoders of any scale).

    Returns:
        {"probe_acc": last-epoch test accuracy, "probe_train_acc": last-epoch train accuracy
        over the batches it trained on, "probe_best_acc" and "probe_best_epoch" (1-based): the
        best epoch's test accuracy, as the reference's code also prints it; it peeks at the test
        set, so figures compare the last}.
    """
    from tqdm.auto import trange

    torch.manual_seed(seed)
    device = train_x.device  # runs wherever the features are (the GPU script keeps them there)
    train_y, test_y = train_y.to(device), test_y.to(device)
    # Stored features are float16 (half the bytes): they stay so, each batch computes in float32.
    if standardize:
        train_x, test_x = train_x.float(), test_x.float()
        mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    clf = nn.Linear(train_x.shape[1], num_classes).to(device)
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    full = len(train_x) // batch_size * batch_size  # the last partial batch is dropped
    if full == 0:
        raise ConfigError(
            f"eval.probe_batch_size={batch_size} exceeds the {len(train_x)} "
            "training images evaluated: lower it, or raise data.train_limit"
        )
    train_correct = torch.zeros((), device=device)
    test_correct = torch.zeros(epochs, device=device)  # per epoch, read once at the end
    for epoch in trange(epochs, desc=progress, disable=progress is None, leave=False):
        order = torch.randperm(len(train_x), device=device)
        train_correct.zero_()
        for sl in iterate_batches(full, batch_size):
            idx = order[sl]
            logits = clf(train_x[idx].float())
            loss = F.cross_entropy(logits, train_y[idx].long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            train_correct += (logits.argmax(1) == train_y[idx]).sum()
        sched.step()
        with torch.no_grad():
            for sl in iterate_batches(len(test_x), 4096):
                test_correct[epoch] += (clf(test_x[sl].float()).argmax(1) == test_y[sl]).sum()
    accuracy = (test_correct / len(test_x)).tolist()
    best = max(range(epochs), key=lambda e: accuracy[e])
    return {
        "probe_acc": accuracy[-1],
        "probe_train_acc": float(train_correct) / full,
        "probe_best_acc": accuracy[best],
        "probe_best_epoch": best + 1,
    }


def label_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A class-balanced subset of a training split: each class's `fraction` (at least one
    image), drawn with `seed` only, so every encoder's probe sees the same rows.

    Args:
        labels: (N,) int labels in the split's order.

    Returns:
        (n,) sorted row indices.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    picked = []
    for c in labels.unique(sorted=True).tolist():
        rows = (labels == c).nonzero().squeeze(1)
        take = max(1, round(fraction * len(rows)))
        picked.append(rows[torch.randperm(len(rows), generator=generator)[:take]])
    return torch.cat(picked).sort().values


def fraction_key(fraction: float) -> str:
    """The metric a label fraction's probe reports under: 0.01 -> probe_1pct_acc."""
    return f"probe_{fraction * 100:g}pct_acc"


def evaluate_features(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    cfg: EvalConfig,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Linear probe (the eval config's protocol) and kNN on the same features: the metrics every
    evaluation reports, whether the jobs', the monitor's or the GPU script's.

    Args:
        train_x: (N, D) float16 or float32; train_y: (N,); test_x: (M, D); test_y: (M,).
    """

    def probe(rows: torch.Tensor | slice, batch_size: int, name: str) -> dict[str, float]:
        return linear_probe(
            train_x[rows],
            train_y[rows],
            test_x,
            test_y,
            cfg.probe_epochs,
            cfg.probe_lr,
            batch_size,
            cfg.probe_weight_decay,
            cfg.probe_standardize,
            seed,
            progress=name if progress else None,
        )

    metrics = probe(slice(None), cfg.probe_batch_size, "linear probe")
    for fraction in cfg.label_fractions:
        rows = label_subset(train_y, fraction, seed).to(train_x.device)
        # 1% of a small split can be fewer images than a batch: one batch of all of them.
        subset = probe(
            rows, min(cfg.probe_batch_size, len(rows)), f"linear probe, {fraction:.0%} of labels"
        )
        metrics[fraction_key(fraction)] = subset["probe_acc"]
    metrics["knn_acc"] = knn_accuracy(
        train_x, train_y, test_x, test_y, cfg.knn_k, cfg.knn_temperature
    )
    metrics.update(num_train=len(train_x), num_test=len(test_x))
    return metrics
