"""Ray Tune adapter: rows of the paper's table as parallel trials, then the comparison table.

Each row is an `experiment=paper/<row>` preset; a Tune grid over the row names runs one
TorchTrainer per row (pretraining, then the bag-of-features evaluation of its last epoch), and
`paper_table.md` / `paper_table.csv` set each row's figures beside the paper's. Rerunning the
same sweep name resumes it: finished rows are not trained again.
"""

from __future__ import annotations

import copy
import io
import time
from typing import Any

from ray import tune

from empssl_ray.config import ConfigError, DataConfig, PretrainConfig
from empssl_ray.data import storage
from empssl_ray.data.datasets import open_splits
from empssl_ray.job_config import ReproduceConfig
from empssl_ray.launch import compose
from empssl_ray.on_ray.placement import trial_on_head
from empssl_ray.paper import FIGURES
from empssl_ray.presets import TINY, apply_preset

PAPER_PREFIX = "paper/"


def paper_rows() -> list[str]:
    """Every row of the paper's table, e.g. "cifar10-1ep-20p" (each has a preset)."""
    return list(FIGURES)


def paper_figure(row: str) -> float:
    """The paper's linear-probe accuracy for a row (%)."""
    return FIGURES[row].probe_acc


def shrink_for_cpu(cfg: PretrainConfig) -> None:
    """--quick: the tiny-run preset (`experiment=smoke`: its images, patch size, model, batch and
    evaluation), 1 epoch, a tenth of the row's patches, on one CPU worker that cuts its own
    patches, without the monitor. It checks the path, not the paper's figures."""
    patches = max(2, cfg.patches.num_patches // 10)
    apply_preset(cfg, TINY, sections=("data", "patches", "model", "optim", "eval", "ray"))
    cfg.patches.num_patches, cfg.patches.aspect_ratio = patches, [1.0, 1.0]
    cfg.model.sync_batchnorm, cfg.optim.epochs = False, 1
    cfg.eval.probe_epochs, cfg.eval.monitor_test = 5, 0
    cfg.ray.use_gpu, cfg.ray.num_workers, cfg.ray.patches_on_trainer = False, 1, True
    cfg.ray.aug_cpus_per_actor, cfg.ray.read_cpus, cfg.ray.max_failures = 0.25, 0.1, 0
    cfg.run.progress = False


def row_config(row: str, settings: ReproduceConfig) -> PretrainConfig:
    """A row's PretrainConfig: its preset, its dataset from data_roots (by row, else by the
    preset's dataset name), --quick applied. The preset's image size, aspect rule and class
    count stay."""
    cfg: PretrainConfig = compose("pretrain", [f"experiment={PAPER_PREFIX}{row}"])
    root = settings.data_roots.get(row, settings.data_roots.get(cfg.data.name))
    if root is not None:
        cfg.data = DataConfig(
            name="parquet",
            root=root,
            image_size=cfg.data.image_size,
            keep_aspect=cfg.data.keep_aspect,  # prepared with the shapes kept: read them so
            train_limit=cfg.data.train_limit,
            test_limit=cfg.data.test_limit,
            num_classes=cfg.data.num_classes,
        )
    if settings.quick:
        shrink_for_cpu(cfg)
    return cfg


def run_row(config: dict[str, Any], configs: dict[str, PretrainConfig], rows_dir: str) -> None:
    """Tune function: pretrain one row, evaluate its last checkpoint, report the figures.

    Args:
        config: the trial's {"row": name}.
        configs: every row's config, as the driver composed it.
        rows_dir: where the rows' runs go.
    """
    from empssl_ray.on_ray.evaluate import evaluate_checkpoint
    from empssl_ray.on_ray.train import pretrain
    from empssl_ray.runs.checkpoints import latest_checkpoint, run_dir_of

    cfg = copy.deepcopy(configs[config["row"]])
    cfg.run.storage_path = rows_dir
    start = time.perf_counter()
    splits = open_splits(cfg.data)
    pretrain(cfg, splits=splits)
    run_dir = run_dir_of(cfg)
    results = evaluate_checkpoint(
        cfg, latest_checkpoint(run_dir), storage.join(run_dir, "features"), splits=splits
    )["pretrained"]
    wall = time.perf_counter() - start
    gpus = cfg.ray.num_workers if cfg.ray.use_gpu else 0
    tune.report(
        {
            "probe_acc": results["probe_acc"],
            "probe_best_acc": results.get("probe_best_acc", float("nan")),
            "knn_acc": results["knn_acc"],
            "wall_s": wall,
            "gpu_hours": wall * gpus / 3600,
        }
    )


def chosen_rows(settings: ReproduceConfig) -> list[str]:
    """reproduce.rows (all rows when empty); rows the table does not have are a ConfigError."""
    rows = settings.rows or paper_rows()
    unknown = sorted(set(rows) - set(paper_rows()))
    if unknown:
        raise ConfigError(
            f"reproduce.rows: {', '.join(unknown)} are not rows of the paper's "
            f"table; choose from {', '.join(paper_rows())}"
        )
    return rows


def build_reproducer(
    settings: ReproduceConfig, configs: dict[str, PretrainConfig]
) -> tuple[tune.Tuner, str]:
    """A Tuner over the rows' configs (restored when this sweep name has state) and its folder."""
    root = storage.resolve(settings.storage_path)
    sweep_dir = storage.join(root, settings.name)
    for row, cfg in configs.items():
        cfg.run.name = f"{settings.name}-{row}"
    # The typed configs travel as they are (in the object store), not through Tune's dicts.
    rows_dir = storage.join(sweep_dir, "rows")
    trainable = tune.with_resources(
        tune.with_parameters(run_row, configs=configs, rows_dir=rows_dir),
        trial_on_head(settings.trial_cpus),
    )
    if tune.Tuner.can_restore(sweep_dir):
        return tune.Tuner.restore(sweep_dir, trainable, resume_errored=True), sweep_dir
    tuner = tune.Tuner(
        trainable,
        param_space={"row": tune.grid_search(list(configs))},
        tune_config=tune.TuneConfig(max_concurrent_trials=settings.max_concurrent_trials),
        # verbose=0: the console is RowConsole's line per finished row, not Tune's status.
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=root,
            verbose=0,
            callbacks=[RowConsole()],
            # A row whose run fails (a node lost) runs again, from its newest checkpoint.
            failure_config=tune.FailureConfig(max_failures=settings.trial_max_failures),
        ),
    )
    return tuner, sweep_dir


def paper_table(results: tune.ResultGrid) -> list[dict[str, Any]]:
    """One row per trial: the paper's figure beside ours, both the linear probe's last epoch (its
    best epoch beside, not compared: it picks by test accuracy), the schedule the figure was read
    under, time and GPU-hours."""
    table = []
    for result in (results[i] for i in range(len(results))):
        row, m = (result.config or {})["row"], result.metrics or {}
        ours = 100 * m["probe_acc"] if "probe_acc" in m else float("nan")
        table.append(
            {
                "row": row,
                "paper_probe_%": paper_figure(row),
                "read_at": f"epoch {FIGURES[row].epochs} of {FIGURES[row].schedule_epochs}",
                "probe_%": round(ours, 2),
                "probe_best_%": round(100 * m.get("probe_best_acc", float("nan")), 2),
                "knn_%": round(100 * m.get("knn_acc", float("nan")), 2),
                "diff_points": round(ours - paper_figure(row), 2),
                "wall_min": round(m.get("wall_s", float("nan")) / 60, 2),
                "gpu_hours": round(m.get("gpu_hours", float("nan")), 3),
                "error": None if result.error is None else type(result.error).__name__,
            }
        )
    return sorted(table, key=lambda r: r["row"])


def write_paper_table(table: list[dict[str, Any]], sweep_dir: str, quick: bool) -> str:
    """paper_table.csv and paper_table.md in the sweep's folder; returns the markdown."""
    import pandas as pd

    frame = pd.DataFrame(table)
    storage.write_text(storage.join(sweep_dir, "paper_table.csv"), frame.to_csv(index=False))
    note = (
        "CPU-sized rows (--quick): smoke model, 512 images, 1 epoch; not comparable with "
        "the paper's figures.\n\n"
        if quick
        else ""
    )
    buf = io.StringIO()
    buf.write(f"# EMP-SSL: the paper's table beside this run\n\n{note}")
    buf.write("| " + " | ".join(frame.columns) + " |\n")
    buf.write("|" + "---|" * len(frame.columns) + "\n")
    for record in table:
        buf.write("| " + " | ".join(str(v) for v in record.values()) + " |\n")
    storage.write_text(storage.join(sweep_dir, "paper_table.md"), buf.getvalue())
    return buf.getvalue()


class RowConsole(tune.Callback):
    """A line per row as it finishes (its figure beside the paper's), or fails."""

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        row = (trial.config or {}).get("row", trial.trial_id)
        if "probe_acc" in result:
            print(
                f"row {row}: probe {100 * result['probe_acc']:.2f}% (paper "
                f"{paper_figure(row):.2f}%), kNN {100 * result['knn_acc']:.2f}%, "
                f"{result['wall_s'] / 60:.1f} min",
                flush=True,
            )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = (trial.config or {}).get("row", trial.trial_id)
        print(f"row {row} failed; its error is in {trial.path}", flush=True)
