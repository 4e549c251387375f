"""Parallel EMP-SSL sweeps on Ray Tune: each trial a real TorchTrainer run, ASHA on the kNN.

    python jobs/tune.py experiment=smoke sweep.name=patches \\
        '+sweep.space={patches.num_patches: {kind: grid, values: [2, 4, 8]}}'
    python jobs/tune.py experiment=tune-demo                     # the preset sweep

Rerunning the same sweep.name resumes it: finished trials are not run again.
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
from empssl_ray.config import TuneJobConfig, register_configs  # noqa: E402


def main(cfg: TuneJobConfig) -> dict[str, Any]:
    """Runs (or resumes) the sweep and writes results.csv, best.yaml and sweep.png."""
    from empssl_ray import storage
    from empssl_ray.ray_sweep_report import plot_sweep, write_best_yaml, write_results_csv
    from empssl_ray.ray_tune import apply_overrides, build_tuner, trial_table
    from empssl_ray.tracking import format_table

    init_ray(cfg.ray.address, cfg.run.verbose)
    # Trials write into the sweep's folder; each trial's values are checked by the search space.
    preflight(cfg.pretrain_config(), {"sweep.storage_path": cfg.sweep.storage_path})
    tuner, sweep_dir = build_tuner(cfg)
    print(f"empssl-ray: sweep {cfg.sweep.name} -> {sweep_dir}", flush=True)
    results = tuner.fit()
    objective = cfg.sweep.objective
    rows = trial_table(results, objective)
    write_results_csv(rows, storage.join(sweep_dir, "results.csv"))
    plot_sweep(rows, objective, storage.join(sweep_dir, "sweep.png"))
    outputs: dict[str, Any] = {"sweep_dir": sweep_dir, "rows": rows}
    best = results.get_best_result(metric=objective, mode="max", filter_nan_and_inf=True)
    if best.metrics and objective in best.metrics:
        best_cfg = apply_overrides(cfg.pretrain_config(), (best.config or {})["params"])
        best_cfg.run.name = f"{cfg.sweep.name}-best"
        path = storage.join(sweep_dir, "best.yaml")
        write_best_yaml(best_cfg, cfg.sweep.name, objective, best.metrics[objective], path)
        outputs["best_yaml"] = path
    keys = list(cfg.sweep.space) + [objective, "epochs", "patch_forwards"]
    print(format_table({r["trial"]: r for r in rows}, keys))
    print(f"results: {sweep_dir}/results.csv, best config: {outputs.get('best_yaml')}")
    return outputs


@hydra.main(config_path="../empssl_ray/conf", config_name="tune", version_base=None)
def cli(cfg: DictConfig) -> None:
    run_job(main, cfg, TuneJobConfig)


if __name__ == "__main__":
    register_configs()
    cli()
