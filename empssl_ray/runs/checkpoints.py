"""A run's place and its checkpoints, on any storage: the run-dir rule, the newest checkpoint,
reading a checkpoint file or folder, and the encoder inside it.

A run lives in `<run.storage_path>/<run.name>/`; Ray Train writes one `checkpoint_<time>/`
folder per checkpoint there (each epoch's end, and inside an epoch every
`run.checkpoint_every_steps` / `_minutes`), each holding `checkpoint.pt` (see
`method.training.Trainer.state_dict`), `progress.json` (its epoch, step and size, read without
loading the weights) and `position.pt` (which rows the model has trained on: where the stream
goes on).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from empssl_ray.config import PretrainConfig
from empssl_ray.data import storage
from empssl_ray.data.storage import StorageUnavailableError
from empssl_ray.errors import StorageError, UserError

CHECKPOINT_FILE = "checkpoint.pt"
PROGRESS_FILE = "progress.json"  # beside it: {"epoch", "step"}, read without the weights
POSITION_FILE = "position.pt"  # beside it: the stream's position (`read_plan.StreamPosition`)
CHECKPOINT_PREFIX = "checkpoint_"  # checkpoint folders: checkpoint_<step>_<UTC time>


def checkpoint_name(step: int) -> str:
    """A checkpoint folder's name: its step first, so that names sort in training order
    whatever a node's clock says (Ray's default names carry the node's local time)."""
    utc = time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime(time.time()))
    return f"{CHECKPOINT_PREFIX}{step:010d}_{utc}"


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """A run without checkpoints, or a checkpoint location that holds none."""


def run_dir_of(cfg: PretrainConfig) -> str:
    """Where a run's checkpoints, metrics and plots live: <storage_path>/<name>."""
    return storage.join(storage.resolve(cfg.run.storage_path), cfg.run.name)


def checkpoint_files(run_dir: str) -> list[str]:
    """Every `checkpoint_*/checkpoint.pt` of a run, oldest first (names sort by step, then
    time: `checkpoint_name`)."""
    return [
        storage.join(e.location, CHECKPOINT_FILE)
        for e in storage.list_dir(run_dir)
        if e.is_dir and e.name.startswith(CHECKPOINT_PREFIX)
    ]


def latest_checkpoint(run_dir: str) -> str:
    """Location of the newest complete checkpoint file of a run (what a restart resumes)."""
    found = resume_point(run_dir).location
    if found is None:
        raise CheckpointNotFoundError(
            f"no checkpoint under {run_dir}: pretrain first (same run.name and "
            "run.storage_path), or pass checkpoint=<folder or file of checkpoint.pt>"
        )
    return found


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


def save_checkpoint(
    state: dict[str, Any], folder: str, position: dict[str, Any] | None = None
) -> None:
    """Writes `state` as the checkpoint file of a (local) folder handed to Ray Train, beside it
    the stream's `position` (a `StreamPosition.state()`), and last its epoch, step and byte
    size (Ray uploads the files independently: the size tells a complete checkpoint file from
    one cut off by a failure)."""
    path = storage.join(folder, CHECKPOINT_FILE)
    # The weights say they have a position beside them: arrived without it and without their
    # progress file (a node lost mid-upload), they are not taken for an older checkpoint.
    torch.save({**state, "saved_with_position": position is not None}, path)
    progress = {"epoch": state["epoch"], "step": state["step"], "bytes": os.path.getsize(path)}
    if position is not None:  # its size too: a checkpoint without its position is not complete
        # Protocol 4 stores its bytes as they are (2, torch's default, 1.5x: latin-1 text).
        torch.save(position, storage.join(folder, POSITION_FILE), pickle_protocol=4)
        progress["position_bytes"] = os.path.getsize(storage.join(folder, POSITION_FILE))
    storage.write_text(storage.join(folder, PROGRESS_FILE), json.dumps(progress))


@dataclass
class ResumePoint:
    """Where a run (re)starts: its newest complete checkpoint, or nothing (a fresh start)."""

    location: str | None  # the checkpoint file; None = a fresh start
    epoch: int = 0  # epochs the checkpoint completed
    step: int = 0  # optimiser steps it took
    # Saved with the stream's position (every checkpoint a run writes; not part of equality).
    has_position: bool = field(default=False, compare=False)

    def position(self) -> dict[str, Any] | None:
        """The stream's position saved with the checkpoint (None: fresh, or an older one).

        Raises:
            CheckpointVanishedError: the checkpoint was deleted since it was found.
        """
        if self.location is None:
            return None
        try:
            blob = storage.read_bytes(storage.join(posixpath.dirname(self.location), POSITION_FILE))
        except FileNotFoundError:
            if self.has_position:  # not "from the epoch's start": that would train rows twice
                raise CheckpointVanishedError(f"{self.location} was deleted while read") from None
            return None
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)


class CheckpointVanishedError(RuntimeError):
    """A checkpoint chosen for a restart was deleted before it was read (a failure, retried)."""


def resume_point(run_dir: str) -> ResumePoint:
    """Where a (re)start of this run begins: its newest complete checkpoint.

    Decided the same way by the stream (in Ray Train's controller, at each worker-group start)
    and by every training worker: the weights and the data start at the same place. A
    checkpoint whose file is missing or shorter than recorded (a failure mid-upload) is passed
    over for the one before.
    """
    return newest_complete(checkpoint_files(run_dir))


def newest_complete(files: list[str]) -> ResumePoint:
    """`resume_point` over a run's checkpoint files (oldest first), listed by the caller."""
    for location in reversed(files):
        folder = posixpath.dirname(location)
        try:
            progress = json.loads(storage.read_text(storage.join(folder, PROGRESS_FILE)))
            complete = storage.file_size(location) == progress["bytes"] and _position_complete(
                folder, progress
            )
        except (StorageUnavailableError, StorageError):
            raise  # the store is away or refuses us (403, KMS): no reason to pass one over
        except FileNotFoundError:  # no progress file (or no checkpoint file): read the weights
            if storage.exists(storage.join(folder, POSITION_FILE)):
                continue  # written with progress files: its progress has not arrived yet
            try:
                state = load_checkpoint(location)
            except (StorageUnavailableError, StorageError):
                raise
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
                continue  # cut off
            if state.get("saved_with_position"):
                continue  # its position and progress have not arrived: resuming it from the
                # epoch's start would train rows twice
            return ResumePoint(location, int(state["epoch"]), int(state["step"]))
        except (OSError, ValueError, KeyError):  # the progress file itself was cut off
            continue
        if complete:
            return ResumePoint(
                location,
                int(progress["epoch"]),
                int(progress.get("step", 0)),
                has_position="position_bytes" in progress,
            )
    return ResumePoint(None)


def _position_complete(folder: str, progress: dict[str, Any]) -> bool:
    """Whether the stream's position saved beside a checkpoint arrived whole. Ray uploads a
    checkpoint's files one by one: a node lost mid-upload can leave the weights without their
    position, and resuming those weights from the epoch's start would train rows twice."""
    if "position_bytes" not in progress:  # saved without a position (older runs)
        return True
    try:
        return storage.file_size(storage.join(folder, POSITION_FILE)) == progress["position_bytes"]
    except FileNotFoundError:
        return False


def prune_checkpoints(run_dir: str, keep: int) -> list[str]:
    """Deletes all but the newest `keep` complete checkpoints of a run (and any incomplete one
    older than them), across every fit and restart the run had; returns the folders deleted."""
    files = checkpoint_files(run_dir)
    folders = [posixpath.dirname(f) for f in files]
    newest = newest_complete(files).location
    if newest is None:
        return []
    kept = folders[: folders.index(posixpath.dirname(newest)) + 1][-keep:]
    # Folders newer than the newest complete one are being written: left alone.
    doomed = folders[: folders.index(kept[0])]
    for folder in doomed:
        storage.remove_tree(folder)
    return doomed
