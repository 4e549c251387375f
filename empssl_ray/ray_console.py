"""Progress from the workers to the driver's console, and Ray's own logs kept off it.

Ray forwards every worker's stdout and stderr to the driver (training reports, Ray Data plans,
raylet warnings); by default we switch that off (`quiet_ray`) and instead the training workers
and embedding actors push small progress events to one `ProgressBoard` actor, which a thread
of the driver drains into `console.Console`. The same thread watches the cluster's nodes, so a
node that joins or leaves is one line of ours.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ray

POLL_S = 0.5  # how often the driver drains the board
NODES_EVERY_S = 5.0  # how often it looks for nodes that joined or left

# On the head node (as Ray Train places its own state): a worker node that leaves must not
# take the run's bookkeeping with it. Every Ray node has its own node:<ip> resource; the
# head also has this one.
HEAD_NODE_RESOURCE = "node:__internal_head__"

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")


def quiet_ray(verbose: bool) -> dict[str, Any]:
    """ray.init arguments (and logger levels) for the console we want: Ray's own output only
    when `verbose`. Worker output stays in the session's log files (`ray logs`)."""
    if verbose:
        return {"log_to_driver": True}
    return {"log_to_driver": False, "logging_level": logging.ERROR}


def silence_driver() -> None:
    """After ray.init: Ray Data and Tune set their own logger levels at import, lowered here;
    and the raylet's notices to the driver (e.g. "N PYTHON worker processes have been started",
    printed by the driver's error-listener thread through `print_to_stdstream`) are dropped:
    those that matter reach the user as errors of the run or as lines of ours."""
    from ray._private import worker

    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if hasattr(worker, "print_to_stdstream"):  # the listener looks the name up at each message
        worker.print_to_stdstream = lambda data, ignore_prefix: None


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


def new_board() -> Any:
    """A ProgressBoard on the head node (outside any Tune trial's placement group)."""
    return ProgressBoard.options(  # type: ignore[attr-defined]
        resources={HEAD_NODE_RESOURCE: 0.001}, scheduling_strategy="DEFAULT"
    ).remote()


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


class _Feed(threading.Thread):
    """Drains the board into `render` until stopped; reports node changes as notes."""

    def __init__(self, board: Any, render: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(name="empssl-console", daemon=True)
        self.board, self.render = board, render
        self.stopping = threading.Event()
        self.nodes = alive_nodes()

    def run(self) -> None:
        waited = 0.0
        while not self.stopping.wait(POLL_S):
            self.drain()
            waited += POLL_S
            if waited >= NODES_EVERY_S:
                waited = 0.0
                self.watch_nodes()

    def drain(self) -> None:
        with contextlib.suppress(ray.exceptions.RayError):  # the board's node went away
            for event in ray.get(self.board.drain.remote(), timeout=30):
                self.render(event)

    def watch_nodes(self) -> None:
        with contextlib.suppress(Exception):  # the state API can be briefly unreachable
            now = alive_nodes()
            for node in now.keys() - self.nodes.keys():
                self.render({"kind": "note", "text": f"a node joined: {now[node]}"})
            for node in self.nodes.keys() - now.keys():
                self.render({"kind": "note", "text": f"a node left: {self.nodes[node]}"})
            self.nodes = now


@contextlib.contextmanager
def console_feed(render: Callable[[dict[str, Any]], None]) -> Iterator[Any]:
    """A board whose events `render` shows while the block runs; yields the board handle."""
    board = new_board()
    feed = _Feed(board, render)
    feed.start()
    try:
        yield board
    finally:
        feed.stopping.set()
        feed.join()
        feed.drain()  # what arrived after the last poll
        ray.kill(board)
