"""Progress from the workers to the driver's console, and Ray's own logs kept off it.

Ray forwards every worker's stdout and stderr to the driver (training reports, Ray Data plans,
raylet warnings); by default we switch that off (`quiet_ray`, `silence_driver`) and instead the
training workers and embedding actors push small progress events to one `ProgressBoard` actor,
which a thread of the driver drains into `console.Console`. The same thread watches the
cluster's nodes, so a node that joins or leaves is one line of ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import ray

from empssl_ray.console import Console

POLL_S = 0.5  # how often the driver drains the board
NODES_EVERY_S = 5.0  # how often it looks for nodes that joined or left

# Every Ray node has its own node:<ip> resource; the head also has this one.
HEAD_NODE_RESOURCE = "node:__internal_head__"

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


def on_head(actor_class: Any) -> Any:
    """`actor_class` placed on the head node, outside any Tune trial's placement group: a
    bookkeeping actor on a worker node that leaves would take the run with it."""
    return actor_class.options(resources={HEAD_NODE_RESOURCE: 0.001}, scheduling_strategy="DEFAULT")


@ray.remote(num_cpus=0)
class ProgressBoard:
    """A mailbox of progress events: workers `push` (fire and forget), the driver `drain`s."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def push(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def drain(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events


def post(board: Any, event: dict[str, Any]) -> None:
    """Sends an event if there is a board (there is none in a Tune trial)."""
    if board is not None:
        board.push.remote(event)


def alive_nodes() -> dict[str, str]:
    """Node id -> a short description, for the nodes alive now."""
    return {
        n["NodeID"]: f"{n['NodeManagerAddress']} ({n['Resources'].get('CPU', 0):g} CPUs, "
        f"{n['Resources'].get('GPU', 0):g} GPUs)"
        for n in ray.nodes()
        if n.get("Alive")
    }


class DriverConsole(threading.Thread):
    """The job's console: a board, and a thread that renders its events and node changes.

    Attributes:
        console: the renderer; `line` prints a line of the job's own.
        board: the handle workers post to (pass it to `pretrain` / `evaluate_checkpoint`).
    """

    def __init__(self, console: Console) -> None:
        super().__init__(name="empssl-console", daemon=True)
        self.console = console
        self.board = on_head(ProgressBoard).remote()
        self.stopping = threading.Event()
        self.nodes = alive_nodes()

    def run(self) -> None:
        waited = 0.0
        while not self.stopping.wait(POLL_S):
            self.flush()
            waited += POLL_S
            if waited >= NODES_EVERY_S:
                waited = 0.0
                self.watch_nodes()

    def flush(self) -> None:
        """Renders every event posted so far (the job's next line then comes after them)."""
        with contextlib.suppress(ray.exceptions.RayError):  # the board's node went away
            for event in ray.get(self.board.drain.remote(), timeout=30):
                self.render(event)

    def render(self, event: dict[str, Any]) -> None:
        try:
            self.console(event)
        except Exception as error:  # noqa: BLE001 - a console fault must not end a run
            print(f"empssl-ray: console: {error!r}", file=sys.stderr)

    def line(self, text: str) -> None:
        self.flush()
        self.console.line(text)

    def watch_nodes(self) -> None:
        with contextlib.suppress(Exception):  # the state API can be briefly unreachable
            now = alive_nodes()
            for node in now.keys() - self.nodes.keys():
                self.render({"kind": "note", "text": f"a node joined: {now[node]}"})
            for node in self.nodes.keys() - now.keys():
                self.render({"kind": "note", "text": f"a node left: {self.nodes[node]}"})
            self.nodes = now


@contextlib.contextmanager
def driver_console(progress: bool = True) -> Iterator[DriverConsole]:
    """The job's console while the block runs: bars on a terminal (unless not `progress`),
    plain lines otherwise; everything posted is shown before it closes."""
    feed = DriverConsole(Console(bars=None if progress else False))
    feed.start()
    try:
        yield feed
    finally:
        feed.stopping.set()
        feed.join()
        feed.flush()  # what arrived after the last poll
        feed.console.close()
        ray.kill(feed.board)
