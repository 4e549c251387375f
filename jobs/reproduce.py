"""Rows of the paper's table as parallel trials on the cluster, then the comparison table.

    python jobs/reproduce.py 'reproduce.rows=[cifar10-1ep-20p,cifar10-1ep-200p]' \
        '++reproduce.data_roots={cifar10: s3://bucket/cifar10}' reproduce.storage_path=s3://bucket/sweeps
    python jobs/reproduce.py reproduce.quick=true 'reproduce.rows=[cifar10-1ep-20p]' \
        '++reproduce.data_roots={cifar10: ../shared/data/cifar10}'     # CPU-sized check

Writes paper_table.md and paper_table.csv into <reproduce.storage_path>/<reproduce.name>/.
Rerunning the same name resumes: finished rows are not trained again.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

# The repo root, so `python jobs/x.py` imports empssl_ray also under `ray job submit`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from empssl_ray.cli import init_ray, run_job  # noqa: E402
from empssl_ray.config import ReproduceJobConfig, register_configs  # noqa: E402

CONF_DIR = str(Path(__file__).resolve().parents[1] / "empssl_ray" / "conf")


def compose_pretrain(overrides: list[str]) -> Any:
    """The PretrainConfig `jobs/pretrain.py <overrides>` would run, from inside or outside a
    Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from empssl_ray.config import PretrainConfig, register_configs, to_dataclass

    register_configs()
    if GlobalHydra.instance().is_initialized():  # inside jobs/reproduce.py's own Hydra app
        return to_dataclass(compose("pretrain", overrides), PretrainConfig)
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return to_dataclass(compose("pretrain", overrides), PretrainConfig)


def main(cfg: ReproduceJobConfig) -> dict[str, Any]:
    """Runs (or resumes) the rows and writes the table; returns its rows and the folder."""
    from empssl_ray.cli import preflight
    from empssl_ray.ray_reproduce import (
        build_reproducer,
        chosen_rows,
        paper_table,
        row_config,
        write_paper_table,
    )

    init_ray(cfg.address, cfg.verbose)
    settings = cfg.reproduce
    configs = {row: row_config(row, settings, compose_pretrain) for row in chosen_rows(settings)}
    for row_cfg in configs.values():  # every row's data and outputs, before any trial
        preflight(row_cfg, {"reproduce.storage_path": settings.storage_path})
    tuner, sweep_dir = build_reproducer(settings, configs)
    print(f"empssl-ray: paper rows -> {sweep_dir}", flush=True)
    table = paper_table(tuner.fit())
    print(write_paper_table(table, sweep_dir, settings.quick))
    return {"sweep_dir": sweep_dir, "table": table}


@hydra.main(config_path="../empssl_ray/conf", config_name="reproduce", version_base=None)
def cli(cfg: DictConfig) -> None:
    run_job(main, cfg, ReproduceJobConfig)


if __name__ == "__main__":
    register_configs()
    cli()
