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


def plot_sweep(rows: list[dict[str, Any]], objective: str, location: str) -> str:
    """Two panels: objective vs num_patches, objective vs compute (patch-forwards)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if isinstance(r.get(objective), float) and math.isfinite(r[objective])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    patches = [r.get("patches.num_patches") for r in ok]
    if all(p is not None for p in patches):
        axes[0].scatter(patches, [r[objective] for r in ok])
        axes[0].set_xlabel("num_patches")
    else:
        axes[0].text(0.5, 0.5, "num_patches not searched", ha="center", transform=axes[0].transAxes)
    axes[1].scatter(
        [r["patch_forwards"] for r in ok],
        [r[objective] for r in ok],
        c=[r["epochs"] for r in ok],
        cmap="viridis",
    )
    axes[1].set_xlabel("patch-forwards spent")
    for ax in axes:
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{len(ok)} trials (colour: epochs run before the end or an early stop)")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    plt.close(fig)
    storage.write_bytes(location, png.getvalue())
    return location
