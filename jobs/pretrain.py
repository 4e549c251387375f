"""Distributed EMP-SSL pretraining, then bag-of-features evaluation.

    python jobs/pretrain.py experiment=smoke                 # embedded local Ray
    ray job submit --working-dir . -- python jobs/pretrain.py data=cifar10 ray.use_gpu=true

Rerunning with the same run.name resumes from that run's latest checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

# The repo root, so `python jobs/x.py` imports empssl_ray also under `ray job submit`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from empssl_ray.cli import init_ray, user_errors  # noqa: E402
from empssl_ray.config import ModelConfig, PretrainConfig, register_configs, to_dataclass  # noqa: E402


def evaluate_run(cfg: PretrainConfig, checkpoint_dir: str, run_dir: str) -> dict[str, Any]:
    """Evaluates the trained encoder (and a random-init one if asked); writes eval.json."""
    from empssl_ray.ray_eval import evaluate_encoder, load_encoder_state, random_init_state
    from empssl_ray.tracking import format_table

    state, run_cfg = load_encoder_state(checkpoint_dir)
    model_cfg = ModelConfig(**run_cfg["model"])
    args = (model_cfg, cfg.data, cfg.patches, cfg.eval, cfg.ray, cfg.run.seed, cfg.run.progress)
    results = {"pretrained": evaluate_encoder(state, *args)}
    if cfg.run.compare_random_init:
        in_channels = state["backbone.stem.0.weight"].shape[1]
        results["random init"] = evaluate_encoder(
            random_init_state(model_cfg, in_channels, cfg.run.seed), *args)
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump({"checkpoint": checkpoint_dir, **results}, f, indent=2)
    print(format_table(results, ["probe_acc", "knn_acc", "num_train", "num_test", "eval_patches"]))
    return results


def main(cfg: PretrainConfig) -> dict[str, Any]:
    """Pretrains (resuming if the run exists), evaluates, and returns a summary."""
    from empssl_ray.ray_train import pretrain, run_dir_of
    from empssl_ray.tracking import write_csv_and_plot

    init_ray(cfg.ray.address)
    run_dir = run_dir_of(cfg)
    print(f"empssl-ray: run {cfg.run.name} -> {run_dir}", flush=True)
    start = time.perf_counter()
    result = pretrain(cfg)
    final = result.metrics or {}
    summary: dict[str, Any] = {"run_dir": run_dir, "train_time_s": time.perf_counter() - start,
                               "final": final}
    print(f"pretraining done in {summary['train_time_s']:.0f} s: "
          f"loss {final.get('loss', float('nan')):.3f}, "
          f"kNN {100 * final.get('knn_acc', float('nan')):.1f}%", flush=True)
    if "://" not in run_dir:
        png = write_csv_and_plot(run_dir)
        print(f"curves: {png}")
    if cfg.run.evaluate and result.checkpoint is not None:
        with result.checkpoint.as_directory() as ckpt:
            summary["eval"] = evaluate_run(cfg, ckpt, run_dir)
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump({**summary, "config": asdict(cfg)}, f, indent=2, default=str)
    return summary


@hydra.main(config_path="../empssl_ray/conf", config_name="pretrain", version_base=None)
def cli(cfg: DictConfig) -> None:
    with user_errors():
        main(to_dataclass(cfg, PretrainConfig))


if __name__ == "__main__":
    register_configs()
    cli()
