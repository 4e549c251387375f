"""Parallel EMP-SSL sweeps on Ray Tune: each trial a real TorchTrainer run, ASHA on the kNN.

    python jobs/tune.py experiment=smoke sweep.name=patches \\
        '+sweep.space={patches.num_patches: {kind: grid, values: [2, 4, 8]}}'
    python jobs/tune.py experiment=tune-demo                     # the preset sweep

Rerunning the same sweep.name resumes it: finished trials are not run again.
"""

from __future__ import annotations

from typing import Any

from empssl_ray.data import storage
from empssl_ray.job_config import TuneJobConfig
from empssl_ray.launch import start
from empssl_ray.on_ray.session import init_ray, preflight
from empssl_ray.on_ray.tune import (
    apply_overrides,
    budgeted_sweep,
    build_tuner,
    set_budget,
    trial_table,
)
from empssl_ray.runs.metrics import format_table
from empssl_ray.runs.sweep_report import plot_sweep, write_best_yaml, write_results_csv


def main(cfg: TuneJobConfig) -> dict[str, Any]:
    """Runs (or resumes) the sweep and writes results.csv, best.yaml and sweep.png."""
    init_ray(cfg.ray.address, cfg.run.verbose)
    # Trials write into the sweep's folder; each trial's values are checked by the search space.
    preflight(cfg.pretrain_config(), {"sweep.storage_path": cfg.sweep.storage_path})
    tuner, sweep_dir = build_tuner(cfg)
    print(f"empssl-ray: sweep {cfg.sweep.name} -> {sweep_dir}", flush=True)
    results = tuner.fit()
    objective = cfg.sweep.objective
    rows = trial_table(results, objective, budgeted_sweep(cfg.sweep))
    write_results_csv(rows, storage.join(sweep_dir, "results.csv"))
    plot_sweep(rows, objective, storage.join(sweep_dir, "sweep.png"), list(cfg.sweep.space))
    outputs: dict[str, Any] = {"sweep_dir": sweep_dir, "rows": rows}
    best = results.get_best_result(metric=objective, mode="max", filter_nan_and_inf=True)
    if best.metrics and objective in best.metrics:
        best_cfg = apply_overrides(cfg.pretrain_config(), (best.config or {})["params"])
        best_cfg.run.name = f"{cfg.sweep.name}-best"
        # The winner's own length: the budget it was found at (steps, or seconds to time).
        set_budget(best_cfg, cfg.sweep.budget, cfg.sweep.budget_s)
        path = storage.join(sweep_dir, "best.yaml")
        write_best_yaml(best_cfg, cfg.sweep.name, objective, best.metrics[objective], path)
        outputs["best_yaml"] = path
    spent = ["patch_forwards", "budget_spent"] if budgeted_sweep(cfg.sweep) else ["patch_forwards"]
    spent += ["time_s"] if cfg.sweep.budget_s > 0 else []
    keys = [*cfg.sweep.space, objective, "epochs", *spent]
    print(format_table({r["trial"]: r for r in rows}, keys))
    print(f"results: {sweep_dir}/results.csv, best config: {outputs.get('best_yaml')}")
    return outputs


if __name__ == "__main__":
    start("tune", TuneJobConfig, main)
