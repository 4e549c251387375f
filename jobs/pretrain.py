"""Distributed EMP-SSL pretraining, then bag-of-features evaluation.

    python jobs/pretrain.py experiment=smoke                 # embedded local Ray
    ray job submit --working-dir . -- python jobs/pretrain.py data=parquet \
        data.root=s3://bucket/cifar10 run.storage_path=s3://bucket/runs ray.use_gpu=true

Rerunning with the same run.name and run.storage_path resumes from that run's latest checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

# The repo root, so `python jobs/x.py` imports empssl_ray also under `ray job submit`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from empssl_ray.cli import init_ray, preflight, run_job  # noqa: E402
from empssl_ray.config import PretrainConfig, register_configs  # noqa: E402

EVAL_COLUMNS = ["probe_acc", "knn_acc", "num_train", "num_test", "eval_patches"]


def write_eval(location: str, checkpoint: str, results: dict[str, Any]) -> None:
    """eval.json: which checkpoint, the pretraining and evaluation datasets, and one metrics row
    per encoder evaluated; the same rows as a table on stdout."""
    from empssl_ray import storage
    from empssl_ray.tracking import format_table

    storage.write_text(location, json.dumps({"checkpoint": checkpoint, **results}, indent=2))
    rows = {name: row for name, row in results.items() if isinstance(row, dict)}
    print(f"evaluated on {results['eval_data']} (pretrained on {results['pretrain_data']}):")
    print(format_table(rows, EVAL_COLUMNS))


def main(cfg: PretrainConfig) -> dict[str, Any]:
    """Pretrains (resuming if the run exists), evaluates, and returns a summary."""
    from empssl_ray import storage
    from empssl_ray.checkpoints import latest_checkpoint, run_dir_of
    from empssl_ray.console import metrics_text
    from empssl_ray.ray_console import driver_console
    from empssl_ray.ray_eval import evaluate_checkpoint
    from empssl_ray.ray_train import pretrain

    init_ray(cfg.ray.address, cfg.run.verbose)
    preflight(cfg)
    run_dir = run_dir_of(cfg)
    start = time.perf_counter()
    with driver_console(cfg.run.progress) as console:
        console.line(f"empssl-ray: run {cfg.run.name} -> {run_dir}")
        result = pretrain(cfg, board=console.board)
        summary: dict[str, Any] = {
            "run_dir": run_dir,
            "final": result.metrics or {},
            "train_time_s": time.perf_counter() - start,
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
            )
    if "eval" in summary:
        write_eval(storage.join(run_dir, "eval.json"), checkpoint, summary["eval"])
    storage.write_text(
        storage.join(run_dir, "summary.json"),
        json.dumps({**summary, "config": asdict(cfg)}, indent=2, default=str),
    )
    return summary


@hydra.main(config_path="../empssl_ray/conf", config_name="pretrain", version_base=None)
def cli(cfg: DictConfig) -> None:
    run_job(main, cfg, PretrainConfig)


if __name__ == "__main__":
    register_configs()
    cli()
