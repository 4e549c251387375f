"""What an evaluation leaves: `eval.json` and the same rows as a table on the console."""

from __future__ import annotations

import json
from typing import Any

from empssl_ray.data import storage
from empssl_ray.runs.metrics import format_table

# probe_acc is the probe's last epoch (what figures compare); its best epoch peeks at the test set
EVAL_COLUMNS = ["probe_acc", "probe_best_acc", "knn_acc", "num_train", "num_test", "eval_patches"]


def eval_columns(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The table's columns: the label-fraction probes the rows hold (probe_1pct_acc, ...), by
    fraction, after the full-label probe."""
    fractions = sorted(
        {k for row in rows.values() for k in row if k.endswith("pct_acc")},
        key=lambda k: float(k.removeprefix("probe_").removesuffix("pct_acc")),
    )
    return EVAL_COLUMNS[:2] + fractions + EVAL_COLUMNS[2:]


def write_eval(location: str, checkpoint: str, results: dict[str, Any]) -> None:
    """eval.json: which checkpoint, the pretraining and evaluation datasets, and one metrics row
    per encoder evaluated; the same rows as a table on stdout."""
    storage.write_text(location, json.dumps({"checkpoint": checkpoint, **results}, indent=2))
    rows = {name: row for name, row in results.items() if isinstance(row, dict)}
    print(f"evaluated on {results['eval_data']} (pretrained on {results['pretrain_data']}):")
    print(format_table(rows, eval_columns(rows)))
