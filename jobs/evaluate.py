"""Bag-of-features evaluation of a checkpoint (or of a random-init encoder) on Ray.

python jobs/evaluate.py run.name=smoke experiment=smoke        # latest checkpoint of a run
python jobs/evaluate.py checkpoint=s3://bucket/runs/smoke/checkpoint_... random_init=true
python jobs/evaluate.py run.name=smoke experiment=smoke eval_data=cifar100   # transfer
"""

from __future__ import annotations

from typing import Any

from empssl_ray.config import DataConfig
from empssl_ray.data import storage
from empssl_ray.evaluation.results import write_eval
from empssl_ray.job_config import EvaluateConfig
from empssl_ray.launch import start
from empssl_ray.on_ray.evaluate import evaluate_checkpoint
from empssl_ray.on_ray.progress import driver_console
from empssl_ray.on_ray.session import init_ray, preflight
from empssl_ray.runs.checkpoints import latest_checkpoint, run_dir_of


def main(cfg: EvaluateConfig) -> dict[str, Any]:
    """Embeds train and test on Ray, fits the probe and kNN, writes the metrics JSON.

    Returns:
        {"pretrain_data": name, "eval_data": name, "pretrained": metrics} for a checkpoint,
        with "random init" in place of "pretrained" under random_init.
    """
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


if __name__ == "__main__":
    start("evaluate", EvaluateConfig, main)
