"""Rows of the paper's table as parallel trials on the cluster, then the comparison table.

    python jobs/reproduce.py 'reproduce.rows=[cifar10-1ep-20p,cifar10-1ep-200p]' \
        '++reproduce.data_roots={cifar10: s3://bucket/cifar10}' reproduce.storage_path=s3://bucket/sweeps
    python jobs/reproduce.py reproduce.quick=true 'reproduce.rows=[cifar10-1ep-20p]' \
        '++reproduce.data_roots={cifar10: ../shared/data/cifar10}'     # CPU-sized check

Writes paper_table.md and paper_table.csv into <reproduce.storage_path>/<reproduce.name>/.
Rerunning the same name resumes: finished rows are not trained again.
"""

from __future__ import annotations

from typing import Any

from empssl_ray.job_config import ReproduceJobConfig
from empssl_ray.launch import start
from empssl_ray.on_ray.reproduce import (
    build_reproducer,
    chosen_rows,
    paper_table,
    row_config,
    write_paper_table,
)
from empssl_ray.on_ray.session import init_ray, preflight


def main(cfg: ReproduceJobConfig) -> dict[str, Any]:
    """Runs (or resumes) the rows and writes the table; returns its rows and the folder."""
    init_ray(cfg.address, cfg.verbose)
    settings = cfg.reproduce
    configs = {row: row_config(row, settings) for row in chosen_rows(settings)}
    for row_cfg in configs.values():  # every row's data and outputs, before any trial
        preflight(row_cfg, {"reproduce.storage_path": settings.storage_path})
    tuner, sweep_dir = build_reproducer(settings, configs)
    print(f"empssl-ray: paper rows -> {sweep_dir}", flush=True)
    table = paper_table(tuner.fit())
    print(write_paper_table(table, sweep_dir, settings.quick))
    return {"sweep_dir": sweep_dir, "table": table}


if __name__ == "__main__":
    start("reproduce", ReproduceJobConfig, main)
