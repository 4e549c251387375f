"""Where runs, sweeps and datasets live: one code path for a local folder, s3:// and gs://.

Object stores fail for a while and come back (refused or reset connections, timeouts, 5xx,
throttling, credentials being refreshed): every operation here waits such an outage out, with
backoff, for up to `retry_window()` seconds (`run.storage_retry_s`), then raises
`StorageUnavailableError`, which a run treats as a worker failure (a restart), never as the
user's error. Errors that retrying cannot mend (access denied, no such bucket) are a
`StorageError` at once.

Every file a run or a sweep writes or reads goes through `pyarrow.fs`, which reads the standard
credentials (`AWS_*` variables, `GOOGLE_APPLICATION_CREDENTIALS`, instance roles). Libraries that
only write local files (TensorBoard, matplotlib) write into a `LocalMirror`, which copies its
files up when asked. Locations are strings: a local path, or a URI with a scheme.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pyarrow.fs as pafs

from empssl_ray.errors import StorageError

__all__ = [
    "LocalMirror",
    "StorageError",
    "StorageUnavailableError",
    "copy_file",
    "exists",
    "filesystem",
    "is_dir",
    "is_uri",
    "join",
    "list_dir",
    "modified_ns",
    "read_bytes",
    "read_text",
    "resolve",
    "uri_prefix",
    "remove_file",
    "remove_tree",
    "retry_window",
    "retrying",
    "set_retry_window",
    "write_bytes",
    "write_text",
]


T = TypeVar("T")
RETRY_ENV = "EMPSSL_STORAGE_RETRY_S"  # the window where no config reaches (Ray Data's tasks)
DEFAULT_RETRY_S = 300.0
# Words of pyarrow's (AWS SDK's, GCS client's) messages for failures that pass: a store that
# is unreachable, overloaded or refreshing credentials. Anything else is not retried.
TRANSIENT = (
    "NETWORK_CONNECTION",
    "onnection refused",
    "onnection reset",
    "onnection aborted",
    "Couldn't connect",
    "Unable to connect",
    "imed out",
    "imeout",
    "TIMEOUT",
    "Broken pipe",
    "SlowDown",
    "SLOW_DOWN",
    "hrottl",
    "Service Unavailable",
    "ServiceUnavailable",
    "SERVICE_UNAVAILABLE",
    "InternalError",
    "INTERNAL_FAILURE",
    "HTTP response code: 5",
    "ExpiredToken",
    "EXPIRED_TOKEN",
    "curlCode",
    "Temporary failure",
    "UNAVAILABLE",  # gRPC's and GCS's status codes for a store that is away or slow
    "DEADLINE_EXCEEDED",
)
_window: float | None = None  # set_retry_window's; None: the environment's, else the default


class StorageUnavailableError(OSError):
    """Object storage kept failing for the whole retry window: the run restarts from its newest
    checkpoint (a worker failure, not a user error)."""


def set_retry_window(seconds: float) -> None:
    """How long this process waits out an object-store outage (`run.storage_retry_s`)."""
    global _window
    _window = float(seconds)


def retry_window() -> float:
    if _window is not None:
        return _window
    return float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S))


def is_transient(error: BaseException) -> bool:
    """An I/O error that may pass: worth retrying, never the user's to fix."""
    if not isinstance(error, OSError) or isinstance(
        error, (FileNotFoundError, PermissionError, StorageUnavailableError)
    ):
        return False
    return any(word in str(error) for word in TRANSIENT)


def retrying(what: str, operation: Callable[[], T]) -> T:
    """`operation()`, retried with backoff (1 s doubling to 30 s) while it fails transiently,
    for up to `retry_window()` seconds; then StorageUnavailableError naming `what`."""
    deadline, delay = time.monotonic() + retry_window(), 1.0
    while True:
        try:
            return operation()
        except OSError as e:
            if not is_transient(e):
                raise
            if time.monotonic() + delay > deadline:
                raise StorageUnavailableError(
                    f"{what}: object storage failed for {retry_window():.0f} s "
                    f"(run.storage_retry_s) ({str(e).splitlines()[0][:200]})"
                ) from e
            time.sleep(delay)
            delay = min(2 * delay, 30.0)


def checked(what: str, location: str, operation: Callable[[], T], writes: bool = False) -> T:
    """`retrying` an operation on `location`, and an error retrying cannot mend (403, a KMS
    denial, no such bucket) as one StorageError line: never taken for a missing file. A missing
    file stays a FileNotFoundError for reads; a write has no file to miss (`writes`)."""
    try:
        return retrying(f"{what} {location}", operation)
    except StorageUnavailableError:
        raise
    except FileNotFoundError as e:
        if not writes:
            raise
        raise StorageError(f"cannot {what} {location} ({e}): check the path") from e
    except OSError as e:
        raise StorageError(f"cannot {what} {location} ({e}): check the path and permissions") from e


def is_uri(location: str) -> bool:
    """True for s3://, gs://, file://... locations; False for local paths."""
    return "://" in location


def resolve(location: str) -> str:
    """A URI as it is; a local path made absolute (Ray workers run in other directories)."""
    return location if is_uri(location) else os.path.abspath(os.path.expanduser(location))


def join(base: str, *parts: str) -> str:
    """`base/part/...` for URIs (always '/') and local paths alike."""
    return posixpath.join(base, *parts) if is_uri(base) else os.path.join(base, *parts)


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """-> the pyarrow filesystem of `location` and the path inside it (bucket/key for S3)."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), resolve(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
        raise StorageError(
            f"cannot open {location} ({e}): check the URI, that pyarrow supports its scheme, and "
            "the credentials (AWS_* variables for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://)"
        ) from e


def uri_prefix(location: str) -> str:
    """What turns a filesystem path of `location` back into a location ('s3://', or '')."""
    return location.split("://")[0] + "://" if is_uri(location) else ""


def file_info(location: str) -> pafs.FileInfo:
    """What the filesystem knows of `location` (type, size, mtime), an outage waited out."""
    fs, path = filesystem(location)
    return checked("look up", location, lambda: fs.get_file_info(path))


def exists(location: str) -> bool:
    return file_info(location).type != pafs.FileType.NotFound


def is_dir(location: str) -> bool:
    return file_info(location).type == pafs.FileType.Directory


def file_size(location: str) -> int:
    """Bytes in a file; FileNotFoundError when there is none."""
    info = file_info(location)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(location)
    return int(info.size)


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return checked("read", location, read)


def write_bytes(location: str, data: bytes) -> None:
    """Writes a whole file, making its folder first (object stores have none to make)."""
    fs, path = filesystem(location)

    def write() -> None:
        if not is_uri(location):  # object stores have no folders (pyarrow would add markers)
            fs.create_dir(os.path.dirname(path), recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)

    checked("write", location, write, writes=True)


def read_text(location: str) -> str:
    return read_bytes(location).decode()


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


@dataclass(frozen=True)
class Entry:
    location: str  # full location of the file or folder
    name: str  # its last path component
    is_dir: bool
    mtime_ns: int | None  # last modification, where the filesystem keeps one


def list_dir(location: str, recursive: bool = False) -> list[Entry]:
    """The entries under a folder, sorted by location ([] when it does not exist)."""
    fs, path = filesystem(location)
    prefix = uri_prefix(location)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
    infos = checked("list", location, lambda: fs.get_file_info(selector))
    return sorted(
        (
            Entry(prefix + i.path, i.base_name, i.type == pafs.FileType.Directory, i.mtime_ns)
            for i in infos
        ),
        key=lambda e: e.location,
    )


def modified_ns(location: str) -> int | None:
    """A file's modification time in ns (None when it does not exist)."""
    info = file_info(location)
    return None if info.type == pafs.FileType.NotFound else info.mtime_ns


def remove_tree(location: str) -> None:
    """Deletes a folder and everything under it (nothing happens when it does not exist)."""
    fs, path = filesystem(location)

    def remove() -> None:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)

    checked("delete", location, remove)


def remove_file(location: str) -> None:
    """Deletes one file (nothing happens when it does not exist)."""
    fs, path = filesystem(location)

    def remove() -> None:
        if fs.get_file_info(path).type == pafs.FileType.File:
            fs.delete_file(path)

    checked("delete", location, remove)


def copy_file(source: str, destination: str) -> None:
    """Copies one file between any two locations (local <-> URI, URI <-> URI)."""
    write_bytes(destination, read_bytes(source))


class LocalMirror:
    """A local folder standing in for `location`, for writers that only know local files.

    For a local `location` the mirror is the folder itself and `push` does nothing. For a URI it
    is a fresh temporary folder: `pull` fetches named files that already exist there (a resumed
    run's metrics), and `push` uploads every file written or changed since the last push.
    """

    def __init__(self, location: str) -> None:
        self.location = resolve(location)
        self.remote = is_uri(self.location)
        self.path = tempfile.mkdtemp(prefix="empssl-") if self.remote else self.location
        os.makedirs(self.path, exist_ok=True)
        self._pushed: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns)

    def pull(self, *names: str) -> None:
        for name in names if self.remote else ():
            source = join(self.location, name)
            if exists(source):
                target = os.path.join(self.path, name)
                with open(target, "wb") as f:
                    f.write(read_bytes(source))
                stat = os.stat(target)
                self._pushed[name] = (stat.st_size, stat.st_mtime_ns)

    def push(self) -> None:
        if not self.remote:
            return
        for folder, _, files in os.walk(self.path):
            for name in files:
                local = os.path.join(folder, name)
                rel = os.path.relpath(local, self.path)
                stat = os.stat(local)
                if self._pushed.get(rel) != (stat.st_size, stat.st_mtime_ns):
                    copy_file(local, join(self.location, *rel.split(os.sep)))
                    self._pushed[rel] = (stat.st_size, stat.st_mtime_ns)

    def close(self) -> None:
        """Pushes what is left and removes the temporary folder."""
        self.push()
        if self.remote:
            shutil.rmtree(self.path, ignore_errors=True)
