"""Fault injection for tests and drills, behind one object: `Faults`.

Read from the driver's environment (so `EMPSSL_FAULT_...=N ray job submit ...` and tests that
set os.environ both work) and shipped to the workers inside their job. A marker file makes each
kill fire once per run, so the restarted process carries on.

- EMPSSL_FAULT_KILL_TRAINER_AT_STEP=N: rank 0 exits abruptly once optimiser step N is taken,
  before that step's checkpoint (if one is due); N1,N2,...: once at each.
- EMPSSL_FAULT_KILL_AUGMENT_AFTER=N: an augmentation actor exits after its N-th batch.
- EMPSSL_FAULT_NAN_AT_EPOCH=N: the model's weights turn NaN from epoch N on (every rank).
- EMPSSL_FAULT_SLOW_AUGMENT_S=X: every augmentation batch takes X seconds longer (tiny test
  data then keeps an actor pool busy long enough to grow, as real images do).
- EMPSSL_FAULT_SLOW_AUGMENT_WHILE=FILE: ... only while FILE exists (a local path every node
  sees): deleting it mid-run turns the pool's demand down, so the pool and the cluster shrink.
- EMPSSL_FAULT_RECORD_TRAINED=DIR: every rank appends the (step, epoch, id) of each row it
  trains on to DIR/trained-<pid>.txt (a local folder every node sees): what the drills check
  exactly-once training with, by the model's steps, not by our own bookkeeping.
- EMPSSL_FAULT_DIR: where the markers go (a local directory every node sees; default: the run
  dir when it is local, else a folder under this machine's temporary directory).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from empssl_ray.data.storage import is_uri
from empssl_ray.method.loop import LoopHooks
from empssl_ray.method.training import Trainer

ENV_PREFIX = "EMPSSL_FAULT_"


@dataclass
class Faults(LoopHooks):
    """The drills asked for, as training-loop hooks (NaN, trainer kill) and calls the
    augmentation actors make (`after_augment_batch`)."""

    settings: dict[str, str]  # EMPSSL_FAULT_* name without the prefix -> value
    directory: str  # where the once-only markers go

    @classmethod
    def from_env(cls, run_dir: str) -> Faults | None:
        """The EMPSSL_FAULT_* variables of this (driver) process; None when there are none."""
        settings = {
            k[len(ENV_PREFIX) :]: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)
        }
        if not settings:
            return None
        directory = settings.get("DIR")
        if directory is None:  # object storage has no atomic create-if-absent: a local folder
            directory = (
                os.path.join(tempfile.gettempdir(), "empssl-faults", run_dir.replace("://", "/"))
                if is_uri(run_dir)
                else run_dir
            )
        return cls(settings, directory)

    def on_epoch_start(self, trainer: Trainer) -> None:
        at = self.settings.get("NAN_AT_EPOCH")
        if at is not None and trainer.epoch >= int(at):  # tests the NaN stop
            with torch.no_grad():
                for p in trainer.model.projector.parameters():
                    p.fill_(float("nan"))

    def on_batch(self, trainer: Trainer, batch: Mapping[str, Any]) -> None:
        folder = self.settings.get("RECORD_TRAINED")
        if folder is not None and "id" in batch:
            os.makedirs(folder, exist_ok=True)
            rows = zip(batch["epoch"].tolist(), batch["id"].tolist(), strict=True)
            with open(os.path.join(folder, f"trained-{os.getpid()}.txt"), "a") as f:
                f.writelines(f"{trainer.step} {epoch} {row}\n" for epoch, row in rows)
        if trainer.rank == 0:  # before the step's checkpoint: hooks run in order, this first
            self.die_if_due("KILL_TRAINER_AT_STEP", trainer.step)

    def after_augment_batch(self, batches: int) -> None:
        """An augmentation actor's drills, after its `batches`-th batch: slow, then maybe die."""
        self.die_if_due("KILL_AUGMENT_AFTER", batches)
        seconds = self.settings.get("SLOW_AUGMENT_S")
        flag = self.settings.get("SLOW_AUGMENT_WHILE")
        if seconds is not None and (flag is None or os.path.exists(flag)):
            # a stand-in for costly work; no CPU used
            time.sleep(float(seconds))

    def die_if_due(self, name: str, count: int) -> None:
        """Exits this process (no cleanup, like a crash) when fault `name` is due (at any of its
        comma-separated counts) and that one has not fired yet in this run."""
        for at in self.settings.get(name, "").split(","):
            if not at or count < int(at):
                continue
            os.makedirs(self.directory, exist_ok=True)
            suffix = "" if "," not in self.settings[name] else f"-{int(at)}"
            marker = os.path.join(self.directory, f"fault-{name.lower()}{suffix}.fired")
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one fires
            except FileExistsError:
                continue
            os.close(fd)
            print(f"[fault injection] {name} at {count}: exiting", flush=True)
            os._exit(1)
