"""Bag-of-features evaluation of a checkpoint (or of a random-init encoder) on Ray.

python jobs/evaluate.py run.name=smoke experiment=smoke        # latest checkpoint of a run
python jobs/evaluate.py checkpoint=s3://bucket/runs/smoke/checkpoint_... random_init=true
python jobs/evaluate.py run.name=smoke experiment=smoke eval_data=cifar100   # transfer
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

# The repo root, so `python jobs/x.py` imports empssl_ray also under `ray job submit`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from empssl_ray.cli import init_ray, preflight, run_job  # noqa: E402
from empssl_ray.config import EvaluateConfig, register_configs  # noqa: E402
from jobs.pretrain import write_eval  # noqa: E402


def main(cfg: EvaluateConfig) -> dict[str, Any]:
    """Embeds train and test on Ray, fits the probe and kNN, writes the metrics JSON.

    Returns:
        {"pretrain_data": name, "eval_data": name, "pretrained": metrics} for a checkpoint,
        with "random init" in place of "pretrained" under random_init.
    """
    from empssl_ray import storage
    from empssl_ray.checkpoints import latest_checkpoint, run_dir_of
    from empssl_ray.config import DataConfig
    from empssl_ray.ray_console import driver_console
    from empssl_ray.ray_eval import evaluate_checkpoint

    init_ray(cfg.ray.address, cfg.run.verbose)
    preflight(cfg, trains=False)
    run_dir = run_dir_of(cfg)
    source = None if cfg.random_init else (cfg.checkpoint or latest_checkpoint(run_dir))
    eval_data = None
    if cfg.eval_data is not None:  # transfer: another dataset, with data's limits
        eval_data = DataConfig(
            name=cfg.eval_data,
            root=cfg.eval_data_root,
            train_limit=cfg.data.train_limit,
            test_limit=cfg.data.test_limit,
        )
    with driver_console(cfg.run.progress) as console:
        results = evaluate_checkpoint(
            cfg,
            source,
            storage.join(run_dir, "features"),
            eval_data=eval_data,
            board=console.board,
        )
    output = storage.resolve(cfg.output or storage.join(run_dir, "eval.json"))
    write_eval(output, source or "random init", results)
    print(f"metrics: {output}")
    return results


@hydra.main(config_path="../empssl_ray/conf", config_name="evaluate", version_base=None)
def cli(cfg: DictConfig) -> None:
    run_job(main, cfg, EvaluateConfig)


if __name__ == "__main__":
    register_configs()
    cli()
