"""Progress from the workers to the driver's console.

Ray's own output is kept off the console (`on_ray.logs`); instead the training workers and
embedding actors push small progress events to one `ProgressBoard` actor, which a thread of the
driver drains into `console.Console`. The same thread watches the
cluster's nodes, so a node that joins or leaves is one line of ours.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

import ray

from empssl_ray.console import Console
from empssl_ray.on_ray.placement import on_head

POLL_S = 0.5  # how often the driver drains the board
NODES_EVERY_S = 5.0  # how often it looks for nodes that joined or left


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
