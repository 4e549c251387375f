"""Ray Tune sweep outputs: results table (CSV), best config (YAML pretrain accepts as is), plots."""

from __future__ import annotations

import io
import math
import posixpath
from typing import Any

from empssl_ray.data import storage

# Header that makes best.yaml a primary config for jobs/pretrain.py:
#   python jobs/pretrain.py --config-dir <folder holding best.yaml> --config-name best
_BEST_HEADER = """\
# Best trial of sweep {sweep}: {objective} = {value:.4g}
# Run it:  python jobs/pretrain.py --config-dir {sweep_dir} --config-name best{fetch}
defaults:
  - pretrain_schema
  - _self_
  - override hydra/job_logging: none
  - override hydra/hydra_logging: none

hydra:
  run:
    dir: .
  output_subdir: null

"""


def write_results_csv(rows: list[dict[str, Any]], location: str) -> None:
    """The trial table, best first, with the compute each trial used (local path or URI)."""
    import pandas as pd

    storage.write_text(location, pd.DataFrame(rows).to_csv(index=False))


def write_best_yaml(best_cfg: Any, sweep: str, objective: str, value: float, location: str) -> None:
    """The winning trial's full PretrainConfig as a YAML jobs/pretrain.py starts from."""
    from dataclasses import asdict

    import yaml

    body = yaml.safe_dump(asdict(best_cfg), sort_keys=False)
    remote = storage.is_uri(location)
    header = _BEST_HEADER.format(
        sweep=sweep,
        objective=objective,
        value=value,
        sweep_dir="DIR" if remote else posixpath.dirname(location),
        # Hydra reads config folders from local disk only.
        fetch=f"\n#   after copying {location} into a local folder DIR" if remote else "",
    )
    storage.write_text(location, header + body)


def plot_sweep(
    rows: list[dict[str, Any]], objective: str, location: str, params: list[str] | None = None
) -> str:
    """One panel per searched parameter (objective against its value; log axis for values
    spanning more than a decade), and one of the objective against patch-forwards spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if isinstance(r.get(objective), float) and math.isfinite(r[objective])]
    params = params if params is not None else ["patches.num_patches"]
    cols = min(4, len(params) + 1)
    nrows = -(-(len(params) + 1) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.2 * nrows), squeeze=False)
    flat = list(axes.flat)
    values = [r[objective] for r in ok]
    epochs = [r.get("epochs", 0) for r in ok]
    for ax, key in zip(flat, params, strict=False):
        if not ok or any(not isinstance(r.get(key), (int, float)) for r in ok):
            ax.text(0.5, 0.5, f"{key} not searched", ha="center", transform=ax.transAxes)
            continue
        xs = [float(r[key]) for r in ok]
        ax.scatter(xs, values, c=epochs, cmap="viridis")
        if min(xs) > 0 and max(xs) / min(xs) > 10:
            ax.set_xscale("log")
        ax.set_xlabel(key)
    spent = flat[len(params)]
    spent.scatter([r["patch_forwards"] for r in ok], values, c=epochs, cmap="viridis")
    spent.set_xlabel("patch-forwards spent")
    for ax in flat[: len(params) + 1]:
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
    for ax in flat[len(params) + 1 :]:
        ax.axis("off")
    fig.suptitle(f"{len(ok)} trials (colour: epochs begun before the end or an early stop)")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    plt.close(fig)
    storage.write_bytes(location, png.getvalue())
    return location
