"""jobs/reproduce.py: the paper's rows as parallel trials, CPU-sized (--quick), and its table."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from empssl_ray.on_ray.reproduce import paper_figure, paper_rows

ROWS = ["cifar10-1ep-20p", "cifar100-1ep-20p"]


def test_every_row_of_the_papers_table_has_a_preset_and_its_figure() -> None:
    rows = paper_rows()
    assert len(rows) == 18 and set(ROWS) <= set(rows)  # 16 figures, Tiny ImageNet also at 64 px
    assert paper_figure("cifar10-1ep-20p") == 84.2  # the 1-epoch table: its own schedule
    assert all(30 < paper_figure(row) < 100 for row in rows)


def test_a_row_read_from_prepared_data_keeps_its_preset_s_image_rules() -> None:
    from empssl_ray.job_config import ReproduceConfig
    from empssl_ray.on_ray.reproduce import row_config

    settings = ReproduceConfig(data_roots={"imagenet100-1ep-20p": "s3://b/in100-640"})
    data = row_config("imagenet100-1ep-20p", settings).data
    assert (data.name, data.root, data.image_size) == ("parquet", "s3://b/in100-640", 640)
    assert data.keep_aspect and data.num_classes == 100  # shapes kept, as prepared


@pytest.fixture(scope="module")
def quick_run(ray_session, tmp_path_factory):
    from empssl_ray.config import DataConfig
    from empssl_ray.data.prepare import prepare
    from empssl_ray.job_config import ReproduceConfig, ReproduceJobConfig
    from jobs.reproduce import main

    tmp = tmp_path_factory.mktemp("reproduce")
    # Both rows read one small Parquet set: the quick mode checks the path, not the figures.
    data = str(tmp / "data")
    prepare(DataConfig(name="fashion-mnist", train_limit=512, test_limit=256), data, progress=False)
    settings = ReproduceConfig(
        rows=ROWS,
        quick=True,
        storage_path=str(tmp / "sweeps"),
        data_roots={"cifar10": data, "cifar100": data},
        max_concurrent_trials=1,  # 2 CPUs: see experiment/tune-demo.yaml
    )
    cfg = ReproduceJobConfig(reproduce=settings)
    return cfg, main(cfg)


def test_quick_run_writes_the_table_with_one_row_per_chosen_row(quick_run) -> None:
    _, out = quick_run
    table = pd.read_csv(os.path.join(out["sweep_dir"], "paper_table.csv"))
    assert list(table["row"]) == ROWS and table["error"].isna().all()
    assert list(table["paper_probe_%"]) == [84.2, paper_figure("cifar100-1ep-20p")]
    assert list(table["read_at"]) == ["epoch 1 of 1", "epoch 1 of 1"]  # the figures' schedules
    assert (table["probe_best_%"] >= table["probe_%"]).all()
    assert table["probe_%"].between(0, 100).all() and table["knn_%"].between(0, 100).all()
    assert (table["diff_points"] == (table["probe_%"] - table["paper_probe_%"]).round(2)).all()
    assert (table["wall_min"] > 0).all() and (table["gpu_hours"] == 0).all()  # CPU workers
    markdown = Path(out["sweep_dir"], "paper_table.md").read_text()
    assert "CPU-sized rows" in markdown and all(row in markdown for row in ROWS)


def test_rerun_resumes_without_training_again(quick_run) -> None:
    from jobs.reproduce import main

    cfg, out = quick_run
    rows_dir = Path(out["sweep_dir"], "rows")

    def stamps() -> dict[str, float]:
        return {p.parent.name: p.stat().st_mtime for p in rows_dir.glob("*/metrics.jsonl")}

    before = stamps()
    assert len(before) == 2
    again = main(cfg)
    assert [r["row"] for r in again["table"]] == ROWS
    assert stamps() == before
