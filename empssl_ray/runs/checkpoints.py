"""A run's place and its checkpoints, on any storage: the run-dir rule, the newest checkpoint,
reading a checkpoint file or folder, and the encoder inside it.

A run lives in `<run.storage_path>/<run.name>/`; Ray Train writes one `checkpoint_<time>/`
folder per epoch there, each holding `checkpoint.pt` (see `engine.Trainer.state_dict`) and
`progress.json` (its epoch, step and size, read without loading the weights).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import posixpath
from typing import Any

import torch

from empssl_ray.data import storage
from empssl_ray.config import PretrainConfig
from empssl_ray.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"
PROGRESS_FILE = "progress.json"  # beside it: {"epoch", "step"}, read without the weights
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train names checkpoint folders checkpoint_<UTC time>


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """A run without checkpoints, or a checkpoint location that holds none."""


def run_dir_of(cfg: PretrainConfig) -> str:
    """Where a run's checkpoints, metrics and plots live: <storage_path>/<name>."""
    return storage.join(storage.resolve(cfg.run.storage_path), cfg.run.name)


def checkpoint_files(run_dir: str) -> list[str]:
    """Every `checkpoint_*/checkpoint.pt` of a run, oldest first (the names sort by time)."""
    return [
        storage.join(e.location, CHECKPOINT_FILE)
        for e in storage.list_dir(run_dir)
        if e.is_dir and e.name.startswith(CHECKPOINT_PREFIX)
    ]


def latest_checkpoint(run_dir: str) -> str:
    """Location of the newest checkpoint file of a run."""
    found = checkpoint_files(run_dir)
    if not found:
        raise CheckpointNotFoundError(
            f"no checkpoint under {run_dir}: pretrain first (same run.name and "
            "run.storage_path), or pass checkpoint=<folder or file of checkpoint.pt>"
        )
    return found[-1]


def checkpoint_file(location: str) -> str:
    """The checkpoint file of a location that is either that file or its folder."""
    return storage.join(location, CHECKPOINT_FILE) if storage.is_dir(location) else location


def load_checkpoint(location: str) -> dict[str, Any]:
    """The training state in a checkpoint file or folder, local or on object storage."""
    path = checkpoint_file(location)
    try:
        blob = storage.read_bytes(path)
    except FileNotFoundError as e:
        raise CheckpointNotFoundError(f"no checkpoint at {path}: check checkpoint=...") from e
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)


def save_checkpoint(state: dict[str, Any], folder: str) -> None:
    """Writes `state` as the checkpoint file of a (local) folder handed to Ray Train, and beside
    it its epoch, step and byte size (Ray uploads the two files independently: the size tells a
    complete checkpoint file from one cut off by a failure)."""
    path = storage.join(folder, CHECKPOINT_FILE)
    torch.save(state, path)
    progress = {"epoch": state["epoch"], "step": state["step"], "bytes": os.path.getsize(path)}
    storage.write_text(storage.join(folder, PROGRESS_FILE), json.dumps(progress))


def resume_point(run_dir: str) -> tuple[str | None, int]:
    """Where a rerun of this run starts: its newest complete checkpoint file and that epoch, or
    (None, 0) for a fresh start.

    Decided once, in the driver, and handed to every training worker: the data stream and the
    weights start at the same epoch. A checkpoint whose file is missing or shorter than recorded
    (a failure mid-upload) is passed over for the one before.
    """
    for location in reversed(checkpoint_files(run_dir)):
        folder = posixpath.dirname(location)
        try:
            progress = json.loads(storage.read_text(storage.join(folder, PROGRESS_FILE)))
            complete = storage.file_size(location) == progress["bytes"]
        except FileNotFoundError:  # no progress file (or no checkpoint file): read the weights
            with contextlib.suppress(OSError, RuntimeError, EOFError, pickle.UnpicklingError):
                return location, int(load_checkpoint(location)["epoch"])
            continue
        except (OSError, ValueError, KeyError):  # the progress file itself was cut off
            continue
        if complete:
            return location, int(progress["epoch"])
    return None, 0
