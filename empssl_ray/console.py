"""What a person running a job watches: a bar per epoch, a line per epoch, evaluation bars.

Pure rendering of progress events (dicts); where they come from (a Ray actor the training
workers write to) is `ray_console.py`'s business. On a terminal the events drive tqdm bars;
without one (a `ray job submit` log, a file) every event becomes one plain line.

Events, by "kind":
    start     {"epochs", "steps_per_epoch", "start_epoch", "start_step"}: a (resumed) run begins
    step      {"epoch", "step", "loss", "tcr", "invariance", "patches_per_s", "data_wait_frac"}
    epoch     the epoch's metrics; "epoch" counts finished epochs; "knn_acc" when monitored
    stage     {"name", "total"}: an evaluation stage of `total` images begins
    rows      {"name", "rows"}: `rows` more images of that stage are done (moves its bar only:
              a retried batch counts twice)
    done      {"name", "rows"}: the stage is complete, `rows` images written
    note      {"text"}: one line of ours (a restart, a node that joined or left)
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Any, TextIO

VERBOSE_ENV = "EMPSSL_VERBOSE"  # set to 1 for Ray's own logs, as run.verbose=true does


def verbose_wanted(flag: bool) -> bool:
    """run.verbose, or the environment variable, asks for Ray's own logs."""
    return flag or os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")


def _num(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def metrics_text(m: dict[str, Any]) -> str:
    """The figures of a step or epoch report, as one short line fragment."""
    parts = [
        f"loss {_num(m.get('loss'), '.3f')}",
        f"tcr {_num(m.get('tcr'), '.2f')}",
        f"inv {_num(m.get('invariance'), '.3f')}",
        f"{_num(m.get('patches_per_s'), ',.0f')} patches/s",
        f"data wait {_num(100 * m.get('data_wait_frac', math.nan), '.0f')}%",
    ]
    if "effective_rank" in m:  # collapse diagnostics (epoch reports)
        parts.append(f"rank {_num(m['effective_rank'], '.1f')}")
    if "knn_acc" in m:
        parts.append(f"kNN {_num(100 * m['knn_acc'], '.1f')}%")
    return " | ".join(parts)


class Console:
    """Renders progress events; bars only on a terminal (and when `bars` is not False)."""

    def __init__(self, stream: TextIO | None = None, bars: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.bars = self.stream.isatty() if bars is None else bars
        self.epochs, self.per_epoch = 0, 0
        self.bar: Any = None  # the open tqdm bar, if any
        self.bar_key: Any = None  # what it counts: ("epoch", n) or ("stage", name)
        self.started: dict[str, float] = {}  # evaluation stage -> its start time
        # Events come from a feed thread and lines from the job's own thread: one at a time.
        self.lock = threading.RLock()

    def __call__(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.render(event)

    def render(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "start":
            self.epochs, self.per_epoch = event["epochs"], event["steps_per_epoch"]
            first, step = event.get("start_epoch", 0), event.get("start_step", 0)
            inside = step - first * self.per_epoch  # steps done of the epoch resumed
            if first >= self.epochs:
                self.line(f"already trained: {first}/{self.epochs} epochs")
            elif inside > 0:
                self.line(
                    f"resuming inside epoch {first + 1}/{self.epochs} at step {step} "
                    f"({inside}/{self.per_epoch} of the epoch done)"
                )
            elif first > 0:
                self.line(f"resuming at epoch {first + 1}/{self.epochs}")
        elif kind == "step":
            self.step(event)
        elif kind == "epoch":
            self.close_bar()
            took = _num(event.get("epoch_time_s"), ".1f")
            self.line(
                f"epoch {event['epoch']}/{self.epochs} done in {took} s | " + metrics_text(event)
            )
        elif kind == "stage":
            self.close_bar()
            self.started[event["name"]] = time.perf_counter()
            if self.bars:
                self.open_bar(("stage", event["name"]), event["total"], event["name"], "img")
        elif kind == "rows":
            if self.bars and self.bar_key == ("stage", event["name"]):
                self.bar.update(event["rows"])
        elif kind == "done":
            if self.bar_key == ("stage", event["name"]):
                self.close_bar()
            seconds = time.perf_counter() - self.started.pop(event["name"], time.perf_counter())
            self.line(f"{event['name']}: {event['rows']} images in {seconds:.1f} s")
        elif kind == "note":
            self.line(event["text"])

    def step(self, event: dict[str, Any]) -> None:
        epoch, per = event["epoch"], max(1, self.per_epoch)
        done = event["step"] - epoch * per  # steps of this epoch, after resumes too
        if not self.bars:
            self.line(f"epoch {epoch + 1}/{self.epochs} step {done}/{per} | " + metrics_text(event))
            return
        if self.bar_key != ("epoch", epoch):
            self.open_bar(("epoch", epoch), per, f"epoch {epoch + 1}/{self.epochs}", "step")
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(metrics_text(event), refresh=True)

    def open_bar(self, key: Any, total: int, desc: str, unit: str) -> None:
        from tqdm.auto import tqdm

        self.close_bar()
        self.bar = tqdm(
            total=total, desc=desc, unit=unit, file=self.stream, leave=False, dynamic_ncols=True
        )
        self.bar_key = key

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.bar_key = None, None

    def line(self, text: str) -> None:
        """One line of ours, above any open bar."""
        with self.lock:
            if self.bar is not None:
                self.bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def close(self) -> None:
        with self.lock:
            self.close_bar()
