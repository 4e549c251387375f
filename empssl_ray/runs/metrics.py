"""Run outputs people look at: metrics.jsonl / metrics.csv, TensorBoard events, curves.png.

They are written locally and copied to the run dir, which may be on object storage.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from empssl_ray.data import storage
from empssl_ray.data.storage import LocalMirror

METRICS_FILE = "metrics.jsonl"
PUSH_EVERY_S = 30.0  # step records reach object storage at least this often, not only per epoch
CURVES = (
    "loss",
    "tcr",
    "invariance",
    "knn_acc",
    "effective_rank",
    "embedding_std",
    "lr",
    "patches_per_s",
    "data_wait_frac",
)


class MetricsLogger:
    """Appends metric records to `<run_dir>/metrics.jsonl` and TensorBoard; redraws the PNG.

    Each record carries `kind` ("step" or "epoch"), `step` and `epoch`. Appending (not
    rewriting) keeps a resumed run's history in one file. The files are written into a local
    mirror of the run dir and copied up by `flush` when the run dir is on object storage.
    """

    def __init__(
        self, run_dir: str, tensorboard: bool = True, resumed_step: int | None = None
    ) -> None:
        self.mirror = LocalMirror(run_dir)
        self.mirror.pull(METRICS_FILE)  # a resumed run continues its history
        self.path = os.path.join(self.mirror.path, METRICS_FILE)
        if resumed_step is not None:
            truncate_after(self.path, resumed_step)
        self.pushed_at = time.monotonic()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard hides its own records past the step resumed from, as the file does.
            self.writer = SummaryWriter(
                os.path.join(self.mirror.path, "tensorboard"),
                purge_step=None if resumed_step is None else resumed_step + 1,
            )

    def log(self, kind: str, record: dict[str, Any]) -> None:
        record = {"kind": kind, **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{kind}/{key}", value, record.get("step", 0))
        if self.mirror.remote and time.monotonic() - self.pushed_at > PUSH_EVERY_S:
            self.push()  # someone may be watching the run on object storage

    def push(self) -> None:
        """Copies the records written so far to the run dir (a checkpoint's, before it lands)."""
        self.mirror.push()
        self.pushed_at = time.monotonic()

    def flush(self) -> None:
        """Writes the CSV and the curves PNG, and copies new files to the run dir (each epoch)."""
        if self.writer is not None:
            self.writer.flush()
        write_csv_and_plot(self.mirror.path)
        self.push()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.flush()
        self.mirror.close()


def truncate_after(path: str, step: int) -> None:
    """Drops the records of steps after `step` from a metrics.jsonl: a run resumed from the
    checkpoint of `step` logs them again, and each step is in the history once."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        with open(path, "w") as f:
            f.writelines(kept)


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """Every record of `<run_dir>/metrics.jsonl` (local or URI), in order ([] if there is none)."""
    try:
        text = storage.read_text(storage.join(run_dir, METRICS_FILE))
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_csv_and_plot(folder: str) -> str | None:
    """metrics.csv (one row per record) and curves.png (one panel per metric) in a local folder
    holding metrics.jsonl. Returns the PNG's path."""
    records = read_metrics(folder)
    if not records:
        return None
    import pandas as pd

    frame = pd.DataFrame(records)
    frame.to_csv(os.path.join(folder, "metrics.csv"), index=False)
    return plot_curves(frame, os.path.join(folder, "curves.png"))


def plot_curves(frame: Any, path: str) -> str:
    """Training curves: step records as lines, epoch records as markers, against the step."""
    import matplotlib

    matplotlib.use("Agg")  # headless: runs on cluster nodes and in CI
    import matplotlib.pyplot as plt

    keys = [k for k in CURVES if k in frame and frame[k].notna().any()]
    cols = 3
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for kind, style in (("step", "-"), ("epoch", "o-")):
            part = frame[(frame["kind"] == kind) & frame[key].notna()]
            if len(part):
                ax.plot(part["step"], part[key], style, label=kind, markersize=4)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def format_table(rows: dict[str, dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table: one row per name, floats as percentages where they are accuracies."""

    def cell(key: str, value: Any) -> str:
        if isinstance(value, float) and key.endswith("acc"):
            return f"{100 * value:.2f}%"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    header = ["", *columns]
    body = [[name, *(cell(c, r.get(c, "")) for c in columns)] for name, r in rows.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = [
        " | ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True))
        for line in (header, *body)
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
