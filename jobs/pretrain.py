"""Distributed EMP-SSL pretraining, then bag-of-features evaluation.

    python jobs/pretrain.py experiment=smoke                 # embedded local Ray
    ray job submit --working-dir . -- python jobs/pretrain.py data=parquet \
        data.root=s3://bucket/cifar10 run.storage_path=s3://bucket/runs ray.use_gpu=true

Rerunning with the same run.name and run.storage_path resumes from that run's latest checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from empssl_ray.config import PretrainConfig
from empssl_ray.console import metrics_text
from empssl_ray.data import storage
from empssl_ray.data.datasets import open_splits
from empssl_ray.evaluation.results import write_eval
from empssl_ray.launch import start
from empssl_ray.on_ray.evaluate import evaluate_checkpoint
from empssl_ray.on_ray.progress import driver_console
from empssl_ray.on_ray.session import init_ray, preflight
from empssl_ray.on_ray.tracking import track_outcome
from empssl_ray.on_ray.train import pretrain
from empssl_ray.rules import check_split_sizes
from empssl_ray.runs.checkpoints import latest_checkpoint, resume_point, run_dir_of


def main(cfg: PretrainConfig) -> dict[str, Any]:
    """Pretrains (resuming if the run exists), evaluates, and returns a summary."""
    init_ray(cfg.ray.address, cfg.run.verbose)
    preflight(cfg)
    run_dir = run_dir_of(cfg)
    splits = open_splits(cfg.data)  # once: the stream, the monitor and evaluation read it
    check_split_sizes(cfg, len(splits.train), len(splits.test))  # not after an hour's training
    start_time = time.perf_counter()
    with driver_console(cfg.run.progress) as console:
        console.line(f"empssl-ray: run {cfg.run.name} -> {run_dir}")
        result = pretrain(cfg, board=console.board, splits=splits)
        summary: dict[str, Any] = {
            "run_dir": run_dir,
            "final": result.metrics or {},
            "train_time_s": time.perf_counter() - start_time,
        }
        console.line(
            f"pretraining done in {summary['train_time_s']:.0f} s | "
            f"{metrics_text(summary['final'])}; curves: {storage.join(run_dir, 'curves.png')}"
        )
        if cfg.run.evaluate and result.checkpoint is not None:
            checkpoint = latest_checkpoint(run_dir)
            summary["eval"] = evaluate_checkpoint(
                cfg,
                checkpoint,
                storage.join(run_dir, "features"),
                cfg.run.compare_random_init,
                board=console.board,
                splits=splits,
            )
    if "eval" in summary:
        write_eval(storage.join(run_dir, "eval.json"), checkpoint, summary["eval"])
    if cfg.tracking.backend != "none":
        final_step = int(summary["final"].get("step", 0))
        newest = resume_point(run_dir).location
        track_outcome(cfg, run_dir, newest, final_step, summary.get("eval"))
    storage.write_text(
        storage.join(run_dir, "summary.json"),
        json.dumps({**summary, "config": asdict(cfg)}, indent=2, default=str),
    )
    return summary


if __name__ == "__main__":
    start("pretrain", PretrainConfig, main)
