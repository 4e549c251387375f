"""Ray's own output kept off the console: worker logs, library loggers and raylet notices.

Ray forwards every worker's stdout and stderr to the driver (training reports, Ray Data plans,
raylet warnings). By default a job switches that off; the session's log files
(`/tmp/ray/session_latest/logs`, `ray logs`) keep all of it, and `run.verbose=true` brings it
back.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")
# Raylet notices to the driver that say nothing a user can act on.
RAY_NOTICE_NOISE = ("worker processes have been started",)


def quiet_ray(verbose: bool) -> dict[str, Any]:
    """ray.init arguments for the console we want: Ray's own output only when `verbose`.
    Worker output stays in the session's log files (`ray logs`)."""
    if verbose:
        return {"log_to_driver": True}
    return {"log_to_driver": False, "logging_level": logging.ERROR}


def _notice(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    """A raylet notice (an actor or worker killed, memory pressure, resources no node has) as
    one line of ours; start-up chatter dropped."""
    text = "\n".join(data.get("lines", [])).strip()
    if text and not any(noise in text for noise in RAY_NOTICE_NOISE):
        print(f"ray: {text.splitlines()[0][:300]}", file=sys.stderr, flush=True)


def silence_driver() -> None:
    """After ray.init: Ray Data and Tune set their own logger levels at import, lowered here;
    and the raylet's notices, which the driver's error-listener thread prints through
    `print_to_stdstream` with their tracebacks, become one line each (`_notice`)."""
    from ray._private import worker

    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Ray Data sets its logger's level again when this process builds its first dataset, from
    # this variable (else INFO: an execution plan per dataset on the console).
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    if hasattr(worker, "print_to_stdstream"):  # the listener looks the name up at each message
        worker.print_to_stdstream = _notice
