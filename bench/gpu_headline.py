"""The paper's headline on one GPU with the core alone: EMP-SSL, CIFAR-10, 20 patches, 1 epoch.

Pretrains ResNet-18-CIFAR (LARS lr 0.3, batch 100, float32 as the reference or `--bf16`,
channels-last; the defaults of `empssl_ray/config.py`) on CIFAR-10 read from a Parquet
directory, then evaluates the bag-of-features embedding (mean pre-feature h over T = 128
patches) with the jobs' linear probe (the reference's protocol, last epoch reported) and
weighted kNN. The reference reports 84.2% linear-probe accuracy for it (its 1-epoch table).

The data path stays on the GPU: all JPEGs are decoded once up-front by a process pool, the uint8
images are uploaded once, and each step's patches are cut on the GPU from a shuffled index. Every
stage prints its wall time (CUDA-synchronised) and throughput; the end prints a table and one JSON
line. A few warm-up steps on a throwaway trainer run first and are not timed, and each epoch also
reports its steady-state patches/s (between its first and last report) beside the whole-epoch
figure. No Ray anywhere: a box with torch, torchvision, pyarrow, pillow, numpy and tqdm runs it.

    python bench/gpu_headline.py                      # the headline (GPU, ~minutes)
    python bench/gpu_headline.py --bf16               # the same under bf16 autocast
    python bench/gpu_headline.py --quick --device cpu # a CPU smoke run (tiny data and model)

With the package installed (`pip install -e .`), or from the repository root with
`PYTHONPATH=.` on a box that has only the packages above.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from empssl_ray.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    PatchConfig,
    PretrainConfig,
    RunConfig,
)
from empssl_ray.data.datasets import open_dataset
from empssl_ray.devices import to_device
from empssl_ray.evaluation.features import embed_dataset
from empssl_ray.evaluation.probe import evaluate_features
from empssl_ray.method.loop import LoopHooks, fit
from empssl_ray.method.optim import schedule_steps
from empssl_ray.method.training import Trainer
from empssl_ray.presets import TINY, preset_values

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10"
PAPER_PROBE_ACC = 0.806  # CIFAR-10, 1 epoch, 20 patches, ResNet-18, T = 128 (the paper's Table 1)

# --quick: a CPU smoke run of every stage in seconds. Anything given explicitly wins.
_TINY = preset_values(TINY)  # the tiny-run preset: its images, model and batch
QUICK = dict(
    train_limit=_TINY["data"]["train_limit"],
    test_limit=_TINY["data"]["test_limit"],
    **{
        k: _TINY["model"][k]
        for k in ("backbone", "width", "prefeature_dim", "hidden_dim", "proj_dim")
    },
    batch_size=_TINY["optim"]["batch_size"],
    patches=2,  # the fewest the loss takes: every stage once, as fast as it goes
    eval_patches=2,
    probe_epochs=1,
    warmup_steps=1,
)


@dataclass
class Stage:
    name: str
    seconds: float
    items: int  # work done: images, patches, probe samples...
    unit: str  # what `items` counts
    accuracy: float | None = None

    @property
    def per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")


class Clock:
    """Wall time of a stage, CUDA-synchronised at both ends so queued kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Clock:
        self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self.seconds = time.perf_counter() - self.start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d_model, d_optim, d_patch, d_eval = ModelConfig(), OptimConfig(), PatchConfig(), EvalConfig()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", default=str(DEFAULT_DATA), help="Parquet dir with train/ and test/")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help=f"CPU smoke preset: {QUICK}")
    p.add_argument("--train-limit", type=int, help="N training images, spread over the file")
    p.add_argument("--test-limit", type=int, help="N test images, spread (the file is by class)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="JPEG decode procs")
    p.add_argument("--backbone", help=f"model registry name (default {d_model.backbone})")
    p.add_argument("--width", type=int, help=f"first-stage channels (default {d_model.width})")
    p.add_argument("--prefeature-dim", type=int, help=f"default {d_model.prefeature_dim}")
    p.add_argument("--hidden-dim", type=int, help=f"default {d_model.hidden_dim}")
    p.add_argument("--proj-dim", type=int, help=f"default {d_model.proj_dim}")
    p.add_argument("--patches", type=int, help=f"patches n (default {d_patch.num_patches})")
    p.add_argument("--epochs", type=int, default=d_optim.epochs)
    p.add_argument("--batch-size", type=int, help=f"images per step (default {d_optim.batch_size})")
    p.add_argument("--lr", type=float, default=d_optim.lr)
    p.add_argument(
        "--warmup-steps",
        type=int,
        help="untimed steps on a throwaway trainer first: cuDNN autotuning and the lazy CUDA "
        "library set-up stay out of the timed epoch (default 10; --quick 1)",
    )
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=d_optim.bf16)
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC activations (default: on for cuda, off for cpu)",
    )
    p.add_argument("--eval-patches", type=int, help=f"T (default {d_eval.num_patches}; paper 128)")
    p.add_argument("--eval-batch-size", type=int, default=d_eval.batch_size, help="images/forward")
    p.add_argument("--probe-epochs", type=int, help=f"default {d_eval.probe_epochs}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--json-out", help="also write the result JSON to this file")
    args = p.parse_args(argv)
    defaults = dict(
        backbone=d_model.backbone,
        width=d_model.width,
        prefeature_dim=d_model.prefeature_dim,
        hidden_dim=d_model.hidden_dim,
        proj_dim=d_model.proj_dim,
        patches=d_patch.num_patches,
        batch_size=d_optim.batch_size,
        eval_patches=d_eval.num_patches,
        probe_epochs=d_eval.probe_epochs,
        warmup_steps=10,
    )
    for key in set(QUICK) | set(defaults):
        if getattr(args, key, None) is None:
            setattr(args, key, QUICK.get(key) if args.quick else defaults.get(key))
    return args


def build_config(args: argparse.Namespace, device: torch.device) -> PretrainConfig:
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    return PretrainConfig(
        data=DataConfig(
            name="parquet", root=args.data, train_limit=args.train_limit, test_limit=args.test_limit
        ),
        patches=PatchConfig(num_patches=args.patches),
        model=ModelConfig(
            backbone=args.backbone,
            width=args.width,
            prefeature_dim=args.prefeature_dim,
            hidden_dim=args.hidden_dim,
            proj_dim=args.proj_dim,
            channels_last=channels_last,
        ),
        optim=OptimConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, bf16=args.bf16
        ),
        eval=EvalConfig(
            num_patches=args.eval_patches,
            batch_size=args.eval_batch_size,
            probe_epochs=args.probe_epochs,
        ),
        run=RunConfig(seed=args.seed),
    )


def load_split_parallel(
    cfg: DataConfig, split: str, workers: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Like `datasets.load_split`, with the chunks (parquet row groups) decoded by a process pool.

    The split's limit (cfg.train_limit / cfg.test_limit) is spread over the row groups by
    `open_dataset`, so a small subset of a class-sorted split stays balanced.

    Returns images uint8 (N, C, S, S), labels int64 (N,), in the split's order, and the number
    of processes that decoded them.
    """
    ds = open_dataset(cfg, split)
    chunks = ds.chunks
    workers = max(1, min(workers, len(chunks)))
    if workers == 1:
        parts = [ds.load_chunk(c) for c in chunks]
    else:
        # fork: workers start at once and need nothing re-imported; it is safe while this
        # process has no CUDA context (decoding runs before anything touches the GPU).
        method = "spawn" if torch.cuda.is_initialized() else "fork"
        with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
            parts = list(pool.map(ds.load_chunk, chunks))
    images = np.concatenate([p[0] for p in parts])
    return images, np.concatenate([p[1] for p in parts]), workers


def shuffled_batches(
    images: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of {"image": (B, C, H, W) uint8} batches gathered on the images' device.

    The last incomplete batch is dropped (as the reference's loader does).
    """
    perm = torch.randperm(len(images), generator=generator, device=images.device)
    for start in range(0, len(images) - batch_size + 1, batch_size):
        yield {"image": images[perm[start : start + batch_size]]}


def warm_up(
    cfg: PretrainConfig,
    channels: int,
    side: int,
    images: torch.Tensor,
    steps: int,
    device: torch.device,
) -> None:
    """`steps` training steps on a throwaway trainer of the timed run's shapes.

    cuDNN autotuning, cuBLAS/cuSOLVER initialisation and the allocator's first growth happen
    here, once per process, instead of inside the timed epoch; the timed run's weights, schedule
    and random streams are untouched.
    """
    trainer = Trainer(cfg, channels, side, steps, device)
    shuffle = torch.Generator(device=device).manual_seed(cfg.run.seed + 99)
    batches = shuffled_batches(images, cfg.optim.batch_size, shuffle)
    trainer.run_epoch(itertools.islice(batches, steps), log_every=steps)
    del trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()


def steady_rate(marks: list[tuple[float, int]], patches_per_step: int) -> float | None:
    """Patches/s between the first and the last report of an epoch (None under 2 reports)."""
    if len(marks) < 2 or marks[-1][0] <= marks[0][0]:
        return None
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return (s1 - s0) * patches_per_step / (t1 - t0)


def print_table(stages: list[Stage], total_s: float) -> None:
    print(f"\n{'stage':<16}{'wall s':>9}{'throughput':>26}{'accuracy':>10}")
    for s in stages:
        acc = f"{100 * s.accuracy:.2f}%" if s.accuracy is not None else ""
        rate = f"{s.per_s:,.0f} {s.unit}/s"
        print(f"{s.name:<16}{s.seconds:>9.2f}{rate:>26}{acc:>10}")
    print(f"{'total':<16}{total_s:>9.2f}")


class EpochTiming(LoopHooks):
    """The core loop's hooks here: a bar per epoch, its wall time (device synchronised) as a
    stage, and its steady-state rate between its first and last report."""

    def __init__(
        self,
        device: torch.device,
        cfg: PretrainConfig,
        steps_per_epoch: int,
        progress: bool,
        report: Any,
    ) -> None:
        self.device, self.cfg, self.steps, self.progress = device, cfg, steps_per_epoch, progress
        self.report = report
        self.steady: list[float] = []
        self.marks: list[tuple[float, int]] = []  # (time, step) at each report, synchronised
        self.start = 0.0
        self.epoch = 0
        self.current: Any = None

    def bar(self, batches: Iterator[dict[str, torch.Tensor]]) -> Any:
        self.current = tqdm(
            batches,
            total=self.steps,
            desc=f"train epoch {self.epoch + 1}/{self.cfg.optim.epochs}",
            unit="step",
            disable=not self.progress,
        )
        return self.current

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.epoch = trainer.epoch
        Clock(self.device).sync()
        self.marks, self.start = [], time.perf_counter()

    def on_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        Clock(self.device).sync()
        self.marks.append((time.perf_counter(), int(metrics["step"])))
        self.current.set_postfix(
            loss=f"{metrics['loss']:.2f}", patches_s=f"{metrics['patches_per_s']:,.0f}"
        )

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        Clock(self.device).sync()
        seconds = time.perf_counter() - self.start
        self.current.close()
        per_step = self.cfg.optim.batch_size * self.cfg.patches.num_patches
        rate = steady_rate(self.marks, per_step)
        if rate is not None:
            self.steady.append(rate)
        self.report(
            Stage(f"train epoch {trainer.epoch}", seconds, self.steps * per_step, "patches"),
            f" (loss {metrics['loss']:.3f}, tcr {metrics['tcr']:.3f}, "
            f"invariance {metrics['invariance']:.4f}, {self.steps} steps; steady state "
            + (f"{rate:,.0f} patches/s)" if rate is not None else "n/a: under 2 reports)"),
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU: pass --device cpu")
    if not Path(args.data).is_dir():
        raise SystemExit(f"--data {args.data} is not a directory (Parquet with train/ and test/)")
    cfg = build_config(args, device)
    t_start = time.perf_counter()
    stages: list[Stage] = []

    def report(stage: Stage, extra: str = "") -> None:
        stages.append(stage)
        acc = f", accuracy {100 * stage.accuracy:.2f}%" if stage.accuracy is not None else ""
        print(
            f"[{stage.name}] {stage.seconds:.2f} s, {stage.per_s:,.0f} {stage.unit}/s{acc}{extra}",
            flush=True,
        )

    # ---- decode every JPEG once (before any CUDA call, so the pool can fork) ----------------
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "test"):
        t0 = time.perf_counter()
        images, labels, procs = load_split_parallel(cfg.data, split, args.workers)
        data[split] = images, labels
        report(
            Stage(f"decode {split}", time.perf_counter() - t0, len(images), "images"),
            f" ({len(images)} images, {procs} procs)",
        )
    (train_np, train_lab), (test_np, test_lab) = data["train"], data["test"]
    _, channels, side, _ = train_np.shape

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}", flush=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune the convolutions once

    # ---- upload the uint8 images once (pinned, so the copies are asynchronous) ---------------
    with Clock(device) as clock:
        train_img = to_device(torch.from_numpy(train_np), device)
        test_img = to_device(torch.from_numpy(test_np), device)
        train_y = to_device(torch.from_numpy(train_lab), device)
        test_y = to_device(torch.from_numpy(test_lab), device)
    report(Stage("upload", clock.seconds, len(train_img) + len(test_img), "images"))

    # ---- pretrain ------------------------------------------------------------------------------
    batch = cfg.optim.batch_size
    steps_per_epoch = len(train_img) // batch
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(train_img)} training images make no batch of {batch}")
    if args.warmup_steps > 0:
        with Clock(device) as clock:
            warm_up(cfg, channels, side, train_img, args.warmup_steps, device)
        report(Stage("warm-up", clock.seconds, args.warmup_steps, "steps"), " (not timed below)")
    torch.manual_seed(cfg.run.seed)  # model init
    trainer = Trainer(cfg, channels, side, schedule_steps(cfg.optim, steps_per_epoch), device)
    shuffle = torch.Generator(device=device).manual_seed(cfg.run.seed + 1)
    report_every = max(1, min(10, steps_per_epoch // 4))  # a few reports even in --quick
    timing = EpochTiming(device, cfg, steps_per_epoch, args.progress, report)

    def epoch_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        return timing.bar(shuffled_batches(train_img, batch, shuffle))

    last = fit(trainer, epoch_batches, cfg.optim.epochs, [timing], report_every)
    assert last is not None  # a fresh trainer trains every epoch
    steady = timing.steady

    # ---- bag-of-features embeddings, left on the device --------------------------------------
    model, t = trainer.model, cfg.eval.num_patches
    feats = {}
    for split, split_images in (("train", train_img), ("test", test_img)):
        desc = f"embed {split}" if args.progress else None
        seed = cfg.run.seed + (2 if split == "train" else 3)
        with Clock(device) as clock:
            feats[split] = embed_dataset(
                model,
                split_images,
                t,
                trainer.patch_size,
                cfg.eval.batch_size,
                device,
                seed,
                desc,
                cfg.model.channels_last,
                cfg.optim.bf16,
                out_device=device,
                patches=cfg.patches,
                patches_per_forward=cfg.eval.patches_per_forward,
            )
        report(
            Stage(f"embed {split}", clock.seconds, len(split_images) * t, "patches"), f" (T={t})"
        )

    # ---- linear probe and kNN on the device, where the features are ----------------------
    e = cfg.eval
    with Clock(device) as clock:  # the jobs' probe and kNN, with the run's eval config
        result_probe = evaluate_features(
            feats["train"], train_y, feats["test"], test_y, e, cfg.run.seed, args.progress
        )
    knn = result_probe["knn_acc"]
    samples = len(train_y) * e.probe_epochs
    report(
        Stage("probe + knn", clock.seconds, samples, "samples", result_probe["probe_acc"]),
        f" ({e.probe_epochs} epochs; last-epoch train accuracy "
        f"{100 * result_probe['probe_train_acc']:.2f}%; kNN k={e.knn_k} {100 * knn:.2f}%)",
    )

    total = time.perf_counter() - t_start
    print_table(stages, total)
    print(
        f"linear probe {100 * result_probe['probe_acc']:.2f}% (T={t}; paper "
        f"{100 * PAPER_PROBE_ACC:.1f}% with T=128), kNN {100 * knn:.2f}%, total {total:.1f} s",
        flush=True,
    )
    train_stages = [s for s in stages if s.name.startswith("train")]
    result: dict[str, Any] = {
        "benchmark": "gpu_headline",
        "device": name,
        "torch": torch.__version__,
        "quick": args.quick,
        "num_train": len(train_y),
        "num_test": len(test_y),
        "num_test_classes": len(np.unique(test_lab)),
        "config": asdict(cfg),
        "stages": {
            s.name: {"seconds": s.seconds, "items": s.items, "unit": s.unit, "per_s": s.per_s}
            for s in stages
        },
        "train_loss": last["loss"],
        "train_patches_per_s": sum(s.items for s in train_stages)
        / sum(s.seconds for s in train_stages),
        # Between the epochs' first and last reports: no start-up, no epoch tail.
        "train_steady_patches_per_s": sum(steady) / len(steady) if steady else None,
        "warmup_steps": args.warmup_steps,
        "probe_acc": result_probe["probe_acc"],
        "probe_train_acc": result_probe["probe_train_acc"],
        "knn_acc": knn,
        "paper_probe_acc": PAPER_PROBE_ACC,
        "total_s": total,
    }
    line = json.dumps(result)
    print(line, flush=True)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
