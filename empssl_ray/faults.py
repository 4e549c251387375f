"""Fault injection for tests and drills: kill a trainer or an augmentation actor once.

Read from the driver's environment (so `EMPSSL_FAULT_...=N ray job submit ...` and tests that
set os.environ both work) and shipped to workers with their config. A marker file makes each
fault fire once per run, so the restarted process carries on.

- EMPSSL_FAULT_KILL_TRAINER_AT_STEP=N: rank 0 exits abruptly before optimiser step N.
- EMPSSL_FAULT_KILL_AUGMENT_AFTER=N: an augmentation actor exits after its N-th batch.
- EMPSSL_FAULT_NAN_AT_EPOCH=N: the model's weights turn NaN from epoch N on (every rank).
- EMPSSL_FAULT_SLOW_AUGMENT_S=X: every augmentation batch takes X seconds longer (tiny test
  data then keeps an actor pool busy long enough to grow, as real images do).
- EMPSSL_FAULT_DIR: where the markers go (a local directory every node sees; default: the run
  dir when it is local, else a folder under this machine's temporary directory).
"""

from __future__ import annotations

import os
import tempfile
import time

from empssl_ray.storage import is_uri

ENV_PREFIX = "EMPSSL_FAULT_"


def faults_from_env() -> dict[str, str]:
    """The EMPSSL_FAULT_* variables of this (driver) process."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}


def fault_dir(faults: dict[str, str], run_dir: str) -> str:
    """Where fault markers go: EMPSSL_FAULT_DIR, else the run dir or (object storage has no
    atomic create-if-absent) a local folder named after it."""
    if ENV_PREFIX + "DIR" in faults:
        return faults[ENV_PREFIX + "DIR"]
    if not is_uri(run_dir):
        return run_dir
    return os.path.join(tempfile.gettempdir(), "empssl-faults", run_dir.replace("://", "/"))


def maybe_die(faults: dict[str, str], name: str, count: int, default_dir: str) -> None:
    """Exits this process (no cleanup, like a crash) when fault `name` is due and not yet fired."""
    at = faults.get(ENV_PREFIX + name)
    if at is None or count < int(at):
        return
    directory = faults.get(ENV_PREFIX + "DIR", default_dir)
    os.makedirs(directory, exist_ok=True)
    marker = os.path.join(directory, f"fault-{name.lower()}.fired")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one process fires
    except FileExistsError:
        return
    os.close(fd)
    print(f"[fault injection] {name} at {count}: exiting", flush=True)
    os._exit(1)


def maybe_slow(faults: dict[str, str], name: str) -> None:
    """Sleeps for the seconds fault `name` asks (a stand-in for costly work; no CPU used)."""
    seconds = faults.get(ENV_PREFIX + name)
    if seconds is not None:
        time.sleep(float(seconds))
