"""An object store that goes away and comes back (`s3_link` cut on loopback): waited out, never
called the user's error or corrupt data; past the retry window, a failure a run restarts from."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from empssl_ray.config import DataConfig
from empssl_ray.data import storage
from empssl_ray.data.datasets import open_dataset
from tests.conftest import write_image_parquet
from tests.forwarder import Forwarder


def reopen_after(link: Forwarder, seconds: float) -> threading.Thread:
    def reopen() -> None:
        time.sleep(seconds)
        link.open()

    thread = threading.Thread(target=reopen, daemon=True)
    thread.start()
    return thread


def test_reads_writes_and_listings_wait_out_an_outage(s3: str, s3_link: Forwarder) -> None:
    folder = f"{s3}/outage/waited"
    storage.write_text(f"{folder}/a.txt", "before")
    storage.set_retry_window(60)
    try:
        for operation in (
            lambda: storage.read_text(f"{folder}/a.txt"),
            lambda: storage.write_text(f"{folder}/b.txt", "during"),
            lambda: [e.name for e in storage.list_dir(folder)],
        ):
            s3_link.close()
            reopen = reopen_after(s3_link, 3.0)
            start = time.monotonic()
            operation()
            assert time.monotonic() - start >= 2.5  # it waited for the store to come back
            reopen.join()
    finally:
        s3_link.open()
        storage.set_retry_window(storage.DEFAULT_RETRY_S)
    assert storage.read_text(f"{folder}/b.txt") == "during"


def test_past_the_window_an_outage_is_a_failure_not_the_users_error(
    s3: str, s3_link: Forwarder
) -> None:
    location = f"{s3}/outage/gone.txt"
    storage.write_text(location, "x")
    storage.set_retry_window(2)
    s3_link.close()
    try:
        start = time.monotonic()
        with pytest.raises(storage.StorageUnavailableError, match="run.storage_retry_s") as err:
            storage.read_text(location)
        assert not isinstance(err.value, storage.StorageError)  # not a UserError: a restart
        assert time.monotonic() - start < 30
    finally:
        s3_link.open()
        storage.set_retry_window(storage.DEFAULT_RETRY_S)


def test_a_dataset_read_during_an_outage_is_not_called_corrupt(
    s3: str, s3_link: Forwarder, tmp_path: Path
) -> None:
    local = write_image_parquet(tmp_path)
    root = f"{s3}/outage/images"
    for file in sorted(local.rglob("*.parquet")):
        storage.copy_file(str(file), f"{root}/{file.relative_to(local).as_posix()}")
    dataset = open_dataset(DataConfig(name="parquet", root=root), "train")
    storage.set_retry_window(60)
    s3_link.close()
    reopen = reopen_after(s3_link, 3.0)
    try:
        images, labels, bad = dataset.load_chunk(dataset.chunks[0])
    finally:
        reopen.join()
        s3_link.open()
        storage.set_retry_window(storage.DEFAULT_RETRY_S)
    assert len(images) == len(labels) > 0 and bad == 0
