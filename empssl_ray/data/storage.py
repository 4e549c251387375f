"""Where runs, sweeps and datasets live: one code path for a local folder, s3:// and gs://.

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
from dataclasses import dataclass

import pyarrow.fs as pafs

from empssl_ray.errors import StorageError

__all__ = [
    "LocalMirror",
    "StorageError",
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
    "remove_tree",
    "write_bytes",
    "write_text",
]


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


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def file_size(location: str) -> int:
    """Bytes in a file; FileNotFoundError when there is none."""
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(location)
    return int(info.size)


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise StorageError(f"cannot read {location} ({e}): check the path and permissions") from e


def write_bytes(location: str, data: bytes) -> None:
    """Writes a whole file, making its folder first (object stores have none to make)."""
    fs, path = filesystem(location)
    try:
        if not is_uri(location):  # object stores have no folders (pyarrow would add markers)
            fs.create_dir(os.path.dirname(path), recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as e:
        raise StorageError(f"cannot write {location} ({e}): check the path and permissions") from e


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
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))
    return sorted(
        (
            Entry(prefix + i.path, i.base_name, i.type == pafs.FileType.Directory, i.mtime_ns)
            for i in infos
        ),
        key=lambda e: e.location,
    )


def modified_ns(location: str) -> int | None:
    """A file's modification time in ns (None when it does not exist)."""
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    return None if info.type == pafs.FileType.NotFound else info.mtime_ns


def remove_tree(location: str) -> None:
    """Deletes a folder and everything under it (nothing happens when it does not exist)."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


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
