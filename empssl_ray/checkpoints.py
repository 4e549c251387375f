"""A run's place and its checkpoints, on any storage: the run-dir rule, the newest checkpoint,
reading a checkpoint file or folder, and the encoder inside it.

A run lives in `<run.storage_path>/<run.name>/`; Ray Train writes one `checkpoint_<time>/`
folder per epoch there, each holding `checkpoint.pt` (see `engine.Trainer.state_dict`).
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import posixpath
from typing import Any

import torch

from empssl_ray import storage
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
    """Writes `state` as the checkpoint file of a (local) folder handed to Ray Train, and its
    epoch and step beside it."""
    torch.save(state, storage.join(folder, CHECKPOINT_FILE))
    progress = {"epoch": state["epoch"], "step": state["step"]}
    storage.write_text(storage.join(folder, PROGRESS_FILE), json.dumps(progress))


def resume_epoch(run_dir: str) -> int:
    """The epoch a rerun of this run starts at: that of its newest readable checkpoint, or 0."""
    for location in reversed(checkpoint_files(run_dir)):
        folder = posixpath.dirname(location)
        try:
            return int(json.loads(storage.read_text(storage.join(folder, PROGRESS_FILE)))["epoch"])
        except FileNotFoundError:  # an older checkpoint without one: the weights tell
            with contextlib.suppress(OSError, RuntimeError, EOFError, pickle.UnpicklingError):
                return int(load_checkpoint(location)["epoch"])
        except (OSError, ValueError, KeyError):  # cut off mid-write: the one before stands
            continue
    return 0
