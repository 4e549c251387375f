"""Shared fixtures: one local Ray for the whole run (a start costs ~10 s), config composition."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.forwarder import Forwarder

# CIFAR-10 as Parquet beside the repository (../shared/data/cifar10): every test that reads it
# takes the path from here, and skips without it.
SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


@pytest.fixture
def shared_cifar() -> Path:
    """The shared CIFAR-10 Parquet: a test that needs it skips where it is absent, and fails
    in CI (CI=true), where it is always laid beside the clone: a skip there would hide it."""
    if not ((SHARED_CIFAR / "train").is_dir() and (SHARED_CIFAR / "test").is_dir()):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the shared CIFAR-10 Parquet is absent: {SHARED_CIFAR}")
        pytest.skip("shared CIFAR-10 Parquet is absent")
    return SHARED_CIFAR


@pytest.fixture(scope="session")
def s3_link() -> Iterator[Forwarder]:
    """The one way to the session's S3 endpoint: a forwarder a test may cut (an outage)."""
    link = Forwarder(0)  # its target is set by `s3` once the server has a port
    yield link
    link.close()


@pytest.fixture(scope="session")
def s3(s3_link: Forwarder) -> Iterator[str]:
    """A loopback S3 endpoint (moto's server) for the whole run; yields a bucket URI.

    Reached through the standard AWS_* variables, which pyarrow, boto3 and Ray's workers (started
    later from this environment) read: nothing in the project names the server. Every request
    goes through `s3_link`, so that a test can take the store away and bring it back.
    """
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s3_link.target = ("127.0.0.1", port)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_link.port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.time() + 30
        while True:
            try:
                boto3.client("s3").create_bucket(Bucket="empssl-test")
                break
            except Exception:  # connection refused while the server starts
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield "s3://empssl-test"
    finally:
        server.terminate()
        server.wait(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """An MLflow tracking server on loopback (SQLite runs, a local artifact folder) for the
    session; yields its URI. Started in its own process session, stopped with it."""
    import urllib.request

    pytest.importorskip("mlflow")
    home = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{home / 'runs.sqlite'}",
            "--artifacts-destination",
            str(home / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers too are stopped with its process group
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def s3_keys(uri: str) -> list[str]:
    """Every object key under an s3:// prefix (through boto3, beside the code under test)."""
    import boto3

    bucket, _, prefix = uri[len("s3://") :].partition("/")
    pages = (
        boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.fixture(scope="session")
def ray_session(s3: str) -> Iterator[None]:
    """A fresh local Ray (never a stale /tmp/ray cluster), shut down after the last test. It
    starts after the S3 endpoint so that its workers see the AWS_* variables."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def ray_state() -> str:
    """The session cluster's free resources, live actors and unfinished tasks, in one line."""
    import ray
    from ray.util.state import list_actors, list_tasks

    free = {k: v for k, v in ray.available_resources().items() if "node" not in k}
    actors = [f"{a.class_name}:{a.state}" for a in list_actors(filters=[("state", "!=", "DEAD")])]
    tasks = [
        f"{t.name}:{t.state}"
        for t in list_tasks(filters=[("state", "!=", "FINISHED")], limit=200)
        if t.state != "FAILED"
    ]
    return f"free {free}; actors {actors}; tasks {tasks}"


_last_ray_test = ["(none)"]


@pytest.fixture(autouse=True)
def all_cpus_free_for_ray_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test on the session cluster starts with every CPU free (waiting up to 30 s: actors
    end asynchronously, and pytest keeps a test's log records, whose tracebacks can hold a
    failed stream's actors, until its teardown ends). An actor pool that outlived its test once
    starved a later one for good; this fails instead, naming the test that leaked it."""
    if "ray_session" not in request.fixturenames:
        yield
        return
    import gc

    import ray

    gc.collect()
    deadline = time.time() + 30
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources().get("CPU", 0.0):
        if time.time() > deadline:
            pytest.fail(f"CPUs still held 30 s after {_last_ray_test[0]} ended: {ray_state()}")
        time.sleep(0.5)
    yield
    _last_ray_test[0] = request.node.nodeid


@pytest.fixture
def fault_env(monkeypatch: pytest.MonkeyPatch):
    """Sets EMPSSL_FAULT_* variables for one test (the driver forwards them to workers)."""

    def set_faults(**faults: object) -> None:
        for key, value in faults.items():
            monkeypatch.setenv(f"EMPSSL_FAULT_{key}", str(value))

    return set_faults


def write_image_parquet(
    root: Path, n_train: int = 96, n_test: int = 48, bad_rows: tuple[int, ...] = ()
) -> Path:
    """A parquet dataset (train/, test/) of random 16x16 RGB PNGs; `bad_rows` of train are junk."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        blobs, labels = [], []
        for i in range(n):
            label = i % 4
            # Class-dependent colour so a probe has something to find.
            pixels = rng.integers(0, 64, (16, 16, 3)) + 48 * label
            buf = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
            blob = buf.getvalue()
            if split == "train" and i in bad_rows:
                blob = blob[: len(blob) // 3]  # truncated file
            blobs.append(blob)
            labels.append(label)
        os.makedirs(root / split, exist_ok=True)
        pq.write_table(pa.table({"image": blobs, "label": labels}), root / split / "part-0.parquet")
    return root


def run_scenario(script: Path, args: list[str], limit_s: int) -> dict:
    """Runs a multi-node scenario script in its own process session and returns the JSON of its
    last `SCENARIO ` line. Past `limit_s` it gets SIGINT (its `finally` stops its cluster),
    then SIGKILL of its own session only; the test fails with the scenario's progress lines
    (`[  12.3 s] ...`) and its output's end."""
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # KeyboardInterrupt: its `finally` stops the cluster
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
            out, _ = proc.communicate(timeout=30)
        ours = "\n".join(x for x in out.splitlines() if x.startswith("[") and " s] " in x)
        pytest.fail(f"{script.name} took over {limit_s} s:\n{ours}\n{out[-4000:]}")
    lines = [x for x in out.splitlines() if x.startswith("SCENARIO ")]
    assert proc.returncode == 0 and lines, out[-6000:]
    seen = json.loads(lines[-1][len("SCENARIO ") :])
    # The run's own lines (restarts, resumes) and the scenario's, for a failing assertion.
    seen["log"] = [x for x in out.splitlines() if x.startswith(("[", "empssl"))][-60:]
    return seen
