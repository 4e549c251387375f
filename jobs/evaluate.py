"""Bag-of-features evaluation of a checkpoint (or of a random-init encoder) on Ray.

    python jobs/evaluate.py run.name=smoke experiment=smoke        # latest checkpoint of a run
    python jobs/evaluate.py checkpoint=runs/smoke/checkpoint_... random_init=true
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

# The repo root, so `python jobs/x.py` imports empssl_ray also under `ray job submit`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from empssl_ray.cli import init_ray, user_errors  # noqa: E402
from empssl_ray.config import EvaluateConfig, ModelConfig, register_configs, to_dataclass  # noqa: E402


def main(cfg: EvaluateConfig) -> dict[str, Any]:
    """Embeds train and test on Ray, fits the probe and kNN, writes the metrics JSON."""
    from empssl_ray.datasets import open_dataset
    from empssl_ray.ray_eval import (
        evaluate_encoder,
        latest_checkpoint,
        load_encoder_state,
        random_init_state,
    )
    from empssl_ray.ray_train import run_dir_of
    from empssl_ray.tracking import format_table

    init_ray(cfg.ray.address)
    run_dir = run_dir_of(cfg)  # type: ignore[arg-type]
    if cfg.random_init:
        channels = open_dataset(cfg.data, "train").info.channels
        model_cfg, source = cfg.model, "random init"
        state = random_init_state(model_cfg, channels, cfg.run.seed)
    else:
        source = cfg.checkpoint or latest_checkpoint(run_dir)
        state, run_cfg = load_encoder_state(source)
        model_cfg = ModelConfig(**run_cfg["model"])  # the architecture it was trained with
    metrics = evaluate_encoder(state, model_cfg, cfg.data, cfg.patches, cfg.eval, cfg.ray,
                               cfg.run.seed, cfg.run.progress)
    output = cfg.output or os.path.join(run_dir, "eval.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump({"checkpoint": source, **metrics}, f, indent=2)
    print(format_table({source: metrics}, ["probe_acc", "knn_acc", "num_train", "num_test"]))
    print(f"metrics: {output}")
    return metrics


@hydra.main(config_path="../empssl_ray/conf", config_name="evaluate", version_base=None)
def cli(cfg: DictConfig) -> None:
    with user_errors():
        main(to_dataclass(cfg, EvaluateConfig))


if __name__ == "__main__":
    register_configs()
    cli()
