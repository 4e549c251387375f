"""What every job entrypoint shares: joining or starting Ray, and one-line user errors."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

# Exceptions a user causes (config, data, divergence): one line, not a traceback from Ray.
_USER_ERRORS = ("DatasetError", "NonFiniteLossError", "ConfigError", "FileNotFoundError",
                "ValueError")


def init_ray(address: str | None, quiet: bool = True) -> None:
    """Joins `address`, or the job's cluster (RAY_ADDRESS, set by `ray job submit`), or else
    starts an embedded local Ray. A bare ray.init() would instead try to join whatever cluster
    /tmp/ray last recorded, even a dead one."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # The dashboard stays on even locally: Ray Train V2 watches its controller through the
    # state API that the dashboard serves.
    kwargs = {"logging_level": "WARNING"} if quiet else {}
    ray.init(address=address, **kwargs)  # type: ignore[arg-type]
    if quiet:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = sys.stderr.isatty()  # bars on a terminal, not in job logs


def user_error_line(exc: BaseException) -> str | None:
    """The one-line message of a user-caused error, also when Ray wrapped it in its own errors."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in _USER_ERRORS:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _line_in_text(text: str) -> str | None:
    """Ray ships remote errors as text: find our error's line inside it."""
    names = "|".join(_USER_ERRORS[:3])
    found = re.findall(rf"((?:{names}): .+)", text)
    return found[-1].strip() if found else None


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns user-caused errors into one line on stderr and exit code 2."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - deliberately broad: we re-raise what isn't ours
        line = user_error_line(exc) or _line_in_text(str(exc))
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
